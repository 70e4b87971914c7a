"""`parrot-chat` (issue 14), without a browser: input checks, the local backend against independent generate /
forward computations, the vLLM-server client against a fake SSE server, the page's callbacks and the CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from fixtures import QUESTIONS, make_image, sharpen_routing
from test_conversion import clip_dir, original_tokenizer, write_original  # noqa: F401  (fixtures, for the Space)

from transformers_parrot.chat.backend import (
    ChatInputError,
    LocalBackend,
    ServerBackend,
    Settings,
    Turn,
    check_request,
    load_image,
)
from transformers_parrot.chat.charts import routing_chart
from transformers_parrot.routing import routing_weights

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def chatml(*turns: tuple[str, bool, str | None]) -> str:
    """The ChatML prompt written out by hand (parrot-notes §2): turns of (question, has_image, answer)."""
    text = SYSTEM
    for question, has_image, answer in turns:
        text += "<|im_start|>user\n" + ("<image>\n" if has_image else "") + question + "<|im_end|>\n"
        if answer is not None:
            text += "<|im_start|>assistant\n" + answer + "<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def local():
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0)
    sharpen_routing(model)
    return LocalBackend(model.eval(), processor, name="tiny")


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "picture.png"
    make_image(3).save(path)
    return str(path)


def _run(backend, history, turn, settings, stop=None):
    return list(backend.stream(history, turn, settings, stop or threading.Event()))


# ---------------------------------------------------------------------------------------------- input checks
def test_load_image_refuses_bad_files(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    with pytest.raises(ChatInputError, match="notes.png.*not an image"):
        load_image(str(not_image))

    buffer = io.BytesIO()
    make_image(1, (64, 64)).save(buffer, format="PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ChatInputError, match="cut.png.*damaged"):
        load_image(str(truncated))

    from PIL import Image

    huge = tmp_path / "huge.png"  # 64 megapixels, a few kB on disk: refused from the header, never decoded
    Image.new("1", (8000, 8000)).save(huge)
    with pytest.raises(ChatInputError, match=r"8000×8000 pixels; the limit is 36 megapixels"):
        load_image(str(huge))

    with pytest.raises(ChatInputError, match="cannot be read"):
        load_image(str(tmp_path / "missing.png"))

    good = tmp_path / "ok.jpg"
    make_image(2).convert("L").save(good)
    assert load_image(str(good)).mode == "RGB"


def test_check_request():
    assert check_request([], "  hi  ", [], 1) == "hi"
    with pytest.raises(ChatInputError, match="type a question about the image"):
        check_request([], "   ", ["a.png"], 1)
    with pytest.raises(ChatInputError, match="2 images were attached; this model takes at most 1 image"):
        check_request([], "q", ["a.png", "b.png"], 1)
    earlier = [Turn("q", image="a.png", answer="a")]
    with pytest.raises(ChatInputError, match="already has 1 image.*Clear the chat"):
        check_request(earlier, "q2", ["b.png"], 1)
    assert check_request(earlier, "q2", [], 1) == "q2"
    # a failed turn's image does not count
    assert check_request([Turn("q", image="a.png", error="bad")], "q2", ["b.png"], 1) == "q2"
    assert check_request(earlier, "q2", ["b.png"], 2) == "q2"


# ---------------------------------------------------------------------------------------------- local backend
def test_stream_matches_generate_and_routing(local, image_file):
    model, processor = local.model, local.processor
    question = QUESTIONS["zh"]
    replies = _run(local, [], Turn(question, image_file), Settings(max_new_tokens=12))
    final = replies[-1]
    assert final.done and not final.stopped
    partial = [r.text for r in replies[:-1]]
    assert len(partial) >= 2 and all(b.startswith(a) for a, b in zip(partial, partial[1:]))  # grows token by token

    picture = make_image(3)
    inputs = processor(text=[chatml((question, True, None))], images=[[picture]], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert final.text == expected

    reference = routing_weights(model, processor, [picture], [question])[0]
    assert len(final.routing) == model.config.num_experts
    torch.testing.assert_close(torch.tensor(final.routing), reference, rtol=0, atol=1e-6)


def test_multi_turn_prompt_and_routing(local, image_file):
    model, processor = local.model, local.processor
    history = [Turn(QUESTIONS["en"], image_file, answer="red"), Turn("broken", error="bad input")]
    final = _run(local, history, Turn(QUESTIONS["ru"]), Settings(max_new_tokens=6))[-1]

    prompt = chatml((QUESTIONS["en"], True, "red"), (QUESTIONS["ru"], False, None))  # the failed turn is left out
    inputs = processor(text=[prompt], images=[[make_image(3)]], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert final.text == processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    with torch.no_grad():
        logits = model(**inputs, output_router_logits=True).router_logits
    torch.testing.assert_close(torch.tensor(final.routing), logits[0].softmax(-1), rtol=0, atol=1e-6)
    single = routing_weights(model, processor, [make_image(3)], [QUESTIONS["ru"]])[0]
    assert (torch.tensor(final.routing) - single).abs().max() > 1e-3  # the whole conversation guides the router


def test_text_only_and_special_tokens(local):
    final = _run(local, [], Turn("<image> <|im_end|> hello"), Settings(max_new_tokens=3))[-1]
    assert final.done and final.routing is None  # no image, no routing; the special tokens are inert text
    inputs = local.prepare([Turn("<image> what is <|im_start|>this")])
    assert int((inputs["input_ids"] == local.processor.image_token_id).sum()) == 0


def test_stop_event(local, image_file):
    stop = threading.Event()
    replies = []
    for reply in local.stream([], Turn("stop me", image_file), Settings(max_new_tokens=400), stop):
        replies.append(reply)
        stop.set()
    final = replies[-1]
    assert final.done and final.stopped
    assert len(local.processor.tokenizer(final.text)["input_ids"]) < 50


def test_context_length(local, image_file):
    def length(words: int) -> int:
        return local.prepare([Turn("word " * words, image_file)])["input_ids"].shape[1]

    per_word = (length(20) - length(10)) / 10
    too_long = "word " * int(1100 / per_word)  # > 1024 positions of the tiny model
    with pytest.raises(ChatInputError, match=r"The prompt is \d+ tokens .* context of 1024 tokens"):
        _run(local, [], Turn(too_long, image_file), Settings())
    near = "word " * int(700 / per_word)  # fits, but 512 new tokens would not: capped to the room left
    assert 600 < length(int(700 / per_word)) < 1024 - 100
    final = _run(local, [], Turn(near, image_file), Settings(max_new_tokens=512, temperature=0.7))[-1]
    assert final.done and "limited to" in final.note
    assert _run(local, [], Turn("ok?", image_file), Settings(max_new_tokens=2))[-1].done


def test_sampling_settings():
    assert Settings(temperature=0).generate_kwargs()["do_sample"] is False
    kwargs = Settings(temperature=0.8, top_p=0.9).generate_kwargs()
    assert kwargs["do_sample"] and kwargs["temperature"] == 0.8 and kwargs["top_p"] == 0.9


def test_compare_uses_routing_weights(local, image_file):
    questions = list(QUESTIONS.values())
    weights = torch.tensor(local.compare(image_file, questions))
    reference = routing_weights(local.model, local.processor, [make_image(3)] * 6, questions)
    torch.testing.assert_close(weights, reference, rtol=0, atol=1e-6)
    assert (weights[0] - weights[3]).abs().max() > 1e-3  # languages route differently


def test_routing_chart():
    svg = routing_chart([0.1, 0.6, 0.3])
    assert svg.count('class="parrot-bar"') == 3 and "<title>expert 1: 0.600000</title>" in svg
    heights = [float(part.split('"')[0]) for part in svg.split('height="')[2:]]  # after the svg's own height
    assert heights == pytest.approx([90 / 6, 90.0, 45.0])  # tallest bar at full height, proportional


# ---------------------------------------------------------------------------------------------- vLLM server client
class _FakeServer(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: /v1/models and streamed /v1/chat/completions."""

    requests: list = []
    pieces = ["Two ", "shapes", "."]

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._json(200, {"object": "list", "data": [{"id": "parrot-tiny", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if body["max_tokens"] > 100:
            return self._json(
                400,
                {
                    "object": "error",
                    "message": "This model's maximum context length is 128 tokens",
                    "type": "BadRequestError",
                    "code": 400,
                },
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in [None, *self.pieces]:
            delta = {"role": "assistant"} if piece is None else {"content": piece}
            chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def _json(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_server():
    _FakeServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_backend_streams(fake_server, image_file):
    backend = ServerBackend(fake_server + "/v1/")
    history = [Turn("first?", image_file, answer="one")]
    replies = _run(backend, history, Turn("Quantas formas?"), Settings(max_new_tokens=20, temperature=0.5))
    assert [r.text for r in replies] == ["Two ", "Two shapes", "Two shapes.", "Two shapes."]
    assert replies[-1].done and replies[-1].routing is None and backend.name == "parrot-tiny"
    (request,) = _FakeServer.requests
    assert request["model"] == "parrot-tiny" and request["stream"] is True
    assert request["max_tokens"] == 20 and request["temperature"] == 0.5 and request["top_p"] == 1.0
    first, answer, second = request["messages"]
    assert answer == {"role": "assistant", "content": "one"}
    assert second == {"role": "user", "content": [{"type": "text", "text": "Quantas formas?"}]}
    image_part, text_part = first["content"]
    assert text_part == {"type": "text", "text": "first?"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    from PIL import Image

    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.convert("RGB").tobytes() == make_image(3).tobytes()  # lossless


def test_server_backend_errors(fake_server):
    backend = ServerBackend(fake_server, model="given")
    with pytest.raises(ChatInputError, match="HTTP 400.*maximum context length is 128"):
        _run(backend, [], Turn("q"), Settings(max_new_tokens=500))
    assert _FakeServer.requests[-1]["model"] == "given" and _FakeServer.requests[-1]["temperature"] == 0.0
    unreachable = ServerBackend("http://127.0.0.1:9", model="m", timeout=5)
    with pytest.raises(ChatInputError, match="Cannot reach the server at http://127.0.0.1:9"):
        _run(unreachable, [], Turn("q"), Settings())


# ---------------------------------------------------------------------------------------------- page callbacks
@pytest.fixture(scope="module")
def app(local):
    pytest.importorskip("gradio")
    from transformers_parrot.chat.app import ChatApp

    return ChatApp(local)


def test_answer_turns_errors_into_messages(app, tmp_path, image_file):
    from transformers_parrot.chat.app import render

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    settings = Settings(max_new_tokens=4)
    history = list(app.answer([], "what is this?", [str(bad)], settings))[-1]
    assert history[-1].error and "bad.png" in history[-1].error
    history = list(app.answer(history, "", [], settings))[-1]
    assert history[-1].error == "Please type a question."
    history = list(app.answer(history, "two", [image_file, image_file], settings))[-1]
    assert "2 images were attached" in history[-1].error
    seen = [
        (h[-1].answer, h[-1].routing is not None) for h in app.answer(history, QUESTIONS["ar"], [image_file], settings)
    ]
    history = list(app.answer(history, QUESTIONS["ar"], [image_file], settings))[-1]
    assert history[-1].ok and history[-1].routing is not None  # the next request works
    assert seen[0] == (None, False) and seen[-1] == (history[-1].answer, True)  # pending first, then the stream
    assert len({answer for answer, _ in seen}) >= 3
    history = list(app.answer(history, "again", [image_file], settings))[-1]
    assert "already has 1 image" in history[-1].error

    messages = render(history)
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant"] * 3 + ["user", "user", "assistant"] + ["user", "assistant"]
    assert "⚠️" in messages[1]["content"] and "📎 bad.png" in messages[0]["content"]
    assert messages[6]["content"] == {"path": image_file}
    assert messages[8]["content"].count('class="parrot-bar"') == 6
    assert 'dir="auto"' in messages[7]["content"]


def test_context_note_reaches_the_chat(app, image_file):
    from transformers_parrot.chat.app import render

    words = "word " * 300
    final = list(app.answer([], words, [image_file], Settings(max_new_tokens=2048, temperature=0.5)))[-1][-1]
    assert final.ok and final.note.startswith("answer limited to ")
    assert f'<div class="parrot-note" dir="auto">{final.note}</div>' in render([final])[-1]["content"]


def test_model_failure_is_reported(app, image_file, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(app.backend.model, "generate", boom)
    history = list(app.answer([], "q", [image_file], Settings(max_new_tokens=3)))[-1]
    assert history[-1].error == "Generation failed: RuntimeError: CUDA out of memory (simulated)"


def test_prefill_and_compare(app, image_file):
    from transformers_parrot.languages import example_questions

    asked = [Turn(example_questions()["tr"], image_file, answer="x")]
    assert app.prefill(asked) == list(example_questions().values())
    assert app.prefill([Turn("Что это?", image_file, answer="x")]) == ["", "", "", "", "", "Что это?"]
    html = app.compare(asked, dict(zip("en zh pt ar tr ru".split(), app.prefill(asked))))
    assert html.count('class="parrot-compare-cell"') == 6 and html.count('class="parrot-bar"') == 36
    assert 'dir="rtl"' in html
    assert "Ask about an image first" in app.compare([], {"en": "q"})


def test_server_mode_page_says_no_routing(fake_server):
    pytest.importorskip("gradio")
    from transformers_parrot.chat.app import ChatApp

    app = ChatApp(ServerBackend(fake_server))
    assert "Routing charts are not available in this mode" in app.header()
    assert "only available for a model loaded in this process" in app.compare(
        [Turn("q", "x.png", answer="a")], {"en": "q"}
    )
    history = list(app.answer([], "Quantas formas?", [], Settings(max_new_tokens=8)))[-1]
    assert history[-1].answer == "Two shapes." and history[-1].routing is None


def test_two_sessions_at_once(app, image_file):
    """Two tabs generating at the same time (two threads, one model) both get complete answers."""
    results = {}

    def chat(session, question):
        results[session] = list(app.answer([], question, [image_file], Settings(max_new_tokens=16), session))[-1]

    threads = [threading.Thread(target=chat, args=(s, QUESTIONS[s])) for s in ("zh", "pt")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for session in ("zh", "pt"):
        alone = list(app.answer([], QUESTIONS[session], [image_file], Settings(max_new_tokens=16)))[-1]
        assert results[session][-1].answer == alone[-1].answer and results[session][-1].routing == pytest.approx(
            alone[-1].routing, abs=1e-6
        )


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_without_model(tmp_path, monkeypatch, capsys):
    from transformers_parrot.chat import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main([]) == 2
    assert "--model PATH_OR_ID" in capsys.readouterr().err
    model, notice = cli.resolve_model(None)
    assert model is None
    (tmp_path / "parrot-demo-output" / "model").mkdir(parents=True)
    (tmp_path / "parrot-demo-output" / "model" / "config.json").write_text("{}")
    model, notice = cli.resolve_model(None)
    assert model == cli.DEMO_MODEL and "parrot-demo" in notice
    assert cli.resolve_model("x") == ("x", None)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--model", "a", "--server", "http://b"])


# ---------------------------------------------------------------------------------------------- the Hub Space
def _space_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "space" / "app.py"
    spec = importlib.util.spec_from_file_location("parrot_space_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_space_app_loads_a_native_folder(tmp_path, local):
    pytest.importorskip("gradio")
    space = _space_module()
    native = tmp_path / "native"
    local.model.save_pretrained(native)
    local.processor.save_pretrained(native)
    assert space.model_folder(str(native), str(tmp_path / "cache")) == str(native)
    app = space.build(str(native))
    assert app.backend.name == str(native) and app.backend.num_experts == 6
    assert isinstance(app.build(), __import__("gradio").Blocks)


def test_space_app_converts_an_original_checkpoint(tmp_path, original_tokenizer, clip_dir):  # noqa: F811
    pytest.importorskip("gradio")
    space = _space_module()
    original = write_original(tmp_path / "Parrot-orig", original_tokenizer, clip_dir)
    folder = space.model_folder(str(original), str(tmp_path / "cache"))
    assert folder == str(tmp_path / "cache" / (str(original).strip("/").replace("/", "--") + "-hf"))
    assert not os.path.exists(folder + ".partial")
    backend = LocalBackend.from_pretrained(folder)
    final = _run(backend, [], Turn("What is this?", _png(tmp_path)), Settings(max_new_tokens=3))[-1]
    assert final.done and len(final.routing) == backend.num_experts == 3
    assert space.model_folder(str(original), str(tmp_path / "cache")) == folder  # converted once


def _png(folder) -> str:
    path = folder / "q.png"
    make_image(7).save(path)
    return str(path)


def test_one_request_per_tab(app, image_file):
    """A second request of the same tab stops the running one and starts only after it has finished."""
    order, started = [], threading.Event()

    def first():
        with app.turn("tab"):
            for history in app.answer([], "long", [image_file], Settings(max_new_tokens=400), "tab"):  # noqa: B007
                started.set()
            order.append(("first done", history[-1].stopped))

    worker = threading.Thread(target=first)
    worker.start()
    assert started.wait(60)
    with app.turn("tab"):
        order.append(("second starts", None))
    worker.join(60)
    assert order == [("first done", True), ("second starts", None)]
