"""The review page in a real browser: Debian's Chromium, headless, driven by Selenium.

A user labels three sentences (accepts one, fixes a label, drags a new span), the server is
killed and started again, nothing is lost, and the export holds the spans that were clicked,
character for character. Skipped only where Chromium or its driver is not installed (`make
tools` installs both).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.corpus import check_column_format, read_tagged_documents, token_spans
from tests.test_review import HOSTILE, TEXTS, annotator, server  # noqa: F401, F811 (fixtures)

ROOT = Path(__file__).parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium or chromedriver is not installed (`make tools` installs Debian's "
    "chromium and chromium-driver)",
)

#: the sentence as the page shows it: its text, its key, its entities (offsets into the text)
_STATE = """
const box = document.getElementById("sentence");
const own = (node) => Array.from(node.childNodes)
  .filter((c) => c.nodeType === 3 || c.classList.contains("tok"))
  .map((c) => c.textContent).join("");
const text = Array.from(box.childNodes)
  .map((n) => (n.nodeType === 3 ? n.textContent : n.tagName === "MARK" ? own(n) : n.textContent))
  .join("");
const marks = Array.from(box.querySelectorAll("mark.ent"))
  .map((m) => [Number(m.dataset.start), Number(m.dataset.end), m.dataset.label, own(m)]);
return {key: box.dataset.key || "", text, marks,
        counts: document.getElementById("counts").textContent,
        status: document.getElementById("status").textContent};
"""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _state(driver) -> dict:
    return driver.execute_script(_STATE)


def _wait(driver, condition, what: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(driver)
        if condition(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"the page did not show {what}: {_state(driver)}")


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _start(docs: Path, out: Path, model: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "annotator", "review", str(docs), "--out", str(out)]
        + ["-m", str(model), "--no-browser", "--port", "0", "--device", "cpu"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(out.parent)},
    )
    said = []
    for line in process.stderr:
        said.append(line)
        if line.startswith("Review page: "):
            return process, line.split()[2]
    process.wait()
    raise AssertionError("the review server did not start:\n" + "".join(said))


def _decide(driver, key: str, before: dict) -> dict:
    _press(driver, key)
    return _wait(driver, lambda s: s["key"] != before["key"], "the next sentence")


def _aligned(tokens: list[str], text: str) -> list[tuple[int, int]]:
    """Each token's offsets in `text`, which holds them in order with whitespace between."""
    offsets, position = [], 0
    for token in tokens:
        start = text.index(token, position)
        assert not text[position:start].strip(), f"{token!r} is not next in {text!r}"
        offsets.append((start, start + len(token)))
        position = start + len(token)
    assert not text[position:].strip()
    return offsets


def test_label_three_sentences_kill_restart_and_export_what_was_clicked(
    browser, tiny_model, tmp_path
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    docs = tmp_path / "docs.jsonl"
    extra = [
        "Anna Berg met Peter Brown and Emma Stone in Madrid . The talks went well today .",
        "Sofia Rossi said Airbus would hire in Rome . Nestle declined to comment on Monday .",
        "The French minister met Carlos Silva in Lima . Toyota shares rose in Oslo trading .",
    ]
    docs.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS + extra))
    )
    out = tmp_path / "sample"
    process, url = _start(docs, out, tiny_model)
    try:
        browser.get(url)
        state = _wait(browser, lambda s: s["key"], "a sentence")
        keys = {
            b.get_attribute("data-label"): b.find_element(By.TAG_NAME, "kbd").text.lower()
            for b in browser.find_elements(By.CSS_SELECTOR, "#labels button")
        }
        accepted: dict[str, dict] = {}
        skipped: list[str] = []
        timings: list[str] = []

        # 1. accept the first sentence as the model had it
        accepted[state["key"]] = state
        state = _decide(browser, Keys.ENTER, state)
        timings.append(state["status"])

        # 2. fix a label: click an entity, press another label's key
        while not state["marks"]:
            skipped.append(state["key"])
            state = _decide(browser, "s", state)
        start, end, label, words = state["marks"][0]
        other = next(name for name in keys if name != label)
        browser.find_element(By.CSS_SELECTOR, "#sentence mark.ent .tok").click()
        _wait(browser, lambda s: browser.find_elements(By.CSS_SELECTOR, "mark.selected"), "a pick")
        _press(browser, keys[other])
        state = _wait(browser, lambda s: s["marks"][0][2] == other, f"{words!r} as {other}")
        assert state["marks"][0][:2] == [start, end]
        accepted[state["key"]] = state
        state = _decide(browser, Keys.ENTER, state)
        timings.append(state["status"])

        # 3. drag across two words outside any entity to make a new one
        while True:
            free = browser.find_elements(By.CSS_SELECTOR, "#sentence > .tok")
            pairs = [
                (a, b)
                for a, b in zip(free, free[1:])
                if int(b.get_attribute("data-i")) == int(a.get_attribute("data-i")) + 1
                and a.text.isalpha()
                and b.text.isalpha()
            ]
            if pairs:
                break
            skipped.append(state["key"])
            state = _decide(browser, "s", state)
        first, second = pairs[0]
        dragged = f"{first.text} {second.text}"
        before = len(state["marks"])
        ActionChains(browser).click_and_hold(first).move_to_element(second).release().perform()
        state = _wait(browser, lambda s: len(s["marks"]) == before + 1, f"{dragged!r} marked")
        (made,) = [m for m in state["marks"] if m[3] == dragged]
        assert state["text"][made[0] : made[1]] == dragged
        accepted[state["key"]] = state
        state = _decide(browser, Keys.ENTER, state)
        timings.append(state["status"])
        done = len(accepted) + len(skipped)
        assert state["counts"].startswith(f"{done} done")
        assert all(t.startswith("saved (") for t in timings), timings
        print("decisions answered in:", ", ".join(timings))

        # kill -9 the server, start it again: nothing lost, the page goes on
        process.send_signal(signal.SIGKILL)
        process.wait()
        process, url = _start(docs, out, tiny_model)
        browser.get(url)
        state = _wait(browser, lambda s: s["key"], "a sentence after the restart")
        assert state["counts"].startswith(f"{done} done"), state["counts"]
        assert state["key"] not in accepted and state["key"] not in skipped
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)

    exported = tmp_path / "sample.conll"
    result = CliRunner().invoke(cli, ["review", "export", str(out), "-o", str(exported)])
    assert result.exit_code == 0, result.output
    check_column_format(exported, "text,ner")
    sentences = [s for doc in read_tagged_documents(exported, "text,ner") for s in doc]
    assert len(sentences) == len(accepted)  # the skipped ones are left out
    found = {}
    for sentence in sentences:
        tokens = [token for token, _ in sentence]
        (shown,) = [s for s in accepted.values() if "".join(s["text"].split()) == "".join(tokens)]
        offsets = _aligned(tokens, shown["text"])
        spans = []
        for a, b, label in token_spans([tag for _, tag in sentence]):
            start, end = offsets[a][0], offsets[b - 1][1]
            spans.append([start, end, label, shown["text"][start:end]])
        found[shown["key"]] = spans
    assert found == {key: state["marks"] for key, state in accepted.items()}


def test_hostile_text_is_shown_as_text(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    session = server.session
    while items := session.next_items(1):
        if items[0].text == HOSTILE:
            break
        session.decide(items[0].key, "skip", [])
    browser.get(server.url)
    state = _wait(browser, lambda s: s["key"], "the hostile sentence")
    assert state["text"] == HOSTILE
    assert not browser.find_elements(By.CSS_SELECTOR, "#sentence img, #sentence script")
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 2
    # a page of another origin cannot post decisions (no token, and a preflight we never answer)
    status = browser.execute_script(
        "return fetch('/api/decide', {method: 'POST', body: '{}',"
        " headers: {'Content-Type': 'application/json'}}).then((r) => r.status);"
    )
    assert status == 403


def test_resize_go_back_delete_and_decide_again(browser, server):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url)
    state = _wait(browser, lambda s: s["key"], "a sentence")
    while True:  # a sentence with an entity that a word outside any entity follows
        ends = [
            int(m.find_elements(By.CSS_SELECTOR, ".tok")[-1].get_attribute("data-i"))
            for m in browser.find_elements(By.CSS_SELECTOR, "#sentence mark.ent")
        ]
        after = [
            browser.find_elements(By.CSS_SELECTOR, f'#sentence > .tok[data-i="{end + 1}"]')
            for end in ends
        ]
        if any(after):
            break
        state = _decide(browser, "s", state)
    number = next(i for i, found in enumerate(after) if found)
    start, end, label, words = state["marks"][number]
    first = browser.find_elements(By.CSS_SELECTOR, "#sentence mark.ent")[number]
    first = first.find_element(By.CSS_SELECTOR, ".tok")
    ActionChains(browser).click_and_hold(first).move_to_element(
        after[number][0]
    ).release().perform()
    state = _wait(browser, lambda s: s["marks"][number][1] > end, f"{words!r} made longer")
    grown = state["marks"][number]
    assert grown[0] == start and grown[2] == label and grown[3].startswith(words)
    key = state["key"]
    state = _decide(browser, Keys.ENTER, state)
    assert server.session.store.latest[key].spans[number] == tuple(grown[:3])
    _press(browser, "z")  # back: the sentence as it was saved
    state = _wait(browser, lambda s: s["key"] == key, "the sentence before")
    assert state["marks"][number] == grown
    browser.find_elements(By.CSS_SELECTOR, "#sentence mark.ent .tok")[0].click()
    _press(browser, Keys.DELETE)
    _wait(browser, lambda s: len(s["marks"]) == len(state["marks"]) - 1, "one entity fewer")
    _decide(browser, Keys.ENTER, state)
    assert len(server.session.store.latest[key].spans) == len(state["marks"]) - 1
    assert server.session.store.counts()["corrected"] == 1
