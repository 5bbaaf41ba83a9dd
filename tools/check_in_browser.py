"""Check the notebooks' live widgets in a real browser: JupyterLab + headless Chromium, via Playwright.

    pip install playwright            # the Python package; no browser download needed
    python tools/check_in_browser.py --chromium /usr/bin/chromium --screenshots /tmp/browser [--check slider]

Starts a JupyterLab server on a free local port with a scratch notebook, runs it in the browser as a
reader would (click, Shift+Enter) and checks what appears. Screenshots of each stage are saved.

- ``slider``: samples a model (``--checkpoint``, or a small untrained UNet) with
  ``sample_trajectory`` and shows ``denoising_slider(trajectory)``; waits for the widget,
  moves the slider with the keyboard, checks that the image and the "t = …" label follow, presses
  Play and checks the slider advances on its own.
- ``live-view``: trains a tiny model on synthetic flowers with notebook 03's ``LiveTrainingView``;
  checks that while the cell runs its output is one picture that changes in place, and that it is
  still one picture when the cell has finished.

Exit status 0 when every check passes. Not part of the test suite: it needs Chromium and a real browser.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from browser_notebook import UNTRAINED, Checks, notebook_in_browser

LIVE_VIEW = [
    "import torch\n"
    "from diffusion_utils import LiveTrainingView, TrainConfig, load_dataset, train\n"
    "torch.set_num_threads(1)\n"
    "config = TrainConfig(data='synthetic', img_size=16, max_images=256, n_steps=100, base_channels=8,\n"
    "                     channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), time_emb_dim=16,\n"
    "                     batch_size=16, num_epochs=8, lr=1e-3, lr_warmup_steps=2, ema_decay=0.9, device='cpu',\n"
    "                     sample_every=8, sample_grid_n=4, sampler='ddim', sample_steps=5)\n"
    "data = load_dataset('synthetic', 16, max_images=256)",
    "view = LiveTrainingView(every=16, min_seconds=0.5)\n"
    "result = train(config, 'live_out', dataset=data, progress=False, on_start=view.start, on_step=view.step)",
]


def notebook_cells(checkpoint: str | None) -> list[str]:
    """A sampling cell (a trained checkpoint's EMA model, or a small untrained UNet) and the slider."""
    load = f"model, schedule, _ = load_model({checkpoint!r})\n" if checkpoint else UNTRAINED
    return [
        "import torch\n"
        "from diffusion_utils import NoiseSchedule, UNet, denoising_slider, load_model, sample_trajectory\n"
        "torch.manual_seed(0)\n" + load +
        "trajectory = sample_trajectory(model, schedule, 4, sampler='ddim', steps=40,\n"
        "                               generator=torch.Generator().manual_seed(0), progress=False)\n"
        "print('frames:', len(trajectory))",
        "slider = denoising_slider(trajectory, max_images=4, nrow=2, scale=4, interval_ms=40)\nslider",
    ]


def visible_cells(page):
    """The cells of the notebook on screen."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell")


def check_slider(page, shots: Path, check) -> None:
    page.wait_for_selector(".widget-slider, .jupyter-widgets.widget-slider", timeout=180_000)
    img = page.locator(".jupyter-widgets img, .widget-image").first
    img.wait_for(timeout=60_000)
    label = page.locator(".widget-label").filter(has_text="t = ").first
    page.screenshot(path=str(shots / "slider_1_rendered.png"))
    first_src, first_label = img.get_attribute("src"), label.inner_text()
    check(bool(first_src) and "pure noise" in first_label, f"slider rendered at frame 0: {first_label!r}")

    handle = page.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").first
    handle.click()
    for _ in range(20):
        page.keyboard.press("ArrowRight")
    time.sleep(0.5)
    page.screenshot(path=str(shots / "slider_2_moved.png"))
    moved_src, moved_label = img.get_attribute("src"), label.inner_text()
    check(moved_src != first_src, "moving the slider changes the image")
    check(moved_label != first_label and moved_label.startswith("t = "), f"label follows: {moved_label!r}")

    page.locator(".widget-play button, .jupyter-widgets button").first.click()  # Play
    time.sleep(3)
    page.screenshot(path=str(shots / "slider_3_played.png"))
    played_label = label.inner_text()
    check(played_label != moved_label, f"Play advances the slider: {played_label!r}")


def check_live_view(page, shots: Path, check) -> None:
    images = visible_cells(page).nth(1).locator(".jp-OutputArea-output img")
    images.first.wait_for(timeout=180_000)
    time.sleep(1)
    page.screenshot(path=str(shots / "live_1_started.png"))
    first_src, count_running = images.first.get_attribute("src"), images.count()
    time.sleep(6)
    page.screenshot(path=str(shots / "live_2_running.png"))
    later_src = images.first.get_attribute("src")
    check(count_running == 1 and images.count() == 1, f"one picture while training runs (saw {count_running}, "
                                                       f"then {images.count()})")
    check(later_src != first_src, "the picture is redrawn in place as training goes on")
    prompt = visible_cells(page).nth(1).locator(".jp-InputPrompt")
    deadline = time.time() + 300
    while "*" in prompt.inner_text() and time.time() < deadline:  # "[*]:" while the cell runs
        time.sleep(1)
    time.sleep(1)
    page.screenshot(path=str(shots / "live_3_finished.png"))
    check("*" not in prompt.inner_text(), f"the training cell finished: prompt {prompt.inner_text()!r}")
    check(images.count() == 1, f"still one picture at the end (saw {images.count()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", default="browser_screenshots")
    parser.add_argument("--check", choices=("slider", "live-view", "all"), default="all")
    parser.add_argument("--checkpoint", default=None,
                        help="slider: sample a trained model (e.g. notebooks/outputs/diffusion_unet_pixels.pth) "
                             "instead of an untrained one")
    args = parser.parse_args()
    shots = Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    check = Checks()
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    checks = {"slider": (notebook_cells(checkpoint), check_slider), "live-view": (LIVE_VIEW, check_live_view)}
    for name, (cells, run_check) in checks.items():
        if args.check in (name, "all"):
            with notebook_in_browser(cells, args.chromium, f"{name}_check.ipynb") as page:
                run_check(page, shots, check)
    print(f"screenshots in {shots}/")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
