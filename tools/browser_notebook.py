"""JupyterLab + headless Chromium machinery for the browser checks (notebook_in_browser, Checks), and a slider check.

    pip install playwright            # the Python package; no browser download needed
    python tools/check_slider_in_browser.py --chromium /usr/bin/chromium --screenshots /tmp/slider

Starts a JupyterLab server on a free local port with a scratch notebook that samples a model
(``--checkpoint``, or a small untrained UNet) with ``return_trajectory=True`` and shows
``denoising_slider(trajectory)``.
Then, in the browser: runs the notebook, waits for the widget to render, moves the slider with the
keyboard, checks that the image and the "t = …" label change with it, presses Play and checks the
slider advances on its own. Screenshots of each stage are saved. Exit status 0 when every check
passes. Not part of the test suite: it needs Chromium and a few seconds of a real browser.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

UNTRAINED = (
    "model = UNet(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), img_size=32)\n"
    "schedule = NoiseSchedule.linear(1000)\n"
)


def notebook_cells(checkpoint: str | None) -> list[str]:
    """A sampling cell (a trained checkpoint's EMA model, or a small untrained UNet) and the slider."""
    load = f"model, schedule, _ = load_model({checkpoint!r})\n" if checkpoint else UNTRAINED
    return [
        "import torch\n"
        "from diffusion_utils import NoiseSchedule, UNet, denoising_slider, load_model, sample\n"
        "torch.manual_seed(0)\n" + load +
        "_, trajectory = sample(model, schedule, 4, sampler='ddim', steps=40, generator=torch.Generator().manual_seed(0),\n"
        "                       return_trajectory=True, progress=False)\n"
        "print('frames:', len(trajectory))",
        "slider = denoising_slider(trajectory, max_images=4, nrow=2, scale=4, interval_ms=40)\nslider",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(folder: Path, cells: list[str], name: str = "slider_check.ipynb") -> Path:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
             for src in cells]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = folder / name
    path.write_text(json.dumps(nb))
    return path


def wait_for_server(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"JupyterLab did not start at {url} within {timeout:.0f} s")


@contextmanager
def notebook_in_browser(cells: list[str], chromium: str, name: str = "check.ipynb"):
    """Serve a scratch notebook of ``cells`` with JupyterLab on a free local port, open it in headless
    Chromium and run every cell as a reader would (Shift+Enter each); yields the Playwright page."""
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="widget_check_"))
    write_notebook(work, cells, name)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.token=",
         "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={work}",
         "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "JUPYTER_CONFIG_DIR": str(work / "cfg")})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(f"{base}/lab")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/lab/tree/{name}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            time.sleep(5)  # let the kernel start
            page.locator(".jp-Cell").first.click()
            page.keyboard.press("Escape")
            for _ in cells:
                page.keyboard.press("Shift+Enter")
            yield page
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


class Checks:
    """PASS/FAIL lines; ``failures`` lists what failed."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok: bool, what: str) -> None:
        print(("PASS  " if ok else "FAIL  ") + what)
        if not ok:
            self.failures.append(what)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", default="slider_screenshots")
    parser.add_argument("--checkpoint", default=None,
                        help="sample a trained model (e.g. notebooks/outputs/diffusion_unet_pixels.pth) "
                             "instead of an untrained one")
    args = parser.parse_args()
    shots = Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    check = Checks()
    with notebook_in_browser(notebook_cells(str(Path(args.checkpoint).resolve()) if args.checkpoint else None),
                             args.chromium, "slider_check.ipynb") as page:
        page.wait_for_selector(".widget-slider, .jupyter-widgets.widget-slider", timeout=180_000)
        img = page.locator(".jupyter-widgets img, .widget-image").first
        img.wait_for(timeout=60_000)
        label = page.locator(".widget-label").filter(has_text="t = ").first
        page.screenshot(path=str(shots / "1_rendered.png"))
        first_src, first_label = img.get_attribute("src"), label.inner_text()
        check(bool(first_src) and "pure noise" in first_label, f"slider rendered at frame 0: {first_label!r}")

        handle = page.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").first
        handle.click()
        for _ in range(20):
            page.keyboard.press("ArrowRight")
        time.sleep(0.5)
        page.screenshot(path=str(shots / "2_moved.png"))
        moved_src, moved_label = img.get_attribute("src"), label.inner_text()
        check(moved_src != first_src, "moving the slider changes the image")
        check(moved_label != first_label and moved_label.startswith("t = "), f"label follows: {moved_label!r}")

        page.locator(".widget-play button, .jupyter-widgets button").first.click()  # Play
        time.sleep(3)
        page.screenshot(path=str(shots / "3_played.png"))
        played_label = label.inner_text()
        check(played_label != moved_label, f"Play advances the slider: {played_label!r}")
    print(f"screenshots in {shots}/")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
