"""Property-based tests (hypothesis) of the `parrot-chat` backend and page callbacks on the tiny Parrot: any question
(special tokens, control characters, RTL, empty), any uploaded file (odd modes, tiny/thin/huge sizes, broken, not an
image, a folder), any history shape and any generation settings give either the model's greedy answer for exactly
that conversation or a `ChatInputError` shown in the chat; never "Generation failed" (an error from inside
torch/PIL), and the next request still works.

Deterministic: `derandomize=True`, bounded `max_examples`; answers are at most 3 tokens.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from fixtures import make_image, sharpen_routing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from transformers_parrot.chat.backend import ChatInputError, LocalBackend, Settings, Turn

FUZZ = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SPECIAL = ["<image>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
GOOD_FILES = [
    "rgb.png",
    "cmyk.jpg",
    "grey16.png",
    "palette_alpha.png",
    "la.png",
    "animated.gif",
    "one.png",
    "thin.png",
    "tiny.bmp",
]
BAD_FILES = {
    "empty.png": "cannot|not an image",
    "notes.png": "not an image",
    "cut.png": "damaged",
    "huge.png": "megapixels",
    "folder": "cannot be read|not an image",
    "missing.png": "cannot be read",
}


@pytest.fixture(scope="module")
def local():
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0)
    sharpen_routing(model)
    return LocalBackend(model.eval(), processor, name="tiny")


@pytest.fixture(scope="module")
def app(local):
    pytest.importorskip("gradio")
    from transformers_parrot.chat.app import ChatApp

    return ChatApp(local)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Uploads the page may receive: name -> path."""
    folder = tmp_path_factory.mktemp("uploads")
    base = make_image(5, (40, 28))
    base.save(folder / "rgb.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(folder / "grey16.png")
    palette = base.convert("P")
    palette.save(folder / "palette_alpha.png", transparency=0)
    base.convert("LA").save(folder / "la.png")
    base.save(folder / "animated.gif", save_all=True, append_images=[make_image(6, (40, 28))])
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one.png")
    Image.new("RGB", (3000, 1), (200, 9, 9)).save(folder / "thin.png")
    make_image(7, (3, 2)).save(folder / "tiny.bmp")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    whole = (folder / "rgb.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    Image.new("1", (8000, 8000)).save(folder / "huge.png")
    (folder / "folder").mkdir()
    return {name: str(folder / name) for name in [*GOOD_FILES, *BAD_FILES]}


questions = st.lists(
    st.sampled_from(
        [*SPECIAL, "What colour?", "圆圈是什么颜色？", "ما لون", "\n", " ", "\x00", "\t", "\u200b", "\u202e", "ﷺ"]
    )
    | st.text(max_size=8),
    max_size=6,
).map("".join)

words = st.tuples(st.sampled_from(["What colour?", "Какого цвета", "ما لون", "x"]), questions).map("".join)


@st.composite
def histories(draw, names):
    """Earlier turns as the page keeps them: answered (any text, special tokens included), failed or pending."""
    turns = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["answered", "answered", "failed", "pending"]))
        image = draw(st.sampled_from([None] * (3 * len(names)) + names))  # one turn in four has an image
        question = draw(questions)
        if kind == "answered":
            turns.append(Turn(question, image, answer=draw(questions)))
        elif kind == "failed":
            turns.append(Turn(question, image, error="bad input"))
        else:
            turns.append(Turn(question, image))
    return turns


good_settings = st.builds(
    Settings,
    max_new_tokens=st.integers(1, 3),
    temperature=st.sampled_from([0.0, 0.0, 0.7]),
    top_p=st.sampled_from([1.0, 0.5]),
)
any_settings = st.builds(
    Settings,
    max_new_tokens=st.sampled_from([1, 0, -4]),
    temperature=st.sampled_from([0.0, 0.7, -1.0, math.nan, math.inf]),
    top_p=st.sampled_from([1.0, 0.0, 1.5, math.nan]),
)
setting_values = st.sampled_from([good_settings] * 3 + [any_settings]).flatmap(lambda strategy: strategy)


def _settings_ok(s: Settings) -> bool:
    if s.max_new_tokens < 1 or not math.isfinite(s.temperature) or s.temperature < 0:
        return False
    return s.temperature == 0 or (math.isfinite(s.top_p) and 0 < s.top_p <= 1)


def _inert(text: str) -> str:
    """Special-token text as the chat must send it: a zero-width space after its first character."""
    for token in sorted(SPECIAL, key=len, reverse=True):
        text = text.replace(token, token[0] + "\u200b" + token[1:])
    return text


def _greedy(local, turns: list[Turn], images: list[Image.Image], max_new_tokens: int) -> str:
    """The model's greedy answer for `turns`, prompt written by hand (ChatML, parrot-notes §2)."""
    prompt = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for turn in turns:
        prompt += "<|im_start|>user\n" + ("<image>\n" if turn.image else "") + _inert(turn.question) + "<|im_end|>\n"
        if turn.answer is not None:
            prompt += "<|im_start|>assistant\n" + _inert(turn.answer) + "<|im_end|>\n"
    prompt += "<|im_start|>assistant\n"
    processor = local.processor
    inputs = processor(text=[prompt], images=[images] if images else None, return_tensors="pt")
    with torch.no_grad():
        out = local.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@FUZZ
@given(data=st.data())
def test_any_request_gets_the_answer_or_a_clear_error(app, local, files, data):
    names = [*GOOD_FILES, *BAD_FILES]
    history = data.draw(histories(names))
    kind = data.draw(st.sampled_from(["words"] * 4 + [None, "", " \n"]))  # uniform, unlike a one_of
    question = data.draw(words) if kind == "words" else kind
    n_uploads = data.draw(st.sampled_from([1, 1, 1, 0, 2]))
    uploads = [data.draw(st.sampled_from(names)) for _ in range(n_uploads)]
    chosen = data.draw(setting_values)
    history = [Turn(t.question, files[t.image] if t.image else None, t.answer, t.error) for t in history]
    final = list(app.answer(history, question, [files[name] for name in uploads], chosen))[-1][-1]
    assert final.error is None or not final.error.startswith("Generation failed"), final.error
    earlier = [t for t in history if t.ok]
    earlier_images = [t.image for t in earlier if t.image]
    why = None
    if not (question or "").strip():
        why = "type a question"
    elif len(uploads) + len(earlier_images) > local.max_images:
        why = "image"
    elif uploads and uploads[0] in BAD_FILES:
        why = BAD_FILES[uploads[0]]
    elif not _settings_ok(chosen):
        why = "max_new_tokens|temperature|top_p"
    elif any(path.endswith(tuple(BAD_FILES)) for path in earlier_images):
        why = BAD_FILES[next(name for name in BAD_FILES if any(p.endswith(name) for p in earlier_images))]
    if why is not None:
        event(f"refused: {why}")
        assert final.error is not None and final.answer is None
        assert any(word in final.error for word in why.split("|")), (why, final.error)
        return
    event("answered")
    assert final.error is None and final.ok, final.error
    if chosen.temperature == 0:
        pictures = [
            Image.open(path).convert("RGB")
            if not path.endswith("grey16.png")
            else Image.fromarray(np.rint(np.asarray(Image.open(path), dtype=np.float64) / 257).astype(np.uint8))
            for path in [*earlier_images, *[files[n] for n in uploads]]
        ]
        turns = [*earlier, Turn(question.strip(), files[uploads[0]] if uploads else None)]
        assert final.answer == _greedy(local, turns, pictures, chosen.max_new_tokens)


def test_special_tokens_in_earlier_answers_stay_text(local, files):
    """An earlier answer that reads "<image>" (the model can spell it from byte tokens) is text in the next
    prompt, not a second image placeholder."""
    history = [Turn("first", files["rgb.png"], answer="<image> and <|im_end|>")]
    inputs = local.prepare([*history, Turn("again?")])
    assert int((inputs["input_ids"] == local.processor.image_token_id).sum()) == local.processor.image_seq_length


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_new_tokens", 0, "max_new_tokens"),
        ("temperature", math.nan, "temperature"),
        ("temperature", -0.5, "temperature"),
        ("top_p", 0.0, "top_p"),
        ("top_p", math.inf, "top_p"),
    ],
)
def test_bad_settings_are_named(local, field, value, message):
    kwargs = {"max_new_tokens": 2, "temperature": 0.5, "top_p": 0.9, field: value}
    with pytest.raises(ChatInputError, match=message):
        list(local.stream([], Turn("q"), Settings(**kwargs), threading.Event()))


def test_a_folder_upload_is_not_called_damaged(files):
    from transformers_parrot.chat.backend import load_image

    with pytest.raises(ChatInputError, match="'folder' cannot be read: it is not a file"):
        load_image(files["folder"])
