"""The app in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) uploads an image, picks
a domain, clicks Translate and waits for a non-blank output; the screenshot is kept.

    python tests/test_browser.py --exports exports/demo --out docs/app_screenshot.png   # the README's screenshot
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("I2I_CHROMIUM", "/usr/bin/chromium")
# The flags this machine's closed network needs (background services would retry connections forever).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]


def drive_translation(url: str, tab_id: str, source: Path, domain: str, screenshot: Path) -> np.ndarray:
    """Open the app, translate `source` to `domain` in the latent mode; returns the first output's pixels."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(url, wait_until="networkidle")
            panel = page.locator(f"#{tab_id}")  # the tab's panel: later tasks add tabs of their own
            panel.locator("input[type=file]").first.set_input_files(str(source))
            panel.get_by_label("target domain").click()
            page.get_by_role("option", name=domain, exact=True).click()
            panel.get_by_role("button", name="Translate").click()
            output = page.locator(f"#{tab_id}_output img").first
            output.wait_for(state="visible", timeout=120_000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=output.element_handle())
            shot = screenshot.with_name(screenshot.stem + "_output.png")
            output.screenshot(path=str(shot))
            page.screenshot(path=str(screenshot), full_page=True)
            return np.asarray(Image.open(shot).convert("RGB"))
        finally:
            browser.close()


@pytest.mark.slow
def test_translate_in_a_real_browser(tiny_export, tmp_path_factory, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("I2I_SKIP_BROWSER"):
            pytest.skip("I2I_SKIP_BROWSER is set")
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's `chromium` (bash .ci/run does) or set I2I_CHROMIUM")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    from apps.gradio_app import launch, load_tabs

    tabs = load_tabs(tiny_export.parent, tmp_path / "outputs")
    app, url = launch(tabs, port=None, block=False)
    try:
        source = tabs[0].examples[0][0]
        pixels = drive_translation(url, tabs[0].name, source, "dog", tmp_path / "app.png")
    finally:
        app.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
    assert pixels.shape[0] > 16 and pixels.std() > 5.0, "the output image is blank"


def main() -> None:
    parser = argparse.ArgumentParser(description="serve an export and screenshot a translation in Chromium")
    parser.add_argument("--exports", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--domain", default="dog")
    parser.add_argument("--example", type=int, default=0, help="which example image to upload")
    args = parser.parse_args()
    from apps.gradio_app import launch, load_tabs

    out_dir = Path(os.environ.get("GRADIO_TEMP_DIR", "/tmp/i2i-screenshot"))
    tabs = load_tabs(args.exports, out_dir / "outputs")
    app, url = launch(tabs, port=None, block=False)
    try:
        drive_translation(url, tabs[0].name, tabs[0].examples[args.example][0], args.domain, args.out)
    finally:
        app.close()
    args.out.with_name(args.out.stem + "_output.png").unlink()
    print(args.out)


if __name__ == "__main__":
    main()
