"""The app in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) uploads an image, picks
a domain, clicks Translate and waits for a non-blank output; the screenshot is kept.

    python tests/test_browser.py --exports exports/demo --out docs/app_screenshot.png   # the README's screenshot
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("I2I_CHROMIUM", "/usr/bin/chromium")
# The flags this machine's closed network needs (background services would retry connections forever).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]


def drive_translation(url: str, tab_id: str, source: Path, domain: str | None, screenshot: Path,
                      tab_title: str | None = None) -> np.ndarray:
    """Open the app (and the tab titled `tab_title`), upload `source`, pick `domain` when the tab has one, click
    Translate; returns the first output's pixels."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(url, wait_until="networkidle")
            if tab_title is not None:
                page.get_by_role("tab", name=tab_title).click()
            panel = page.locator(f"#{tab_id}")  # the tab's panel
            panel.locator("input[type=file]").first.set_input_files(str(source))
            if domain is not None:
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


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("I2I_SKIP_BROWSER"):
            pytest.skip("I2I_SKIP_BROWSER is set")
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's `chromium` (bash .ci/run does) or set I2I_CHROMIUM")


@pytest.mark.slow
def test_translate_in_a_real_browser(chromium, tiny_export, tiny_cityscapes_export, tiny_nirvis_export,
                                     tmp_path_factory, tmp_path):
    """One app serving the three tasks' exports: an animal to dog, a label map to a scene, a NIR face to VIS."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    import shutil

    from apps.gradio_app import launch, load_tabs

    exports = tmp_path / "exports"
    for folder in (tiny_export, tiny_cityscapes_export, tiny_nirvis_export):
        shutil.copytree(folder, exports / folder.name)
    tabs = {tab.model.manifest.task: tab for tab in load_tabs(exports, tmp_path / "outputs")}
    app, url = launch(list(tabs.values()), port=None, block=False)
    try:
        for task, domain in (("afhq", "dog"), ("cityscapes", None), ("nirvis", None)):
            tab = tabs[task]
            shot = tmp_path / f"app_{task}.png"
            pixels = drive_translation(url, tab.name, tab.examples[0][0], domain, shot, tab.model.manifest.title)
            assert shot.stat().st_size > 10_000
            assert pixels.shape[0] > 16 and pixels.std() > 2.0, f"{task}: the output image is blank"
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="serve an export and screenshot a translation in Chromium")
    parser.add_argument("--exports", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--domain", default="dog")
    parser.add_argument("--example", type=int, default=0, help="which example image to upload")
    parser.add_argument("--tab", type=int, default=0, help="which export's tab (in folder order)")
    args = parser.parse_args()
    from apps.gradio_app import launch, load_tabs

    out_dir = Path(os.environ.get("GRADIO_TEMP_DIR", "/tmp/i2i-screenshot"))
    tabs = load_tabs(args.exports, out_dir / "outputs")
    tab = tabs[args.tab]
    app, url = launch(tabs, port=None, block=False)
    try:
        domain = args.domain if any(w.role == "domain" for w in tab.widgets) else None
        drive_translation(url, tab.name, tab.examples[args.example][0], domain, args.out, tab.model.manifest.title)
    finally:
        app.close()
    args.out.with_name(args.out.stem + "_output.png").unlink()
    print(args.out)


if __name__ == "__main__":
    main()
