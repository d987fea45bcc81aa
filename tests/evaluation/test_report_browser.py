"""Open the report in headless Chromium: it renders, every image loads, the console stays clean.

Needs the Debian packages chromium and chromium-driver and the PyPI package selenium (`pip install
'lorakit[test]'`); skipped with the reason when one is missing. The full-page screenshot is written next to
the test's report and, when LORAKIT_TEST_ARTIFACTS names a folder, copied there as report.png.
"""

import base64
import os
import shutil
from pathlib import Path

import pytest

from evaluation.eval_runs import copy_run, evaluated_tiny_run
from lorakit.evaluation.report import write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--window-size=1280,900")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver is not installed (apt-get install chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _open(browser, page: Path) -> list[dict]:
    """Load the page and return the console's error entries."""
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(page.resolve().as_uri())
    browser.execute_script("return document.readyState")
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _screenshot(browser) -> bytes:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}})
    return base64.b64decode(shot["data"])


def test_report_renders_with_images_and_no_console_errors(browser, tiny_llama_dir, tmp_path_factory, tmp_path):
    run = copy_run(evaluated_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"), tmp_path / "run")
    page = write_report(run)
    errors = _open(browser, page)
    assert errors == [], errors
    assert browser.title.startswith("lorakit report")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => ({src: i.src.slice(0, 22), ok: i.complete && i.naturalWidth > 0}))")
    assert len(images) == 2 and all(image["ok"] for image in images), images
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in fetched if url.startswith(("http:", "https:"))], fetched
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.innerText)")
    assert "Clinical safety: safe and helpful" in headings and "Training" in headings
    screenshot = _screenshot(browser)
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(screenshot) > 20_000
    (tmp_path / "report.png").write_bytes(screenshot)
    if os.environ.get("LORAKIT_TEST_ARTIFACTS"):
        target = Path(os.environ["LORAKIT_TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        (target / "report.png").write_bytes(screenshot)


def test_the_console_check_catches_a_broken_page(browser, tmp_path):
    """Guards the check above: a page with a missing image and a script error must be reported."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="missing.png"><script>undefinedFunction()</script></body></html>')
    assert len(_open(browser, page)) >= 2
