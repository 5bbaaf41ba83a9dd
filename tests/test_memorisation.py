"""Memorisation (diffusion_utils.evaluation.memorisation, .neighbours): nearest training neighbours and the test.

The search is checked against a brute-force numpy computation and against itself in one chunk;
the leave-one-out search against the same brute force with each image's own distance masked.
The test is checked on the two cases it must tell apart, built from synthetic flowers at 16 px:
"samples" that are copies of training images plus a little noise (a model that memorised), and
"samples" that are fresh flowers from the same generator, disjoint from the training images (a
model that generalises) — against held-out images and against the leave-one-out yardstick (the
training images' distances to each other, for a model that trained on every image). All offline: pixels, or the small RandomConvFeatures — no Inception.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torchvision.transforms.functional import gaussian_blur

from conftest import REPO_ROOT
from diffusion_utils import TrainConfig
from diffusion_utils.pretrained.cards import render_card
from diffusion_utils.plumbing.errors import ConfigError
from diffusion_utils.evaluation.features import RandomConvFeatures, extract_features
from diffusion_utils.evaluation.memorisation import (COPY_RATIO, MemorisationResult, Neighbours, leave_one_out_neighbours,
                                          memorisation_test, nearest_neighbours, plot_memorisation, plot_nearest_neighbours)
from diffusion_utils.plumbing.pixels import to_model_range
from diffusion_utils.data.synthetic import make_synthetic_flowers

N_TRAIN, N_HELD_OUT, N_SAMPLES = 200, 100, 100


@pytest.fixture(scope="module")
def flowers():
    """Synthetic flowers in [-1, 1], split into disjoint training, held-out and "fresh" sets."""
    images = to_model_range(make_synthetic_flowers(N_TRAIN + N_HELD_OUT + N_SAMPLES, img_size=16, seed=0))
    return images[:N_TRAIN], images[N_TRAIN:N_TRAIN + N_HELD_OUT], images[N_TRAIN + N_HELD_OUT:]


@pytest.fixture(scope="module")
def copies(flowers):
    """A memorising model's "samples": training images plus a little noise, and which ones they copy."""
    train = flowers[0]
    gen = torch.Generator().manual_seed(1)
    source = torch.randperm(N_TRAIN, generator=gen)[:N_SAMPLES]
    noisy = train[source] + 0.05 * torch.randn(train[source].shape, generator=gen)
    return noisy.clamp(-1, 1), source


def random_images(n, seed, size=8):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# nearest_neighbours
# ---------------------------------------------------------------------------------------------
def test_an_exact_copy_is_found_at_distance_zero():
    references = random_images(50, seed=0)
    picks = [7, 3, 42, 0, 49]
    indices, distances = nearest_neighbours(references[picks], references, k=2)
    assert indices[:, 0].tolist() == picks
    assert distances[:, 0].tolist() == [0.0] * len(picks)  # exactly: the winners are re-measured in float64
    assert (distances[:, 1] > 1).all()  # the second nearest is a different random image


def test_matches_brute_force_numpy():
    queries, references = random_images(13, seed=1), random_images(37, seed=2)
    result = nearest_neighbours(queries, references, k=4)
    assert isinstance(result, Neighbours)
    assert result.indices.shape == result.distances.shape == (13, 4)
    assert result.indices.dtype == torch.int64 and result.distances.dtype == torch.float64

    q, r = queries.double().flatten(1).numpy(), references.double().flatten(1).numpy()
    brute = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))  # (13, 37)
    expected = np.argsort(brute, axis=1)[:, :4]
    np.testing.assert_array_equal(result.indices.numpy(), expected)
    np.testing.assert_allclose(result.distances.numpy(), np.take_along_axis(brute, expected, 1), rtol=1e-12)


def test_chunking_does_not_change_the_result():
    queries, references = random_images(23, seed=3), random_images(41, seed=4)
    whole = nearest_neighbours(queries, references, k=3, batch_size=10_000)
    for batch_size in (1, 5, 16):
        chunked = nearest_neighbours(queries, references, k=3, batch_size=batch_size)
        assert torch.equal(chunked.indices, whole.indices)
        assert torch.equal(chunked.distances, whole.distances)


def test_uint8_images_are_read_in_the_model_range():
    references = random_images(20, seed=5)
    queries = make_synthetic_flowers(4, img_size=8, seed=1)
    as_uint8 = nearest_neighbours(queries, references, k=2)
    as_float = nearest_neighbours(to_model_range(queries), references, k=2)
    assert torch.equal(as_uint8.indices, as_float.indices)
    torch.testing.assert_close(as_uint8.distances, as_float.distances)


def test_feature_space_is_the_search_over_extracted_features(flowers):
    train, held_out, _ = flowers
    extractor = RandomConvFeatures()
    result = nearest_neighbours(held_out[:10], train, k=3, space="features", extractor=extractor, batch_size=64)
    q, r = extract_features(held_out[:10], extractor), extract_features(train, extractor)
    precomputed = nearest_neighbours(q, r, k=3, space="features")  # features given directly
    assert torch.equal(result.indices, precomputed.indices)
    brute = torch.cdist(q, r)  # float64 throughout
    torch.testing.assert_close(result.distances, brute.sort(dim=1).values[:, :3])
    assert torch.equal(result.indices, brute.argsort(dim=1)[:, :3])


def test_leave_one_out_is_the_search_without_each_images_own_row():
    images = random_images(30, seed=8)
    images[17] = images[4]  # an exact duplicate: each finds the other, at 0.0
    found = leave_one_out_neighbours(images, k=3, batch_size=7)
    assert found.indices.shape == found.distances.shape == (30, 3)
    assert not (found.indices == torch.arange(30)[:, None]).any()  # never itself
    x = images.double().flatten(1).numpy()
    brute = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(brute, np.inf)  # leave each image's own distance out
    np.testing.assert_allclose(found.distances.numpy(), np.sort(brute, axis=1)[:, :3], rtol=1e-12, atol=1e-12)
    assert (found.indices[4, 0], found.indices[17, 0]) == (17, 4)
    assert found.distances[4, 0] == found.distances[17, 0] == 0.0
    # the indices point at those distances (the duplicates tie for others: either may come first)
    np.testing.assert_allclose(np.take_along_axis(brute, found.indices.numpy(), 1), found.distances.numpy(), rtol=1e-12)


def test_leave_one_out_in_feature_space_embeds_the_set_once(flowers):
    train = flowers[0][:40]
    extractor = RandomConvFeatures()
    from_images = leave_one_out_neighbours(train, k=2, space="features", extractor=extractor)
    from_features = leave_one_out_neighbours(extract_features(train, extractor), k=2, space="features")
    assert torch.equal(from_images.indices, from_features.indices)
    torch.testing.assert_close(from_images.distances, from_features.distances)


# ---------------------------------------------------------------------------------------------
# memorisation_test
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["pixels", "features"])
def test_noisy_copies_of_training_images_are_called_copies(flowers, copies, space):
    train, held_out, _ = flowers
    samples, source = copies
    extractor = RandomConvFeatures() if space == "features" else None
    result = memorisation_test(samples, train, held_out, space=space, extractor=extractor)
    assert isinstance(result, MemorisationResult)
    assert result.sample_distances.shape == (N_SAMPLES,) and result.held_out_distances.shape == (N_HELD_OUT,)
    assert result.median_ratio < 0.5
    assert result.near_copy_rate > 0.9
    assert result.p_value < 1e-10 and result.near_copy_p_value < 1e-10
    assert np.median(result.sample_relative) < 0.5 < np.median(result.held_out_relative)  # each on one image
    assert result.finding == "copies"
    assert "copies" in result.verdict and "much closer" in result.verdict
    assert result.sample_median == pytest.approx(np.median(result.sample_distances))
    assert result.median_ratio == pytest.approx(result.sample_median / result.held_out_median)
    if space == "pixels":  # each noisy copy's nearest training image is the one it was copied from
        np.testing.assert_array_equal(result.sample_neighbours, source.numpy())
    assert result.verdict in str(result)


@pytest.mark.parametrize("space", ["pixels", "features"])
def test_fresh_images_from_the_same_distribution_are_not_copies(flowers, space):
    train, held_out, fresh = flowers
    extractor = RandomConvFeatures() if space == "features" else None
    result = memorisation_test(fresh, train, held_out, space=space, extractor=extractor)
    assert 0.85 < result.median_ratio < 1.15
    assert result.near_copy_rate < 0.08
    assert result.p_value > 0.05
    assert result.finding == "none"
    assert result.verdict.startswith("samples sit no closer") and "no sign of copying" in result.verdict
    assert result.extractor == ("RandomConvFeatures" if space == "features" else None)


def test_blurred_fresh_images_sit_closer_but_are_not_called_copies(flowers):
    """Blur pulls an image towards every training image at once: closer in distance, but no closer
    to its nearest training image than to its second nearest — smoothness, not copying."""
    train, held_out, fresh = flowers
    result = memorisation_test(gaussian_blur(fresh, 5, 1.5), train, held_out)
    assert result.median_ratio < 0.9 and result.p_value < 1e-6  # closer in distance...
    assert np.median(result.sample_relative) == pytest.approx(np.median(result.held_out_relative), abs=0.03)
    assert result.relative_p_value > 0.05  # ...but not to any one training image
    assert result.finding == "smooth"
    assert "smoother" in result.verdict and "not copies" in result.verdict


def test_a_few_copies_among_fresh_samples_raise_the_near_copy_rate(flowers, copies):
    """A quarter copies barely moves the median but is plain in the near-copy rate."""
    train, held_out, fresh = flowers
    samples = torch.cat([fresh[:75], copies[0][:25]])
    result = memorisation_test(samples, train, held_out)
    assert result.median_ratio > COPY_RATIO  # the median alone would not call it copying
    assert result.near_copy_rate >= 0.25 and result.relative_near_copy_rate >= 0.25
    assert result.finding == "copies"
    assert "near-copies" in result.verdict and "copies some" in result.verdict


@pytest.mark.parametrize("space", ["pixels", "features"])
def test_leave_one_out_still_calls_noisy_copies_copies(flowers, copies, space):
    """No held-out images (a model trained on every image): the yardstick is each training image's
    distance to its nearest other one — and a model that copies is still caught."""
    train, _, _ = flowers
    extractor = RandomConvFeatures() if space == "features" else None
    result = memorisation_test(copies[0], train, space=space, extractor=extractor)
    assert result.yardstick == "leave-one-out"
    assert result.held_out_distances.shape == (N_TRAIN,)  # every training image, against the others
    assert result.median_ratio < 0.5 and result.near_copy_rate > 0.9 and result.p_value < 1e-10
    assert result.finding == "copies"
    assert "much closer" in result.verdict and "leave-one-out yardstick" in result.verdict
    assert "the training images sit to one another" in result.verdict
    assert "each against the others" in str(result)


@pytest.mark.parametrize("space", ["pixels", "features"])
def test_leave_one_out_passes_fresh_images_from_the_same_distribution(flowers, space):
    """Two disjoint real sets: the fresh images sit no closer to the training set than its own
    images sit to one another, and the yardstick agrees with a held-out set's."""
    train, held_out, fresh = flowers
    extractor = RandomConvFeatures() if space == "features" else None
    result = memorisation_test(fresh, train, space=space, extractor=extractor)
    assert 0.85 < result.median_ratio < 1.15 and result.p_value > 0.05 and result.near_copy_rate < 0.08
    assert result.finding == "none"
    assert result.verdict.startswith("samples sit no closer") and "leave-one-out yardstick" in result.verdict
    held = memorisation_test(fresh, train, held_out, space=space, extractor=extractor)
    assert held.yardstick == "held-out" and "held-out yardstick" in held.verdict
    assert result.held_out_median == pytest.approx(held.held_out_median, rel=0.1)


def test_leave_one_out_refuses_a_training_set_of_duplicates(flowers):
    train, _, fresh = flowers
    with pytest.raises(ConfigError, match="exact duplicate"):
        memorisation_test(fresh, torch.cat([train[:20], train[:20]]))
    with pytest.raises(ConfigError, match="at least 3 training images"):
        memorisation_test(fresh, train[:2])


def test_held_out_images_that_are_training_images_are_refused(flowers):
    train, held_out, fresh = flowers
    with pytest.raises(ConfigError, match="held-out images"):
        memorisation_test(fresh, train, train[:50])
    with pytest.warns(UserWarning, match="identical to a training image"):
        memorisation_test(fresh, train, torch.cat([train[:3], held_out]))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def test_plot_memorisation_draws_both_distributions(flowers, copies, tmp_path):
    result = memorisation_test(copies[0], flowers[0], flowers[1])
    path = tmp_path / "figures" / "memorisation.png"
    fig = plot_memorisation(result, path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert "distance" in ax.get_xlabel() and ax.get_ylabel()
    assert "copies" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("samples" in t for t in labels) and any("held-out" in t for t in labels)

    loo = plot_memorisation(memorisation_test(copies[0], flowers[0]))
    labels = [t.get_text() for t in loo.axes[0].get_legend().get_texts()]
    assert any("leave-one-out" in t for t in labels) and "leave-one-out" in loo.axes[0].get_title()

    outer = Figure()
    own_ax = outer.add_subplot()
    assert plot_memorisation(result, ax=own_ax) is outer and own_ax.get_title()


def test_plot_nearest_neighbours(flowers, copies, tmp_path):
    train = flowers[0]
    samples = copies[0][:5]
    indices, distances = nearest_neighbours(samples, train, k=2)
    path = tmp_path / "neighbours.png"
    fig = plot_nearest_neighbours(samples, train, indices, path, n=4, distances=distances)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 4 * 3  # 4 samples, each over its 2 nearest training images
    assert "nearest training images" in fig.get_suptitle()
    column = fig.axes[:3]  # sample 0, then its nearest and second nearest training images
    assert column[0].get_title() == "sample 0"
    assert column[1].get_xlabel().startswith(f"train #{int(indices[0, 0])}\nd = ")
    assert column[2].get_xlabel().startswith(f"train #{int(indices[0, 1])}\nd = ")
    # one neighbour per sample, as MemorisationResult.sample_neighbours gives them; n above N is capped
    fig = plot_nearest_neighbours(samples, train, indices[:, 0].numpy(), n=8)
    assert len(fig.axes) == 5 * 2


# ---------------------------------------------------------------------------------------------
# Bad inputs: one-line ConfigErrors
# ---------------------------------------------------------------------------------------------
BAD_SEARCHES = {
    "k zero": (lambda q, r: nearest_neighbours(q, r, k=0), "k must be"),
    "k above M": (lambda q, r: nearest_neighbours(q, r, k=len(r) + 1), "k must be"),
    "k not an int": (lambda q, r: nearest_neighbours(q, r, k=1.5), "k must be"),
    "shapes differ": (lambda q, r: nearest_neighbours(q[:, :, :4], r), "differ in shape"),
    "channels differ": (lambda q, r: nearest_neighbours(q[:, :1], r), "differ in shape"),
    "not images": (lambda q, r: nearest_neighbours(q.flatten(1), r), r"\(N, C, H, W\)"),
    "not a tensor": (lambda q, r: nearest_neighbours(q.numpy(), r), "torch.Tensor"),
    "empty": (lambda q, r: nearest_neighbours(q[:0], r), "empty"),
    "out of range": (lambda q, r: nearest_neighbours(q * 3, r), r"\[-1, 1\]"),
    "NaN": (lambda q, r: nearest_neighbours(q * float("nan"), r), "NaN"),
    "leave-one-out k = M": (lambda q, r: leave_one_out_neighbours(r, k=len(r)), "the other images"),
    "bad space": (lambda q, r: nearest_neighbours(q, r, space="latent"), "space must be"),
    "extractor in pixel space": (lambda q, r: nearest_neighbours(q, r, extractor=RandomConvFeatures()), "only used"),
    "bad batch size": (lambda q, r: nearest_neighbours(q, r, batch_size=0), "batch_size"),
    "feature dims differ": (lambda q, r: nearest_neighbours(torch.randn(4, 5), torch.randn(6, 7), space="features"),
                            "dimension"),
    "too few samples": (lambda q, r: memorisation_test(q[:1], r, q), "at least 2 samples"),
    "too few training images": (lambda q, r: memorisation_test(q, r[:1], q), "at least 2 training"),
    "too few held-out": (lambda q, r: memorisation_test(q, r, q[:1]), "at least 2 held-out"),
    "plot: indices of the wrong length": (lambda q, r: plot_nearest_neighbours(q, r, torch.zeros(2, dtype=torch.long)),
                                          "one row per sample"),
    "plot: indices out of range": (lambda q, r: plot_nearest_neighbours(q, r, torch.full((len(q),), len(r))),
                                   "indices must be in"),
}


@pytest.mark.parametrize("case", BAD_SEARCHES)
def test_bad_inputs_give_one_line_config_errors(case):
    call, message = BAD_SEARCHES[case]
    queries, references = random_images(6, seed=6), random_images(9, seed=7)
    with pytest.raises(ConfigError, match=message) as err:
        call(queries, references)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Model cards: the "Is it copying?" section
# ---------------------------------------------------------------------------------------------
def measured_row(model: str, finding: str, verdict: str) -> dict:
    """One row as benchmarks/bench_memorisation.py writes it into docs/memorisation.json."""
    return {"model": model, "n_samples": 100, "sampler": "dpmpp, 20 steps", "guidance": "none (unconditional)",
            "img_size": 16, "space": "pixels", "extractor": None, "yardstick": "leave-one-out", "n_yardstick": 400,
            "sample_median": 5.0, "yardstick_median": 10.0, "median_ratio": 0.5, "near_copy_rate": 0.9,
            "finding": finding, "verdict": verdict, "command": "python benchmarks/bench_memorisation.py",
            "figure": "memorisation_tiny.png"}


def test_a_card_says_whether_its_model_copies():
    """A card shows its own model's rows (a cascade's under its last stage), the verdict, the command and the
    figures; with several findings, each row's verdict as memorisation_test worded it."""
    copying = {"cpu": "some CPU", "threads": 1, "figures": "../docs",
               "results": {"tiny": measured_row("tiny", "copies", "samples sit much closer …: the model copies"),
                           "other": measured_row("other", "none", "no sign of copying")}}
    text = render_card("tiny", TrainConfig(img_size=16), {"memorisation": copying})
    section = text.split("## Is it copying?")[1].split("## Limitations")[0]
    assert "| 100 from tiny, dpmpp, 20 steps | none (unconditional) | pixels at 16 px | 5.00 | 10.00 (400 photos) | " \
           "0.50 | 90.0 % |" in section
    assert "- none (unconditional): samples sit much closer …: the model copies" in section
    assert "no sign of copying" not in section  # the other model's row is not this card's
    assert "`python benchmarks/bench_memorisation.py` (some CPU, 1 thread)" in section
    assert "](../docs/memorisation_tiny.png)" in section
    assert "Is it copying?" not in render_card("tiny", TrainConfig(img_size=16), {})  # not measured: no section


def test_the_shipped_cards_say_what_docs_memorisation_json_measured():
    """Every shipped card is what tools/write_cards.py makes from its weights file's stored facts and
    docs/memorisation.json, so flowers32's and sr64's "Is it copying?" sections cannot drift from the measurement."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from write_cards import CARDS, COPYING_MEASURED, WEIGHTS, memorisation, render

    measured = memorisation()
    assert measured is not None, "docs/memorisation.json is missing"
    for name in CARDS:
        text = (WEIGHTS / f"{name}.md").read_text(encoding="utf-8")
        assert text == render(name, measured), f"{name}.md is stale: run python tools/write_cards.py"
    assert set(COPYING_MEASURED) <= set(CARDS)
    for name in COPYING_MEASURED:
        text = (WEIGHTS / f"{name}.md").read_text(encoding="utf-8")
        assert "## Is it copying?" in text and "Verdict: " in text and "bench_memorisation.py" in text
