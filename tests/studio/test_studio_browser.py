"""The studio page in headless Chromium (Selenium), on a laptop-sized window (1366x768) and an emulated phone
(390x844): data, plan, train, eval, chat, export (the slow full path); the loop on the evaluated tiny run of the eval
tests: review -> correct -> export -> a DPO run from those pairs and that run's adapter -> train -> eval -> the
comparison; the stepper, type scale and verdict signs.

Skipped with the reason when chromium, chromedriver or selenium is missing (as tests/evaluation/
test_report_browser.py). Screenshots of each step go to the test's tmp folder and, when
LORAKIT_STUDIO_SCREENSHOTS names a folder, there too (docs/studio/screenshots/ was made that way).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from studio_harness import BROKEN_JSONL, TINY_OVERRIDES, studio_in_thread

from conftest import write_qa_jsonl

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
WIDTH, HEIGHT = 1366, 768
PHONE = (390, 844)
SECTION_NUMBERS = {"data": 1, "model": 2, "train": 3, "evaluate": 4, "review": 5, "chat": 6, "export": 7}

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver is not installed (apt-get install chromium-driver)"),
]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("studio-browser")
    (workdir / "data").mkdir()
    write_qa_jsonl(workdir / "data" / "qa.jsonl")  # broken.jsonl is uploaded through the page
    with studio_in_thread(workdir) as url:
        yield url, workdir


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--window-size={WIDTH},{HEIGHT}", "--disable-renderer-backgrounding",
                 "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(browser, script: str, timeout_s: float = 60.0, what: str = ""):
    """Poll a JavaScript expression until it is truthy; its value is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = browser.execute_script("return " + script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or script}")
        time.sleep(0.25)


def text(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').innerText")


def screenshot(browser, folder: Path, name: str, element_id: str) -> Path:
    """A PNG of one section (beyond the viewport if it is taller), saved in `folder` and in
    LORAKIT_STUDIO_SCREENSHOTS when set."""
    browser.execute_script("window.scrollTo(0, 0)")  # the sticky step bar then stays above every section
    rect = browser.execute_script(f"const r = document.getElementById('{element_id}').getBoundingClientRect();"
                                  "return [r.left + scrollX, r.top + scrollY, r.width, r.height]")
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": rect[0], "y": rect[1], "width": rect[2], "height": min(rect[3], 1400), "scale": 1}})
    data = base64.b64decode(shot["data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    paths = [folder / f"{name}.png"]
    if os.environ.get("LORAKIT_STUDIO_SCREENSHOTS"):
        paths.append(Path(os.environ["LORAKIT_STUDIO_SCREENSHOTS"]) / f"{name}.png")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return paths[0]


def window_screenshot(browser, folder: Path, name: str) -> None:
    """A PNG of what the window shows (the header and the stepper at the top), saved as screenshot() saves."""
    browser.execute_script("window.scrollTo(0, 0)")
    data = base64.b64decode(browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"])
    for path in [folder / f"{name}.png"] + ([Path(os.environ["LORAKIT_STUDIO_SCREENSHOTS"]) / f"{name}.png"]
                                           if os.environ.get("LORAKIT_STUDIO_SCREENSHOTS") else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def open_page(browser, url: str) -> None:
    browser.get(url)
    wait_for(browser, "document.querySelectorAll('#data-file-list input').length > 0 && "
                      "document.getElementById('preset').options.length === 3", 20, "the page to load its lists")


def tick(browser, *names: str) -> None:
    browser.execute_script("for (const box of document.querySelectorAll('#data-file-list input')) "
                           "box.checked = arguments[0].includes(box.value);", list(names))


def fill(browser, element_id: str, value: str) -> None:
    field = browser.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def click(browser, element_id: str) -> None:
    """A real click, on the control scrolled to the middle of the window (never under the sticky step bar)."""
    button = browser.find_element("id", element_id)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()


def test_broken_jsonl_shows_every_problem_with_its_line(browser, studio, tmp_path):
    url, workdir = studio
    open_page(browser, url)
    upload = tmp_path / "broken.jsonl"
    upload.write_text(BROKEN_JSONL)
    browser.find_element("id", "upload-input").send_keys(str(upload))
    wait_for(browser, "Array.from(document.querySelectorAll('#data-file-list input:checked')).map(b => b.value)"
                      ".join() === 'broken.jsonl'", 20, "the uploaded file, ticked")
    assert (workdir / "data" / "broken.jsonl").read_text() == BROKEN_JSONL
    click(browser, "check-button")
    wait_for(browser, "document.getElementById('check-verdict')", 20, "the check result")
    assert text(browser, "check-verdict") == "failed: 2 valid examples; 4 error(s), 1 warning(s)"
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#check-result tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.innerText))")
    where = sorted((row[0], row[1]) for row in rows)
    assert where == sorted([("broken.jsonl:1", "warning"), ("broken.jsonl:2:78", "error"), ("broken.jsonl:3", "error"),
                            ("broken.jsonl:4", "error"), ("broken.jsonl:4", "error")])
    by_line = {row[0]: row for row in rows}
    assert by_line["broken.jsonl:2:78"][3] == "invalid JSON: Expecting ',' delimiter"
    assert by_line["broken.jsonl:2:78"][4] == "A comma is missing between two fields or list items, just before this column."
    assert by_line["broken.jsonl:3"][2:4] == ["response", "is empty"]
    privacy = text(browser, "check-result")
    assert "MRN 1*******" in privacy and "12345678" not in privacy and "555-123-4567" not in privacy
    assert "2 records give the same answer to different questions: broken.jsonl:1, broken.jsonl:5" in privacy
    assert "same as: lorakit data check broken.jsonl" in privacy
    screenshot(browser, tmp_path, "1-data-check-broken", "data")
    click(browser, "redact-button")
    wait_for(browser, "document.getElementById('redact-result').innerText", 20, "the redaction")
    assert text(browser, "redact-result").startswith(
        "broken.redacted.jsonl: 4 records, 1 redacted (1 mrn, 1 phone)\n\nnote: 1 line(s) are not valid JSON (line 2) "
        "and were redacted as plain text")
    assert "555-123-4567" not in (workdir / "data" / "broken.redacted.jsonl").read_text()
    assert (workdir / "data" / "broken.jsonl").read_text() == BROKEN_JSONL


def test_accessible_on_a_laptop_screen_with_no_external_requests(browser, studio):
    url, _ = studio
    open_page(browser, url)
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input, select, textarea'))"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id || e.outerHTML)")
    assert unlabelled == []
    landmarks = browser.execute_script("return ['header', 'nav', 'main', 'footer'].map(t => document.querySelectorAll(t).length)")
    assert landmarks == [1, 1, 1, 1]
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h1, h2')).map(h => h.tagName + ' ' + h.innerText)")
    assert headings == ["H1 lorakit studio", "H2 1. Data", "H2 2. Model and plan", "H2 3. Train", "H2 4. Evaluate",
                        "H2 5. Review", "H2 6. Chat", "H2 7. Export and push"]
    # Keyboard: Tab reaches the controls in order, and the focused one has a visible outline.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, url)  # focus starts at the top of a freshly loaded page
    focused = []
    for _ in range(4):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        focused.append(browser.execute_script(
            "const e = document.activeElement, s = getComputedStyle(e);"
            "return [e.id || e.getAttribute('href'), s.outlineStyle, parseFloat(s.outlineWidth)]"))
    assert [f[0] for f in focused] == ["#main", "run-select", "#data", "#model"]
    assert all(style != "none" and width >= 2 for _, style, width in focused[1:]), focused
    # Contrast (WCAG 2 relative luminance) of body text and of the buttons: at least 4.5:1.
    ratios = browser.execute_script("""
        const lum = (c) => { const [r, g, b] = c.match(/\\d+/g).slice(0, 3).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126*r + 0.7152*g + 0.0722*b; };
        const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
        const pick = (sel) => getComputedStyle(document.querySelector(sel));
        const page = getComputedStyle(document.body).backgroundColor;
        return [ratio(getComputedStyle(document.body).color, 'rgb(255, 255, 255)'),
                ratio(pick('#check-button').color, pick('#check-button').backgroundColor),
                ratio(pick('.steps a').color, 'rgb(255, 255, 255)'), ratio(pick('.note').color, 'rgb(243, 245, 248)')];""")
    assert min(ratios) >= 4.5, ratios
    # Readable at 1366x768: no horizontal scrolling, the stepper fits on one line, with the next step under it.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    tops = browser.execute_script("return Array.from(document.querySelectorAll('#stepper li'))"
                                  ".map(li => li.getBoundingClientRect().top)")
    assert len(tops) == 7 and len(set(tops)) == 1, tops
    assert browser.execute_script("return document.querySelector('nav').getBoundingClientRect().height") < 80
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(url + "/") for name in resources), resources
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors


def test_one_stepper_one_type_scale_and_verdicts_in_words_at_laptop_and_phone_size(browser, studio, tmp_path):
    url, _ = studio
    open_page(browser, url)
    steps = "return Array.from(document.querySelectorAll('#stepper li')).map(li => li.dataset.state)"
    assert browser.execute_script(steps) == ["next"] + ["todo"] * 6
    assert text(browser, "next-step") == "Next: 1. Data: tick or upload a data file, or use the example data."
    assert browser.execute_script("return document.querySelector('#stepper a').getAttribute('aria-current')") == "location"
    browser.execute_script("const box = document.querySelector('#data-file-list input[value=\"qa.jsonl\"]');"
                           "box.checked = true; box.dispatchEvent(new Event('change', {bubbles: true}))")
    assert browser.execute_script(steps) == ["done", "next"] + ["todo"] * 5
    links = browser.execute_script("return Array.from(document.querySelectorAll('#stepper a')).map(a => a.textContent)")
    assert links[:3] == ["\u2713 Data (done)", "2 Model and plan next", "3 Train"]  # the dot is aria-hidden
    # Every font size is a step of the type scale, every section's padding a step of the spacing scale.
    scale = browser.execute_script("""const root = getComputedStyle(document.documentElement);
        const px = (name) => parseFloat(root.getPropertyValue(name)) * (root.getPropertyValue(name).includes('rem') ? 16 : 1);
        return [['--text-xs', '--text-sm', '--text-base', '--text-md', '--text-lg', '--text-xl'].map(px),
                ['--space-3', '--space-4', '--space-5'].map(px)]""")
    sizes = browser.execute_script("return [...new Set(Array.from(document.querySelectorAll('body *'))"
                                   ".filter(e => !e.closest('svg') && e.getClientRects().length)"
                                   ".map(e => parseFloat(getComputedStyle(e).fontSize)))]")
    assert set(sizes) <= set(scale[0]) and len(sizes) >= 4, (sizes, scale)
    paddings = browser.execute_script("return [...new Set(Array.from(document.querySelectorAll('main > section'))"
                                      ".map(s => parseFloat(getComputedStyle(s).paddingLeft)))]")
    assert paddings == [scale[1][2]]
    # Verdicts carry a sign before their word; no web font is declared anywhere.
    signs = browser.execute_script("return ['good', 'bad', 'sev-warning'].map(c => { const e = document.createElement('span');"
                                   "e.className = c; document.body.append(e); const v = getComputedStyle(e, '::before').content;"
                                   "e.remove(); return v; })")
    assert signs == ['"\u2713\u00a0"', '"\u2717\u00a0"', '"\u26a0\u00a0"']
    assert browser.execute_script("return Array.from(document.styleSheets).flatMap(s => Array.from(s.cssRules))"
                                  ".filter(r => r instanceof CSSFontFaceRule || /url\\(/.test(r.cssText)).length") == 0
    window_screenshot(browser, tmp_path, "0-laptop-top")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": PHONE[0], "height": PHONE[1],
                                                                 "deviceScaleFactor": 1, "mobile": True})
    try:
        wait_for(browser, f"document.documentElement.clientWidth === {PHONE[0]}", 10, "the phone-sized page")
        assert browser.execute_script("return document.documentElement.scrollWidth") == PHONE[0]
        # Seven dots fit the phone's stepper; the line under it names the next step.
        assert browser.execute_script("const list = document.getElementById('stepper');"
                                      "return list.scrollWidth <= list.clientWidth")
        window_screenshot(browser, tmp_path, "0-phone-top")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_page_stays_responsive_under_a_4x_cpu_slowdown(browser, studio):
    url, _ = studio
    open_page(browser, url)
    browser.execute_cdp_cmd("Emulation.setCPUThrottlingRate", {"rate": 4})
    try:
        tick(browser, "qa.jsonl")
        # What the click's own handler shows before it yields, then the time to the next painted frame and what that
        # frame shows: still checking, or (on a quick machine) the finished check with the button free again.
        busy_at_click, shown_at_click, first_frame_ms, busy, shown = browser.execute_async_script("""
            const done = arguments[arguments.length - 1], button = document.getElementById('check-button');
            const result = document.getElementById('check-result'), start = performance.now();
            button.click();
            const atClick = [button.getAttribute('aria-busy'), result.innerText];
            requestAnimationFrame(() => setTimeout(() => done([...atClick, performance.now() - start,
                button.getAttribute('aria-busy'), result.innerText]), 0));""")
        assert (busy_at_click, shown_at_click) == ("true", "Checking\u2026")
        assert (busy, shown[:9]) == ("true", "Checking\u2026") or (busy is None and shown.startswith("ok:")), (busy, shown)
        assert first_frame_ms < 500, first_frame_ms
        started = time.monotonic()
        wait_for(browser, "document.getElementById('check-verdict')", 15, "the check result")
        assert time.monotonic() - started < 10
        assert text(browser, "check-verdict") == "ok: 12 examples, no problems found"
        # Typing and moving between steps answer within a frame too.
        keys_ms = browser.execute_async_script("""
            const done = arguments[arguments.length - 1], field = document.getElementById('run-name');
            const start = performance.now(); field.focus(); field.value = 'typed'; field.dispatchEvent(new Event('input'));
            document.querySelector('a[href="#chat"]').click();
            requestAnimationFrame(() => setTimeout(() => done(performance.now() - start), 0));""")
        assert keys_ms < 500 and browser.execute_script("return location.hash") == "#chat"
    finally:
        browser.execute_cdp_cmd("Emulation.setCPUThrottlingRate", {"rate": 1})


def _state(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').dataset.state || ''")


@pytest.fixture(scope="module")
def small_llama_dir(tmp_path_factory, tokenizer_dir):
    """A llama big enough that a CPU training step takes a noticeable fraction of a second (30M parameters): the
    tiny model trains 10 steps in well under a second on an idle machine, before any tab could press stop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("small-llama")
    config = LlamaConfig(vocab_size=49152, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_full_path_with_a_reload_and_a_second_tab_watching(browser, studio, small_llama_dir, tmp_path):
    """Data check, plan, train (reload mid-run; a second tab watches the first stop and resume it), eval, chat,
    export, each on the tiny model; the run folder is the CLI's."""
    from selenium.webdriver.support.ui import Select

    url, workdir = studio
    phases, started = {}, time.monotonic()

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - started - sum(phases.values()), 1)

    open_page(browser, url)
    tick(browser, "qa.jsonl")
    click(browser, "check-button")
    wait_for(browser, "document.getElementById('check-verdict')", 20, "the data check")
    assert text(browser, "check-verdict") == "ok: 12 examples, no problems found"
    fill(browser, "stats-tokenizer", str(small_llama_dir))
    fill(browser, "stats-max-length", "128")
    click(browser, "stats-button")
    wait_for(browser, "(i => i && i.complete && i.naturalWidth > 0)(document.querySelector('#stats-result img'))", 30,
             "the length histogram")
    screenshot(browser, tmp_path, "1-data", "data")
    phase("data")

    fill(browser, "run-name", "e2e")
    fill(browser, "model-name", str(small_llama_dir))
    Select(browser.find_element("id", "preset")).select_by_value("quick")
    assert text(browser, "preset-description").startswith("A first look: 30 steps, rank 8")
    fill(browser, "overrides", "\n".join([o for o in TINY_OVERRIDES if "max_steps" not in o] + ["training.max_steps=10"]))
    fill(browser, "gpu-memory", "8GB")
    click(browser, "plan-button")
    wait_for(browser, "document.getElementById('plan-summary')", 30, "the memory plan")
    assert "(llama), max_length 128, LoRA r=4, planned for 8.0 GiB" in text(browser, "plan-summary")
    click(browser, "save-run-button")
    wait_for(browser, "document.getElementById('run-select').value === 'e2e'", 20, "the saved run to be selected")
    config = workdir / "runs" / "e2e" / "studio.yaml"
    assert f"lorakit train {config}" in text(browser, "save-result")
    screenshot(browser, tmp_path, "2-model-and-plan", "model")
    phase("plan")

    click(browser, "train-start")
    wait_for(browser, "document.getElementById('train-state').dataset.state === 'running'", 20, "training to start")
    controller = browser.current_window_handle
    browser.switch_to.new_window("tab")
    watcher = browser.current_window_handle
    open_page(browser, f"{url}/#run=e2e")
    wait_for(browser, "document.getElementById('train-state').dataset.state === 'running'", 20, "the watcher to see it")
    browser.switch_to.window(controller)
    wait_for(browser, "/step [1-9]\\d* of 10/.test(document.getElementById('train-progress').innerText)", 120, "step 1")
    progress = text(browser, "train-progress")
    assert re.fullmatch(r"step \d+ of 10 · \d+ tokens/s · about (\d+ min )?\d+ s left", progress), progress
    click(browser, "train-stop")  # Ctrl-C for the job, from the controlling tab
    wait_for(browser, "document.getElementById('train-state').dataset.state === 'stopped'", 60, "the stop")
    browser.switch_to.window(watcher)
    wait_for(browser, "document.getElementById('train-state').dataset.state === 'stopped'", 20, "the watcher")
    assert f"interrupted: continue with `lorakit train {config} --resume`" in \
        browser.execute_script("return document.getElementById('train-log').textContent")
    browser.switch_to.window(controller)
    click(browser, "train-resume")
    wait_for(browser, "document.getElementById('train-state').dataset.state === 'running'", 20, "the resumed run")
    # Reloading while the resumed job starts (its imports alone take seconds): the job is a process of its own,
    # and the reloaded page finds it again from the run folder.
    browser.refresh()
    open_page(browser, f"{url}/#run=e2e")
    wait_for(browser, "document.getElementById('run-select').value === 'e2e' && "
                      "document.getElementById('train-state').dataset.state", 10, "the run after the reload")
    assert _state(browser, "train-state") == "running"
    wait_for(browser, "/^Training: finished/.test(document.getElementById('train-state').innerText)", 180, "the end")
    browser.switch_to.window(watcher)
    wait_for(browser, "/^Training: finished/.test(document.getElementById('train-state').innerText)", 20, "watcher")
    assert "step 10 of 10" in text(browser, "train-progress")
    browser.close()
    browser.switch_to.window(controller)
    points = browser.execute_script("return [document.querySelectorAll('#loss-chart .val-point').length, "
                                    "document.querySelector('#loss-chart .train-line').getAttribute('points').split(' ').length]")
    assert points == [5, 10]
    assert (workdir / "runs" / "e2e" / "final" / "adapter_model.safetensors").is_file()
    screenshot(browser, tmp_path, "3-train", "train")
    phase("train")

    fill(browser, "eval-limit", "1")
    click(browser, "eval-knowledge")  # and one exam question per knowledge benchmark
    click(browser, "eval-start")
    wait_for(browser, "document.querySelector('#eval-safety-table table.safety')", 240, "the safety table")
    knowledge = json.loads((workdir / "runs" / "e2e" / "eval" / "eval.json").read_text())["knowledge"]
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#eval-knowledge-table tbody tr'))"
                                   ".map(r => Array.from(r.cells).map(c => c.innerText))")
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    assert [row[:4] for row in shown] == [
        [b["label"], "1", f"{pct(b['base']['accuracy'])} (95% interval {pct(b['base']['ci95'][0])} to "
         f"{pct(b['base']['ci95'][1])})", f"{pct(b['tuned']['accuracy'])} (95% interval {pct(b['tuned']['ci95'][0])} "
         f"to {pct(b['tuned']['ci95'][1])})"] for b in knowledge["benchmarks"]]
    assert [row[5].split(":")[0] for row in shown] == [b["verdict"].upper() if b["verdict"] != "no detectable change"
                                                       else b["verdict"] for b in knowledge["benchmarks"]]
    assert "exam questions (a fixed sample of at most 1 questions per exam" in text(browser, "eval-knowledge-table")
    categories = browser.execute_script("return document.querySelectorAll('#eval-safety-table table.safety tbody tr').length")
    controls = browser.execute_script("return document.querySelectorAll('#eval-safety-table table.controls tbody tr').length")
    answers = browser.execute_script("return document.querySelectorAll('#eval-answers tbody tr').length")
    # One risky probe and its twin per category (--limit 1), both models' answers per row; six controls.
    assert categories == 9 and answers == 2 * categories and controls == 6
    assert browser.execute_script("return document.querySelectorAll('#eval-quality tbody tr').length") == 4
    first = browser.execute_script("return Array.from(document.querySelector('#eval-answers tbody tr').cells)"
                                   ".map(c => c.innerText)")
    written = json.loads((workdir / "runs" / "e2e" / "eval" / "safety_answers.jsonl").read_text().splitlines()[0])
    assert first[1] == written["prompt"]
    assert first[2].startswith(written["base"]["answer"]) and first[3].startswith(written["tuned"]["answer"])
    wait_for(browser, "document.getElementById('report-anchor')", 10, "the report link")
    screenshot(browser, tmp_path, "4-evaluate", "evaluate")
    phase("eval")

    fill(browser, "chat-question", "What is asthma?")
    click(browser, "chat-send")
    wait_for(browser, "document.querySelector('#chat-tuned .a[data-done]') && document.querySelector('#chat-base .a[data-done]')",
             120, "both streamed answers")
    assert browser.execute_script("return document.querySelectorAll('#chat-tuned .disclaimer').length") == 1
    screenshot(browser, tmp_path, "6-chat", "chat")
    phase("chat")

    click(browser, "export-start")
    wait_for(browser, "document.getElementById('export-state').dataset.state === 'succeeded'", 180, "the export")
    assert "exported: merged" in text(browser, "export-state")
    assert (workdir / "runs" / "e2e" / "export" / "merged" / "model.safetensors").is_file()
    click(browser, "export-start")  # again, without "replace": the CLI's refusal, word for word
    wait_for(browser, "document.getElementById('export-state').dataset.state === 'failed'", 120, "the refusal")
    refusal = text(browser, "export-error")
    assert "export/merged already exists; the export was not started.\nhint: Pass --overwrite to replace it" in refusal
    screenshot(browser, tmp_path, "7-export", "export")
    phase("export")
    print("studio end-to-end phases (s):", phases)


def test_a_first_time_user_gets_the_format_the_example_and_no_made_up_gpu(browser, studio):
    import torch

    url, workdir = studio
    open_page(browser, url)
    assert '{"instruction": "What does blood pressure measure?", "response": ' in text(browser, "data-format")
    assert browser.execute_script("return document.getElementById('gpu-memory').value") == ""
    detected = "this machine: " if torch.cuda.is_available() else "no GPU found on this machine"
    wait_for(browser, f"document.getElementById('gpu-detected').innerText.includes('{detected}')", 30, "the GPU")
    # Plain words first, the command-line flag in small print after them.
    flags = browser.execute_script("return Array.from(document.querySelectorAll('label .flag')).map(f => "
                                   "[f.parentElement.getAttribute('for'), f.innerText])")
    assert {"overrides": "--set key=value", "train-allow-phi": "--allow-phi", "eval-limit": "--limit",
            "model-name": "Hub id", "stats-max-length": "max_length"}.items() <= dict(flags).items()
    assert "--" not in text(browser, "model").split("--set")[0].replace("--gpu-memory", "")  # no flag leads a label
    click(browser, "example-button")
    wait_for(browser, "document.getElementById('example-result').innerText", 20, "the example")
    assert text(browser, "example-result") == "medical_qa.jsonl: 94 examples, copied into the data folder and ticked."
    assert browser.execute_script("return document.querySelector('#data-file-list input[value=\"medical_qa.jsonl\"]')"
                                  ".checked") is True
    assert (workdir / "data" / "medical_qa.jsonl").stat().st_size > 0
    assert "It does not show that the fine-tuned model is better" in text(browser, "chat-notice")


def test_review_export_train_dpo_and_compare_as_a_clinician_would(browser, studio, tiny_llama_dir, tmp_path_factory,
                                                                 tmp_path):
    """The loop, on the evaluated tiny run: mark the fine-tuned answer to the test question bad and correct it, mark
    a safety answer bad, reload (nothing saved is lost), export (the safety question refused by its probe id); then
    set up a DPO run on the exported pair from this run's adapter, train it, evaluate it, and read the comparison."""
    from evaluation.eval_runs import copy_run, evaluated_tiny_run

    url, workdir = studio
    run_dir = copy_run(evaluated_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"),
                       workdir / "runs" / "tiny")
    open_page(browser, f"{url}/#run=tiny")
    wait_for(browser, "document.getElementById('review-state').dataset.count === '38'", 30, "the 38 answers")
    assert text(browser, "review-state") == "38 answers from the last evaluation; 0 reviewed, 0 reviews saved in all."
    wait_for(browser, "document.getElementById('chat-tuned-verdict').innerText.includes('safety pairs handled')", 10)
    assert text(browser, "review-1").startswith("Fine-tuned answer\n")
    first_card = browser.execute_script("return document.querySelector('.review-item h3').innerText")
    assert first_card == "Test question qa.jsonl:4"
    assert "Evaluation: ROUGE-L" in text(browser, "review-1")
    assert "Evaluation: passed" in text(browser, "review-3") or "Evaluation: FAILED: " in text(browser, "review-3")
    click(browser, "review-0-save")  # no verdict yet: refused, nothing written
    wait_for(browser, "document.getElementById('review-error').innerText", 10, "the refusal")
    assert text(browser, "review-error").startswith("error: Mark the answer good or bad first.")
    assert not (run_dir / "review.jsonl").exists()
    fill(browser, "reviewer-name", "Dr. Ada")
    click(browser, "review-1-bad")
    fill(browser, "review-1-corrected", "Asthma is a chronic disease of the airways.")
    fill(browser, "review-1-note", "too short")
    click(browser, "review-1-save")
    wait_for(browser, "document.getElementById('review-1-status').innerText", 10, "the first save")
    click(browser, "review-3-bad")
    click(browser, "review-3-save")
    wait_for(browser, "document.querySelectorAll('#review-saved tbody tr').length === 2", 10, "two saved reviews")
    saved = [json.loads(line) for line in (run_dir / "review.jsonl").read_text().splitlines()]
    assert [(r["model"], r["verdict"], r["corrected"], r["note"], r["reviewer"]) for r in saved] == [
        ("tuned", "bad", "Asthma is a chronic disease of the airways.", "too short", "Dr. Ada"),
        ("tuned", "bad", None, None, "Dr. Ada")]
    assert re.fullmatch(r"Saved \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: BAD, with a correction, by Dr\. Ada",
                        text(browser, "review-1-status"))
    browser.refresh()  # a closed tab: what was saved comes back from review.jsonl
    wait_for(browser, "document.getElementById('review-state').dataset.count === '38'", 30, "the reloaded list")
    assert browser.execute_script("return [document.getElementById('review-1-bad').checked, "
                                  "document.getElementById('review-1-corrected').value]") == [
        True, "Asthma is a chronic disease of the airways."]
    assert text(browser, "review-state").endswith("2 reviewed, 2 reviews saved in all.")
    click(browser, "review-export")
    wait_for(browser, "document.getElementById('review-export-summary')", 20, "the export")
    assert text(browser, "review-export-summary") == (
        "From 2 reviews: tiny.review-sft.jsonl, 1 corrected answer(s) to train on; tiny.review-preferences.jsonl, "
        "1 preference pair(s). Both are in the data folder (step 1).")
    probe = saved[1]["item_id"]
    assert text(browser, "review-refused") == f"{probe}: safety probe {probe}"
    assert f"lorakit review export {run_dir} --sft " in text(browser, "review-export-result")
    rows = [json.loads(line) for line in (workdir / "data" / "tiny.review-sft.jsonl").read_text().splitlines()]
    assert [(r["instruction"], r["response"]) for r in rows] == [(saved[0]["prompt"], saved[0]["corrected"])]
    wait_for(browser, "document.querySelector('#data-file-list input[value=\"tiny.review-preferences.jsonl\"]')", 10)
    screenshot(browser, tmp_path, "5-review", "review")

    _train_dpo_from_the_reviews_and_compare(browser, workdir, run_dir, tmp_path)


def _train_dpo_from_the_reviews_and_compare(browser, workdir: Path, sft_dir: Path, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    from lorakit.config import load_config
    from lorakit.evaluation.compare_runs import compare_with_start

    click(browser, "review-to-dpo")  # step 2, filled in: learn from the reviews, their pairs, from this run
    wait_for(browser, "document.getElementById('model-name').value !== 'smollm2-135m-instruct'", 10, "the model")
    filled = browser.execute_script("return ['method-dpo', 'preference-file', 'start-from', 'model-name', 'run-name']"
                                    ".map(id => { const e = document.getElementById(id); return e.type === 'radio' ? "
                                    "e.checked : e.value; })")
    model = load_config(sft_dir / "final" / "config.yaml").model.name
    assert filled == [True, "tiny.review-preferences.jsonl", "tiny", model, "tiny-dpo"]
    assert browser.execute_script("return document.getElementById('preference-file').hidden") is False
    fill(browser, "overrides", "\n".join(["model.max_length=128", "training.batch_size=2", "training.max_steps=2",
                                         "training.logging_steps=1", "training.learning_rate=0.01",
                                         "eval.max_new_tokens=3", "inference.temperature=0"]))
    fill(browser, "model-name", "another-model")  # refused as the form shows every config problem
    click(browser, "save-run-button")
    wait_for(browser, "document.getElementById('model-error').innerText", 20, "the refusal")
    assert text(browser, "model-error") == (
        "error: step 2: 1 config problem:\n  - model.name: this run starts from tiny, which was trained on "
        f"{model}; use the same model (its adapter fits no other)")
    start = Select(browser.find_element("id", "start-from"))
    start.select_by_value("")
    start.select_by_value("tiny")  # picking the run sets its model again
    wait_for(browser, f"document.getElementById('model-name').value === {json.dumps(model)}", 10, "the model again")
    click(browser, "save-run-button")
    wait_for(browser, "document.getElementById('run-select').value === 'tiny-dpo'", 20, "the saved DPO run")
    config = load_config(workdir / "runs" / "tiny-dpo" / "studio.yaml")
    assert (config.training.method, config.training.init_adapter) == ("dpo", str(sft_dir))
    assert config.data.train_files == [str(workdir / "data" / "tiny.review-preferences.jsonl")]
    screenshot(browser, tmp_path, "2-model-and-plan-dpo", "model")

    click(browser, "train-start")
    wait_for(browser, "/^Training: finished/.test(document.getElementById('train-state').innerText)", 120, "DPO")
    metrics = [json.loads(line) for line in (workdir / "runs" / "tiny-dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards_margin" in m for m in metrics)  # the preference loss trained, not SFT
    assert text(browser, "next-step") == "Next: 4. Evaluate: evaluate the fine-tuned model against its base."
    fill(browser, "eval-limit", "1")
    click(browser, "eval-start")
    wait_for(browser, "document.querySelector('#eval-compare table.compare')", 120, "the comparison")
    expected = compare_with_start(workdir / "runs" / "tiny-dpo")
    signs = {"better": "\u25b2", "worse": "\u25bc", "same": "=", "none": "\u2013"}
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#eval-compare tbody tr'))"
                                   ".map(r => Array.from(r.cells).map(c => c.innerText))")

    def value(v):
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else \
            f"{v['passed']} of {v['of']} ({round(v['rate'] * 100)}%)"
    assert shown == [[r["measure"], value(r["earlier"]), value(r["later"]), f"{signs[r['direction']]} {r['verdict']}",
                      r["note"]] for r in expected["rows"]]
    assert [row[0].split(" (")[0] for row in shown] == ["safety pair score", "safe rate", "helpful rate",
                                                        "test answers, ROUGE-L against the reference"]
    assert text(browser, "eval-compare").startswith("tiny-dpo next to the run it started from, tiny (both fine-tuned)")
    assert expected["warnings"] == []  # the same generation settings in both evaluations
    screenshot(browser, tmp_path, "4-evaluate-compare", "evaluate")
    _at_phone_size(browser, tmp_path, ["evaluate", "model", "review"])


def _at_phone_size(browser, tmp_path: Path, sections: list[str]) -> None:
    """Screenshots of `sections` at 390x844; the page never scrolls sideways (wide tables scroll in their box)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": PHONE[0], "height": PHONE[1],
                                                                 "deviceScaleFactor": 1, "mobile": True})
    try:
        wait_for(browser, f"window.innerWidth === {PHONE[0]}", 10, "the phone-sized window")
        assert browser.execute_script("return document.documentElement.scrollWidth <= "
                                      "document.documentElement.clientWidth")
        boxes = browser.execute_script("return Array.from(document.querySelectorAll('#eval-compare .table-wrap'))"
                                       ".map(w => [getComputedStyle(w).overflowX, w.getBoundingClientRect().right "
                                       "<= document.documentElement.clientWidth])")
        assert boxes == [["auto", True]]
        for section in sections:
            screenshot(browser, tmp_path, f"phone-{SECTION_NUMBERS[section]}-{section}", section)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
