"""JupyterLab + headless Chromium, driven by Playwright, for the browser checks in tools/.

``notebook_in_browser(cells, chromium)`` starts JupyterLab on a free local port with a scratch
notebook of ``cells``, runs it in Chromium and yields the page; ``Checks`` counts and prints the
checks. Used by ``check_guidance_widget_in_browser.py``; needs ``pip install playwright`` and a
Chromium (``/usr/bin/chromium`` on Debian). Not part of the test suite.
"""

from __future__ import annotations

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(folder: Path, cells: list[str], name: str = "check.ipynb") -> Path:
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
