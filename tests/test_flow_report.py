"""benchmarks/flow_report.py's answer: the sentence notebook 08 and the README quote, from the numbers."""

from __future__ import annotations

import sys

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from flow_report import MISSING, answer, calls_needed, table  # noqa: E402

RECIPES = {"diffusion": {"label": "diffusion, v + min-SNR", "samplers": ["dpmpp"],
                         "sampler_names": {"dpmpp": "DPM-Solver++(2M)"}},
           "flow_uniform": {"label": "flow, uniform t", "samplers": ["euler"], "sampler_names": {"euler": "Euler"}},
           "flow_logit_normal": {"label": "flow, logit-normal t", "samplers": ["euler"],
                                 "sampler_names": {"euler": "Euler"}}}


def score(kid, std=0.004):
    return {"kid": kid, "kid_std": std}


def report(diffusion, uniform, logit, second=None):
    results = {"20480": {"diffusion": {"dpmpp": diffusion}, "flow_uniform": {"euler": uniform},
                         "flow_logit_normal": {"euler": logit}}}
    missing = {c: MISSING for c in ("5", "20")}
    results["102400"] = second or {"diffusion": {"dpmpp": missing}, "flow_uniform": {"euler": missing},
                                   "flow_logit_normal": {"euler": missing}}
    return {"recipes": RECIPES, "budgets": [20480, 102400], "calls": [5, 20], "results": results,
            "floor": score(0.0001, 0.0002)}


def test_the_answer_names_the_better_objective_and_the_calls_each_needs():
    text = answer(report({"5": score(0.20), "20": score(0.11)}, {"5": score(0.15), "20": score(0.12)},
                         {"5": score(0.083), "20": score(0.08)}))
    assert text.startswith("After 20,480 training images, flow, logit-normal t (best: Euler, 20 calls) scores "
                           "KID 0.080 ± 0.004, better than diffusion's 0.110 ± 0.004 (DPM-Solver++(2M), 20 calls).")
    assert "diffusion, v + min-SNR: 20; flow, uniform t: 20; flow, logit-normal t: 5." in text
    assert text.endswith("Not measured yet: the 102,400-image budget.")


def test_scores_within_twice_their_combined_std_are_level():
    text = answer(report({"5": score(0.12), "20": score(0.10)}, {"5": score(0.2), "20": score(0.2)},
                         {"5": score(0.2), "20": score(0.105)}))
    assert "level with diffusion's 0.100" in text
    text = answer(report({"5": score(0.12), "20": score(0.10)}, {"5": score(0.2), "20": score(0.2)},
                         {"5": score(0.2), "20": score(0.125)}))
    assert "worse than diffusion's 0.100" in text


def test_calls_needed_is_the_fewest_within_one_std_of_the_best():
    assert calls_needed({"euler": {"5": score(0.104), "10": score(0.2), "20": score(0.10)}}) == 5
    assert calls_needed({"euler": {"5": score(0.2), "10": score(0.103), "20": score(0.10, 0.002)}}) == 20
    assert calls_needed({"euler": {"5": MISSING}}) is None


def test_the_table_shows_every_setting_and_a_dash_where_missing():
    text = table(report({"5": score(0.2), "20": score(0.11)}, {"5": score(0.15), "20": MISSING},
                        {"5": score(0.09), "20": score(0.08)}))
    assert "flow, uniform t, Euler" in text and "—" in text and "0.110 ± 0.004" in text
    assert text.splitlines()[-1].startswith("real photos against real photos (the floor): KID 0.00010")
