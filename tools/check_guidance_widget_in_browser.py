"""Check the guidance widget in a real browser: JupyterLab + headless Chromium, driven by Playwright.

    pip install playwright            # the Python package; no browser download needed
    python tools/check_guidance_widget_in_browser.py --chromium /usr/bin/chromium --screenshots /tmp/guidance

Serves a scratch notebook that loads a class-conditional model (``--pretrained``, default the shipped
``flowers32``; ``--untrained`` for a small random one with three classes) and shows
``guidance_widget(...)``. Then, in the browser: runs the notebook, waits for the widget's first
picture, moves the guidance slider with the keyboard and checks that the picture and the
"…, w = …" label change; picks another species in the dropdown and checks the picture changes again.
Screenshots of each stage are saved. Exit status 0 when every check passes. Not part of the test
suite: it needs Chromium and some seconds of a real browser. Shares its machinery with
``check_in_browser.py`` (``browser_notebook.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from browser_notebook import Checks, notebook_in_browser

UNTRAINED = (
    "torch.manual_seed(0)\n"
    "model = UNet(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), img_size=32,\n"
    "             num_classes=3, class_names=('sunflower', 'rose', 'water lily')).eval()\n"
    "torch.nn.init.normal_(model.class_embedding.weight, std=1.0)\n"
    "schedule = NoiseSchedule.linear(1000)\n"
    "species = list(model.class_names)\n"
)


def notebook_cells(pretrained: str | None) -> list[str]:
    load = (f"model, schedule, _ = load_pretrained({pretrained!r})\n"
            "species = [s for s in ('sunflower', 'rose', 'water lily') if s in model.class_names]\n"
            if pretrained else UNTRAINED)
    return [
        "import torch\nfrom diffusion_utils import NoiseSchedule, UNet, guidance_widget, load_pretrained\n" + load +
        "print('classes:', model.num_classes)",
        "widget = guidance_widget(model, schedule, classes=species, n=4, seed=0, value=1.0, scales=(0, 8, 0.5),\n"
        "                         steps=10, scale=4, nrow=4)\nwidget",
    ]


def wait_for_label(label, wanted, timeout: float = 120) -> str:
    """The label's text once ``wanted(text)`` holds (the kernel samples each new setting first)."""
    deadline = time.time() + timeout
    text = label.inner_text()
    while not wanted(text) and time.time() < deadline:
        time.sleep(0.25)
        text = label.inner_text()
    time.sleep(0.5)  # the image arrives with the label; let the browser paint it
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", default="guidance_screenshots")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pretrained", default="flowers32", help="a class-conditional pretrained name or .pt file")
    which.add_argument("--untrained", action="store_true", help="a small random 3-class UNet instead")
    args = parser.parse_args()
    shots = Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    check = Checks()
    pretrained = None if args.untrained else (
        str(Path(args.pretrained).resolve()) if args.pretrained.endswith(".pt") else args.pretrained)
    with notebook_in_browser(notebook_cells(pretrained), args.chromium, "guidance_check.ipynb") as page:
        page.wait_for_selector(".widget-slider", timeout=240_000)
        img = page.locator(".widget-image, .jupyter-widgets img").first
        img.wait_for(timeout=120_000)
        label = page.locator(".widget-label").filter(has_text="w = ").first
        label.wait_for(timeout=120_000)
        page.screenshot(path=str(shots / "1_rendered.png"))
        first_src, first_label = img.get_attribute("src"), label.inner_text()
        check(bool(first_src) and "w = 1" in first_label, f"widget rendered: {first_label!r}")

        page.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").first.click()
        for _ in range(6):  # 6 × 0.5: w = 1 → 4 (each key press is one update, sampled in turn)
            page.keyboard.press("ArrowRight")
        moved_label = wait_for_label(label, lambda text: "w = 4 " in text)
        moved_src = img.get_attribute("src")
        page.screenshot(path=str(shots / "2_slider_moved.png"))
        check(moved_src != first_src, "moving the guidance slider changes the image")
        check("w = 4 " in moved_label, f"label follows the slider: {moved_label!r}")

        select = page.locator(".widget-dropdown select").first
        options = select.locator("option").all_inner_texts()
        select.select_option(label=options[1])
        species_label = wait_for_label(label, lambda text: text.startswith(options[1]))
        species_src = img.get_attribute("src")
        page.screenshot(path=str(shots / "3_species_changed.png"))
        check(species_src not in (moved_src, first_src), "picking another species changes the image")
        check(species_label.startswith(options[1]), f"label names the species: {species_label!r}")
    print(f"screenshots in {shots}/")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
