"""`parrot-chat` in a real browser: Debian's headless Chromium driven by Playwright (never a downloaded browser),
against `parrot-chat --model DIR` serving a tiny Parrot from a subprocess.

Screenshots go to $PARROT_CHAT_ARTIFACTS (default: pytest's tmp folder). Skipped when Playwright or
/usr/bin/chromium is missing, unless PARROT_REQUIRE_BROWSER=1 (set by .ci/run, which installs both).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures import QUESTIONS, make_image, sharpen_routing

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANSWER_TIMEOUT_MS = 120_000
SUBMIT = "#parrot-input button.submit-button"


def _require_browser() -> None:
    """Skip (fail under PARROT_REQUIRE_BROWSER=1) when Gradio, Playwright or Debian's Chromium is missing.
    Checked in the fixtures, not at import, so collecting this module never needs them (`-m compat` venvs)."""
    import importlib.util

    missing = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
    missing += [CHROMIUM] if not os.path.exists(CHROMIUM) else []
    if missing:
        message = (
            f"browser test needs {', '.join(missing)} (pip install -e '.[chat]' playwright; apt-get install chromium)"
        )
        if os.environ.get("PARROT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


# Records every distinct text of the newest answer while it streams (the page replaces it as tokens arrive).
WATCH_STREAM = """() => {
  window.__parrotSeen = [];
  const chat = document.querySelector('#parrot-chatbot');
  new MutationObserver(() => {
    const texts = chat.querySelectorAll('.bot .parrot-text, [data-testid="bot"] .parrot-text');
    if (!texts.length) return;
    const text = texts[texts.length - 1].textContent;
    if (window.__parrotSeen[window.__parrotSeen.length - 1] !== text) window.__parrotSeen.push(text);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("PARROT_CHAT_ARTIFACTS") or tmp_path_factory.mktemp("chat-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, model, processor): `parrot-chat --model` on a saved tiny Parrot with prompt-sensitive routing."""
    _require_browser()
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0)
    sharpen_routing(model)
    folder = tmp_path_factory.mktemp("chat-model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    port = _free_port()
    script = Path(sys.executable).with_name("parrot-chat")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "transformers_parrot.chat.cli"]
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        command + ["--model", str(folder), "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"parrot-chat did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, model, processor
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser_context():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="parrot-chat-chromium-"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1100},
        )
        yield context
        context.close()


@pytest.fixture
def page(served, browser_context):
    page = browser_context.new_page()
    page.goto(served[0])
    page.wait_for_selector("#parrot-chatbot")
    yield page
    page.close()


def _bar_weights(chart) -> list[float]:
    """The weights of a chart's bars, from their tooltips (`expert i: w`), in expert order."""
    titles = chart.locator("rect.parrot-bar title").all_text_contents()
    assert [t.split(":")[0] for t in titles] == [f"expert {i}" for i in range(len(titles))]
    return [float(t.split(":")[1]) for t in titles]


def _weights(page, answer_index: int = -1) -> list[float]:
    return _bar_weights(page.locator("#parrot-chatbot svg.parrot-routing-chart").nth(answer_index))


def _ask(page, question: str, image: str | None = None) -> None:
    if image is not None:
        page.set_input_files("#parrot-input input[type=file]", image)
        page.wait_for_selector("#parrot-input img, #parrot-input .thumbnail-item", timeout=30_000)
    page.fill("#parrot-input textarea", question)
    page.click(SUBMIT)  # Playwright waits until it is enabled: the upload has finished


def _set_max_new_tokens(page, value: int) -> None:
    page.fill("#parrot-max-new-tokens input[type=number]", str(value))
    page.press("#parrot-max-new-tokens input[type=number]", "Enter")


def _wait_answers(page, count: int) -> None:
    """Until `count` answers are complete (the input is re-enabled after each)."""
    page.wait_for_function(
        "() => document.querySelectorAll('#parrot-chatbot .parrot-text, #parrot-chatbot .parrot-error').length"
        f" >= {2 * count} && "
        "!document.querySelector('#parrot-input textarea').disabled",
        timeout=ANSWER_TIMEOUT_MS,
    )


def test_chinese_question_streams_with_routing_chart(served, page, artifacts, tmp_path):
    from transformers_parrot.routing import routing_weights

    _, model, processor = served
    picture = tmp_path / "shapes.png"
    make_image(5, (96, 64)).save(picture)
    page.evaluate(WATCH_STREAM)
    _ask(page, QUESTIONS["zh"], str(picture))
    page.wait_for_selector("#parrot-chatbot svg.parrot-routing-chart", timeout=ANSWER_TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "chat_zh.png"), full_page=True)

    seen = [t for t in page.evaluate("window.__parrotSeen") if t and t != "…"]
    assert len(seen) >= 3, f"the answer did not stream: {seen[:5]}"
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))
    assert page.locator("#parrot-chatbot img").count() >= 1  # the uploaded image is shown in the chat
    weights = _weights(page)
    assert len(weights) == model.config.num_experts == 6
    from PIL import Image

    reference = routing_weights(model, processor, [Image.open(picture).convert("RGB")], [QUESTIONS["zh"]])[0]
    assert weights == pytest.approx(reference.tolist(), abs=1e-5)


def test_arabic_example_and_language_comparison(served, page, artifacts):
    from transformers_parrot.chat.examples import bundled_image_path
    from transformers_parrot.languages import example_questions
    from transformers_parrot.routing import routing_weights

    _, model, processor = served
    page.click("#parrot-example-ar")
    page.wait_for_selector("#parrot-chatbot svg.parrot-routing-chart", timeout=ANSWER_TIMEOUT_MS)
    _wait_answers(page, 1)
    question = page.locator("#parrot-chatbot .parrot-text").first
    assert question.text_content() == example_questions()["ar"]
    assert question.evaluate("e => getComputedStyle(e).direction") == "rtl"
    assert len(page.locator("#parrot-chatbot .parrot-text").nth(1).text_content()) > 0  # the answer

    from PIL import Image

    image = Image.open(bundled_image_path()).convert("RGB")
    reference = routing_weights(model, processor, [image], [example_questions()["ar"]])[0]
    assert _weights(page) == pytest.approx(reference.tolist(), abs=1e-5)
    page.screenshot(path=str(artifacts / "chat_ar_example.png"), full_page=True)

    page.click("#parrot-compare-accordion button, #parrot-compare-accordion .label-wrap")
    page.wait_for_function("() => document.querySelector('#parrot-compare-ru textarea')?.value.length > 0")
    assert page.input_value("#parrot-compare-zh textarea") == example_questions()["zh"]
    page.click("#parrot-compare-button")
    page.wait_for_selector("#parrot-compare-output .parrot-compare-cell", timeout=ANSWER_TIMEOUT_MS)
    cells = page.locator("#parrot-compare-output .parrot-compare-cell")
    assert cells.count() == 6 and page.locator("#parrot-compare-output rect.parrot-bar").count() == 36
    all_six = routing_weights(model, processor, [image] * 6, list(example_questions().values()))
    for i in range(6):
        shown = _bar_weights(cells.nth(i))
        assert shown == pytest.approx(all_six[i].tolist(), abs=1e-5)
    page.screenshot(path=str(artifacts / "chat_compare.png"), full_page=True)


def test_bad_input_never_breaks_the_page(page, artifacts, tmp_path):
    _set_max_new_tokens(page, 32)
    broken = tmp_path / "broken.png"
    broken.write_text("not really a png")
    _ask(page, "what is in this picture?", str(broken))
    page.wait_for_selector("#parrot-chatbot .parrot-error", timeout=ANSWER_TIMEOUT_MS)
    assert "broken.png" in page.locator("#parrot-chatbot .parrot-error").last.text_content()
    _wait_answers(page, 1)

    _ask(page, "word " * 1500)  # over the tiny model's 1024-token context
    page.wait_for_function(
        "() => document.querySelectorAll('#parrot-chatbot .parrot-error').length >= 2", timeout=ANSWER_TIMEOUT_MS
    )
    assert "context of 1024 tokens" in page.locator("#parrot-chatbot .parrot-error").last.text_content()
    _wait_answers(page, 2)

    good = tmp_path / "good.png"
    make_image(9).save(good)
    _ask(page, QUESTIONS["tr"], str(good))
    page.wait_for_selector("#parrot-chatbot svg.parrot-routing-chart", timeout=ANSWER_TIMEOUT_MS)
    _wait_answers(page, 3)

    second = tmp_path / "second.png"
    make_image(10).save(second)
    _ask(page, "and this one?", str(second))  # a second image in a one-image model
    page.wait_for_function(
        "() => document.querySelectorAll('#parrot-chatbot .parrot-error').length >= 3", timeout=ANSWER_TIMEOUT_MS
    )
    assert "Clear the chat" in page.locator("#parrot-chatbot .parrot-error").last.text_content()
    _wait_answers(page, 4)
    page.screenshot(path=str(artifacts / "chat_bad_input.png"), full_page=True)

    page.click("#parrot-clear")
    page.wait_for_function("() => !document.querySelector('#parrot-chatbot .parrot-text')")
    third = tmp_path / "third.png"  # (a file input ignores the same file chosen twice in a row)
    make_image(11).save(third)
    _ask(page, QUESTIONS["ru"], str(third))  # after clearing, a new image is welcome
    page.wait_for_selector("#parrot-chatbot svg.parrot-routing-chart", timeout=ANSWER_TIMEOUT_MS)


def test_pasted_image(page, tmp_path):
    """An image pasted into the input (a clipboard paste event carrying a PNG file) is asked about."""
    import base64
    import io

    buffer = io.BytesIO()
    make_image(12).save(buffer, format="PNG")
    page.fill("#parrot-input textarea", QUESTIONS["pt"])
    page.evaluate(
        """(b64) => {
      const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], 'pasted.png', {type: 'image/png'}));
      document.querySelector('#parrot-input textarea').dispatchEvent(
        new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
    }""",
        base64.b64encode(buffer.getvalue()).decode(),
    )
    page.wait_for_selector("#parrot-input img", timeout=30_000)
    page.click(SUBMIT)
    page.wait_for_selector("#parrot-chatbot svg.parrot-routing-chart", timeout=ANSWER_TIMEOUT_MS)
    assert page.locator("#parrot-chatbot img").count() == 1


def test_stop_button(page, tmp_path):
    picture = tmp_path / "stop.png"
    make_image(4).save(picture)
    _set_max_new_tokens(page, 2048)
    page.evaluate(WATCH_STREAM)
    _ask(page, "tell me everything", str(picture))
    page.wait_for_function(
        "() => window.__parrotSeen.filter(t => t && t !== '…').length >= 2", timeout=ANSWER_TIMEOUT_MS
    )
    page.click("#parrot-stop")
    page.wait_for_selector("#parrot-chatbot .parrot-note", timeout=ANSWER_TIMEOUT_MS)
    notes = page.locator("#parrot-chatbot .parrot-note").all_text_contents()
    assert notes[0] == "stopped"  # then "answer limited to ... by the context length": 2048 did not fit
    assert all(note.startswith("answer limited to") for note in notes[1:])
    page.wait_for_selector("#parrot-chatbot svg.parrot-routing-chart", timeout=ANSWER_TIMEOUT_MS)
    _wait_answers(page, 1)
    # far fewer than the ~1000 tokens of room the tiny model had left
    assert len(page.locator("#parrot-chatbot .parrot-text").nth(1).text_content()) < 1500


def test_two_tabs_at_once(served, browser_context, artifacts, tmp_path):
    pages = [browser_context.new_page() for _ in range(2)]
    for i, tab in enumerate(pages):
        tab.goto(served[0])
        tab.wait_for_selector("#parrot-chatbot")
        _set_max_new_tokens(tab, 64)
        picture = tmp_path / f"tab{i}.png"
        make_image(20 + i).save(picture)
        tab.set_input_files("#parrot-input input[type=file]", str(picture))
        tab.wait_for_selector("#parrot-input img, #parrot-input .thumbnail-item", timeout=30_000)
        tab.fill("#parrot-input textarea", QUESTIONS["pt" if i else "en"])
    for tab in pages:  # both submitted before either answer can be complete
        tab.click(SUBMIT)
    for i, tab in enumerate(pages):
        tab.wait_for_selector("#parrot-chatbot svg.parrot-routing-chart", timeout=ANSWER_TIMEOUT_MS)
        assert tab.locator("#parrot-chatbot .parrot-text").first.text_content() == QUESTIONS["pt" if i else "en"]
        tab.screenshot(path=str(artifacts / f"chat_tab{i}.png"), full_page=True)
        tab.close()
