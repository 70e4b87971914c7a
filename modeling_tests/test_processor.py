"""ParrotProcessor (text, placeholders, padding, truncation, chat template, TRL collators, saving, remote code) and the
tiny tokenizer fixture: offline, CPU, fast. Runs on transformers 5.x and 4.57. Pixels: test_image_processing.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from transformers_parrot.assets import TINY_TOKENIZER_DIR, bundled_image
from transformers_parrot.assets.build_tiny_tokenizer import MMMB_INSTRUCTIONS, write_tokenizer
from transformers_parrot.models.parrot._compat import IS_TRANSFORMERS_4
from transformers_parrot.models.parrot.processing_parrot import (
    DEFAULT_CHAT_TEMPLATE,
    ParrotProcessor,
    default_image_processor,
)

pytestmark = pytest.mark.compat  # the processor is part of the transformers 4.57 compatibility subset

IS_V5 = not IS_TRANSFORMERS_4
SEQ = 10  # image_seq_length used in these tests
SIDE = 30  # image processor output side
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
# interpreters of venvs with other transformers releases (`.ci/run` sets them; see test_remote_code.py)
OTHER_PYTHONS = [p for p in os.environ.get("PARROT_OTHER_PYTHONS", "").split(os.pathsep) if p]

QUESTIONS = {
    "en": "What colour is the circle?\nA. red\nB. blue\nC. green\nD. yellow",
    "zh": "圆形是什么颜色？\nA. 红色\nB. 蓝色\nC. 绿色\nD. 黄色",
    "pt": "Qual é a cor do círculo?\nA. vermelho\nB. azul\nC. verde\nD. amarelo",
    "ar": "ما لون الدائرة؟\nA. أحمر\nB. أزرق\nC. أخضر\nD. أصفر",
    "tr": "Dairenin rengi nedir?\nA. kırmızı\nB. mavi\nC. yeşil\nD. sarı",
    "ru": "Какого цвета круг?\nA. красный\nB. синий\nC. зелёный\nD. жёлтый",
}
LANG_ORDER = ["en", "zh", "pt", "ar", "ru", "tr"]  # order of MMMB_INSTRUCTIONS: en zh pt ar ru tr
INSTRUCTION = dict(zip(LANG_ORDER, MMMB_INSTRUCTIONS))


def user_image_turn(text, n_images=1):
    content = [{"type": "image", "image": bundled_image()} for _ in range(n_images)]
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


# ---------------------------------------------------------------------------------------------- tokenizer fixture
def test_tiny_tokenizer_fixture(tokenizer):
    assert 2000 <= len(tokenizer) <= 4000
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"])
    assert ids == [2123, 2124, 2125, 2126]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.unk_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token is None
    for text in MMMB_INSTRUCTIONS + ["<image>\nred circle", "🦜 Привет"]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.encode("<image><image>", add_special_tokens=False) == [2126, 2126]
    config = json.loads((TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in config  # 4.57 cannot read the 5.x list form


def test_tiny_tokenizer_build_is_deterministic(tmp_path):
    write_tokenizer(tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        assert (tmp_path / "again" / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), name


def test_original_style_tokenizer_without_image_token(tmp_path, tokenizer):
    write_tokenizer(tmp_path / "orig", with_image_token=False)
    original = AutoTokenizer.from_pretrained(tmp_path / "orig")
    assert "<image>" not in original.get_vocab()
    assert len(original) == len(tokenizer) - 1  # <image> is the one extra id, right after the Qwen specials
    text = "<|im_start|>user\nred circle<|im_end|>"
    assert original.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    with pytest.raises(ValueError, match="<image>"):
        ParrotProcessor(tokenizer=original)


# ---------------------------------------------------------------------------------------------- properties, template
def test_properties(processor):
    assert processor.image_token == "<image>"
    assert processor.image_token_id == 2126
    assert processor.assistant_header_ids == [2124, 1343, 1471, 83, 198]
    assert processor.tokenizer.decode(processor.assistant_header_ids) == "<|im_start|>assistant\n"
    assert processor.model_input_names == ["input_ids", "attention_mask", "pixel_values"]
    assert processor.chat_template == DEFAULT_CHAT_TEMPLATE
    assert processor.image_seq_length == SEQ


@pytest.mark.parametrize("lang", LANG_ORDER)
def test_single_turn_prompt_matches_notes(processor, lang):
    question = QUESTIONS[lang] + "\n" + INSTRUCTION[lang]
    prompt = processor.apply_chat_template([user_image_turn(question)], add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        f"{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    # the tokenized form has exactly one <image> and the assistant header at the end
    ids = processor.tokenizer.encode(prompt, add_special_tokens=False)
    assert ids.count(processor.image_token_id) == 1
    assert ids[-len(processor.assistant_header_ids) :] == processor.assistant_header_ids


def test_template_variants(processor):
    render = processor.apply_chat_template
    # string content, no images, custom system prompt
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert render(conv) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
    )
    # two images go before the text whatever their position in the content list; multi-turn
    conv = [
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Same"}]},
        {"role": "user", "content": "Sure?"},
    ]
    assert render(conv, add_generation_prompt=True) == (
        SYSTEM + "<|im_start|>user\n<image>\n<image>\nCompare<|im_end|>\n<|im_start|>assistant\nSame<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the tokenizer ships the same template for text-only use
    assert processor.tokenizer.apply_chat_template(conv, tokenize=False) == render(conv)


def test_assistant_mask_from_apply_chat_template(processor):
    conv = [
        user_image_turn("Colour?"),
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Shape?"},
        {"role": "assistant", "content": "Circle."},
    ]
    kwargs = dict(tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    if IS_V5:
        out = processor.apply_chat_template(conv, processor_kwargs={}, **kwargs)
    else:
        out = processor.apply_chat_template(conv, **kwargs)
    ids = np.asarray(out["input_ids"][0])
    mask = np.asarray(out["assistant_masks"][0]).astype(bool)
    assert (ids == processor.image_token_id).sum() == SEQ
    assert processor.tokenizer.decode(ids[mask]) == "Red.<|im_end|>Circle.<|im_end|>"


# ---------------------------------------------------------------------------------------------- __call__
def test_expansion_counts_and_shapes(processor):
    img = bundled_image()
    texts = ["<image>\nWhat is this?", "No image here.", "<image>\n<image>\nTwo images"]
    out = processor(images=[[img], [], [img, img]], text=texts, padding=True, return_tensors="pt")
    assert set(out.keys()) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["pixel_values"].shape == (3, 3, SIDE, SIDE) and out["pixel_values"].dtype == torch.float32
    counts = (out["input_ids"] == processor.image_token_id).sum(-1).tolist()
    assert counts == [SEQ, 0, 2 * SEQ]
    unexpanded = [len(processor.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    assert out["attention_mask"].sum(-1).tolist() == [n + (SEQ - 1) * c // SEQ for n, c in zip(unexpanded, counts)]
    # the flat form gives the same result
    flat = processor(images=[img, img, img], text=texts, padding=True, return_tensors="pt")
    assert torch.equal(flat["input_ids"], out["input_ids"])
    assert torch.equal(flat["pixel_values"], out["pixel_values"])
    # a single image and a single text: batch of one; no images → no pixel_values
    single = processor(images=img, text="<image>\nhi", return_tensors="pt")
    assert single["input_ids"].shape == (1, SEQ + 2) and single["pixel_values"].shape == (1, 3, SIDE, SIDE)
    text_only = processor(text="hello there")
    assert "pixel_values" not in text_only and isinstance(text_only["input_ids"][0], list)


def test_offsets_map_to_unexpanded_text(processor):
    text = "<image>\nred circle<|im_end|>\n"
    out = processor(images=[bundled_image()], text=text, return_offsets_mapping=True)
    ids, offsets = out["input_ids"][0], out["offset_mapping"][0]
    assert len(ids) == len(offsets)
    for token_id, (start, end) in zip(ids, offsets):
        if token_id == processor.image_token_id:
            assert text[start:end] == "<image>"
    assert offsets[SEQ:] == processor.tokenizer(text, return_offsets_mapping=True)["offset_mapping"][1:]
    assert "".join(text[s:e] for (s, e) in offsets[SEQ - 1 :]) == text


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding(processor, side):
    img = bundled_image()
    texts = ["<image>\na", "<image>\nred blue green yellow"]
    out = processor(
        images=[img, img],
        text=texts,
        padding=True,
        padding_side=side,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    ids, mask, offs = out["input_ids"], out["attention_mask"], out["offset_mapping"]
    lengths = mask.sum(-1).tolist()
    assert ids.shape[1] == max(lengths) and lengths[0] < lengths[1]
    pad = processor.tokenizer.pad_token_id
    n_pad = ids.shape[1] - lengths[0]
    pad_slice = slice(0, n_pad) if side == "left" else slice(lengths[0], None)
    assert (ids[0, pad_slice] == pad).all() and (mask[0, pad_slice] == 0).all() and (offs[0, pad_slice] == 0).all()
    # pad_to_multiple_of and max_length padding
    out = processor(images=[img, img], text=texts, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    assert out["input_ids"].shape[1] % 8 == 0 and out["input_ids"].shape[1] >= max(lengths)
    out = processor(
        images=[img, img], text=texts, padding="max_length", max_length=40, padding_side=side, return_tensors="pt"
    )
    assert out["input_ids"].shape == (2, 40)
    with pytest.raises(ValueError, match="padding=True"):
        processor(images=[img, img], text=texts, return_tensors="pt")


def test_truncation(processor):
    img = bundled_image()
    text = "<image>\nred blue green yellow black white"
    full = processor(images=[img], text=text)["input_ids"][0]
    # cutting text after the image is allowed
    out = processor(images=[img], text=text, truncation=True, max_length=SEQ + 2)
    assert out["input_ids"][0] == full[: SEQ + 2]
    # cutting into the image tokens is an error naming the sample, its length and max_length
    with pytest.raises(ValueError, match=rf"Sample 1 has {len(full)} tokens.*max_length={SEQ - 3}"):
        processor(images=[[], [img]], text=["short", text], truncation=True, max_length=SEQ - 3)
    # no truncation without truncation=True
    assert processor(images=[img], text=text, max_length=5)["input_ids"][0] == full
    # left truncation also protects image tokens
    tok = processor.tokenizer
    old = tok.truncation_side
    try:
        tok.truncation_side = "left"
        with pytest.raises(ValueError, match="would cut image tokens"):
            processor(images=[img], text=text, truncation=True, max_length=len(full) - 1)
        out = processor(
            images=[img],
            text="hello " + text.replace("<image>\n", "") + " <image>",
            truncation=True,
            max_length=SEQ + 1,
        )
        assert out["input_ids"][0][-SEQ:] == [processor.image_token_id] * SEQ
    finally:
        tok.truncation_side = old


def test_count_errors(processor):
    img = bundled_image()
    with pytest.raises(ValueError, match=r"Got 1 image\(s\) but the text has 2 <image> placeholder"):
        processor(images=[img], text=["<image>", "<image>"])
    with pytest.raises(ValueError, match=r"Sample 1: 2 <image> placeholder\(s\) in the text but 1 image\(s\)"):
        processor(images=[[img], [img]], text=["<image>", "<image><image>"])
    with pytest.raises(ValueError, match="no <image> placeholder"):
        processor(images=[img], text="no placeholder")
    with pytest.raises(ValueError, match="no images were given"):
        processor(text="<image> but nothing")
    with pytest.raises(ValueError, match="2 samples"):
        processor(images=[[img], [img]], text=["<image>"])
    with pytest.raises(ValueError, match="needs `text`"):
        processor(images=[img])


def test_tokenizer_validation(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    tok.add_tokens(["<image>"], special_tokens=True)
    with pytest.raises(ValueError, match=r"\['<\|im_start\|>', '<\|im_end\|>'\].*add_tokens"):
        ParrotProcessor(tokenizer=tok)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        ParrotProcessor()


def test_decoding(processor):
    ids = processor.tokenizer.encode("<image>Yes.<|im_end|>", add_special_tokens=False)
    batch = torch.tensor([ids, ids])
    assert processor.post_process_image_text_to_text(batch) == ["Yes.", "Yes."]
    assert processor.post_process_image_text_to_text(batch, skip_special_tokens=False)[0] == "<image>Yes.<|im_end|>"
    assert processor.batch_decode(batch, skip_special_tokens=True) == ["Yes.", "Yes."]
    assert processor.decode(ids) == "<image>Yes.<|im_end|>"


def test_pipeline_style_call(processor):
    """What transformers 5.x's image-text-to-text pipeline does with chat input."""
    messages = [user_image_turn("What colour is the circle?")]
    kwargs = {"processor_kwargs": {}} if IS_V5 else {}
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **kwargs
    )
    assert out["pixel_values"].shape == (1, 3, SIDE, SIDE)
    assert out["input_ids"][0, -5:].tolist() == processor.assistant_header_ids
    assert (out["input_ids"] == processor.image_token_id).sum() == SEQ


def test_dpo_style_call(processor):
    """TRL's DPO collator: nested images, left padding, then completions without images."""
    img = bundled_image()
    prompts = [
        processor.apply_chat_template([user_image_turn("Colour?")], add_generation_prompt=True),
        processor.apply_chat_template([user_image_turn("Shape of the red thing?")], add_generation_prompt=True),
    ]
    out = processor(
        images=[[img], [img]],
        text=prompts,
        padding=True,
        padding_side="left",
        return_tensors="pt",
        add_special_tokens=False,
    )
    assert out["attention_mask"][0, 0] == 0 and out["attention_mask"][:, -1].all()
    assert (out["input_ids"][:, -5:] == torch.tensor(processor.assistant_header_ids)).all()
    done = processor(
        text=["Red.<|im_end|>", "Circle.<|im_end|>"],
        padding=True,
        padding_side="right",
        return_tensors="pt",
        add_special_tokens=False,
    )
    assert "pixel_values" not in done and done["attention_mask"][:, 0].all()


# ---------------------------------------------------------------------------------------------- TRL
def test_trl_sft_collator_assistant_mask(processor):
    pytest.importorskip("trl")
    if not IS_V5:
        pytest.skip("TRL 1.16 is tested with transformers 5.x")
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    img = bundled_image()
    examples = [
        {
            "messages": [
                {"role": "user", "content": "What colour is the circle?"},
                {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "And the square?"},
                {"role": "assistant", "content": "Blue, on the right."},
            ],
            "images": [img],
        },
        {
            "messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}],
            "images": [],
        },
        {
            "messages": [{"role": "user", "content": "Сколько фигур?"}, {"role": "assistant", "content": "Две."}],
            "images": [img, img],
        },
    ]
    collator = DataCollatorForVisionLanguageModeling(
        processor, max_length=200, assistant_only_loss=True, pad_to_multiple_of=8
    )
    batch = collator([dict(e) for e in examples])
    assert "assistant_masks" not in batch
    assert batch["pixel_values"].shape == (3, 3, SIDE, SIDE)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert (batch["input_ids"] == processor.image_token_id).sum(-1).tolist() == [SEQ, 0, 2 * SEQ]
    tok = processor.tokenizer
    expected_answers = [["Red.", "Blue, on the right."], ["Yes."], ["Две."]]
    header, im_end = processor.assistant_header_ids, tok.convert_tokens_to_ids("<|im_end|>")
    for row, answers in zip(range(3), expected_answers):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        # independent expectation from the ids: after each assistant header, up to and including <|im_end|>
        expected = [-100] * len(ids)
        for start in range(len(ids) - len(header) + 1):
            if ids[start : start + len(header)] == header:
                pos = start + len(header)
                while True:
                    expected[pos] = ids[pos]
                    if ids[pos] == im_end:
                        break
                    pos += 1
        assert labels == expected
        trained = [t for t in labels if t != -100]
        assert tok.decode(trained) == "".join(a + "<|im_end|>" for a in answers)
    # truncation that would cut image tokens is refused rather than silently dropping them
    short = DataCollatorForVisionLanguageModeling(processor, max_length=SEQ + 5, assistant_only_loss=True)
    with pytest.raises(ValueError, match="would cut image tokens"):
        short([dict(examples[0])])


# ---------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(processor, tmp_path):
    ParrotProcessor.register_for_auto_class("AutoProcessor")
    processor.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"processing_parrot.py", "chat_template.jinja", "processor_config.json", "tokenizer.json"} <= files
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_parrot.ParrotProcessor"
    assert config["image_seq_length"] == SEQ
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (tmp_path / name).exists():
            assert "Pil" not in (tmp_path / name).read_text()
    assert 'extra_special_tokens": [' not in (tmp_path / "tokenizer_config.json").read_text()
    loaded = ParrotProcessor.from_pretrained(tmp_path)
    assert loaded.image_seq_length == SEQ and loaded.chat_template == processor.chat_template
    img = bundled_image()
    a = processor(images=[img], text="<image>\nКакого цвета круг?", return_tensors="pt")
    b = loaded(images=[img], text="<image>\nКакого цвета круг?", return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


_REMOTE_CHECK = r"""
import sys
class _Block:  # make transformers_parrot unimportable, whatever the editable install does
    def find_spec(self, name, path=None, target=None):
        if name == "transformers_parrot" or name.startswith("transformers_parrot."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, _Block())
import json
import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor
p = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
ip = AutoImageProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
for obj, name in ((p, "ParrotProcessor"), (p.image_processor, "ParrotImageProcessor"), (ip, "ParrotImageProcessor")):
    assert type(obj).__name__ == name and type(obj).__module__.startswith("transformers_modules."), type(obj)
assert "transformers_parrot" not in sys.modules
img = Image.new("RGB", (40, 20), (200, 10, 10))
out = p(images=[img], text="<image>\nhi", return_tensors="np")
grey16 = Image.fromarray((np.arange(200, dtype=np.uint16).reshape(10, 20) * 300).astype(np.uint16))
print(json.dumps({"ids": out["input_ids"].tolist(), "pixels": float(np.abs(out["pixel_values"]).sum()),
                  "grey16": float(np.abs(ip(grey16, return_tensors="np")["pixel_values"]).sum()),
                  "seq": p.image_seq_length, "header": p.assistant_header_ids}))
"""


def _remote_load(python, directory):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(Path(directory).parent / "modules"))
    result = subprocess.run(
        [str(python), "-c", _REMOTE_CHECK, str(directory)],
        capture_output=True,
        text=True,
        cwd=str(Path(directory).parent),
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_remote_code_load_without_package(processor, tmp_path):
    """Save here; load with AutoProcessor and AutoImageProcessor (trust_remote_code=True) in this and the other
    transformers versions (PARROT_OTHER_PYTHONS), in subprocesses where importing transformers_parrot is blocked by
    a meta-path hook (so only the copied processing_parrot.py / image_processing_parrot.py can be used)."""
    ParrotProcessor.register_for_auto_class("AutoProcessor")
    saved = tmp_path / "saved"
    processor.save_pretrained(saved)
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    ref = processor(images=[img], text="<image>\nhi", return_tensors="np")
    expected = {"ids": ref["input_ids"].tolist(), "seq": SEQ, "header": processor.assistant_header_ids}
    grey16 = Image.fromarray((np.arange(200, dtype=np.uint16).reshape(10, 20) * 300).astype(np.uint16))
    grey16_ref = float(np.abs(processor.image_processor(grey16, return_tensors="np")["pixel_values"]).sum())
    for python in [sys.executable] + OTHER_PYTHONS:
        got = _remote_load(python, saved)
        assert {k: got[k] for k in expected} == expected, python
        assert got["pixels"] == pytest.approx(float(np.abs(ref["pixel_values"]).sum()), rel=1e-5)
        assert got["grey16"] == pytest.approx(grey16_ref, rel=1e-5)


def test_trl_dpo_vision_collator(processor):
    pytest.importorskip("trl")
    if not IS_V5:
        pytest.skip("TRL 1.16 is tested with transformers 5.x")
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    img = bundled_image()
    examples = [
        {
            "images": [img],
            "prompt": [{"role": "user", "content": "What colour is the circle?"}],
            "chosen": [{"role": "assistant", "content": "Red."}],
            "rejected": [{"role": "assistant", "content": "Blue, clearly."}],
        },
        {
            "images": [img],
            "prompt": [{"role": "user", "content": "Shape?"}],
            "chosen": [{"role": "assistant", "content": "Circle."}],
            "rejected": [{"role": "assistant", "content": "Square."}],
        },
    ]
    batch = DataCollatorForVisionPreference(processor)(examples)
    assert batch["pixel_values"].shape == (4, 3, SIDE, SIDE)
    tok = processor.tokenizer
    completions = ["Red.", "Circle.", "Blue, clearly.", "Square."]
    for row, completion in enumerate(completions):
        ids = batch["input_ids"][row]
        completion_mask = batch["completion_mask"][row].bool()
        prompt_mask = batch["attention_mask"][row].bool() & ~completion_mask
        # TRL's completion is "rendered conversation minus rendered prompt": answer, <|im_end|> and its newline
        assert tok.decode(ids[completion_mask]) == completion + "<|im_end|>\n"
        assert (ids == processor.image_token_id).sum() == SEQ
        prompt_ids = ids[prompt_mask].tolist()
        assert prompt_ids[-len(processor.assistant_header_ids) :] == processor.assistant_header_ids


def test_image_text_to_text_pipeline(tokenizer):
    """transformers 5.x pipeline("image-text-to-text") with chat input drives the processor end to end."""
    if not IS_V5:
        pytest.skip("pipeline chat path checked on transformers 5.x")
    modeling = pytest.importorskip("transformers_parrot.models.parrot.modeling_parrot")
    from transformers import pipeline

    from transformers_parrot.models.parrot.configuration_parrot import ParrotConfig

    torch.manual_seed(0)
    image_processor = default_image_processor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    processor = ParrotProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=5)
    config = ParrotConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer) + 8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=8,
            patch_size=4,
            projection_dim=32,
        ),
        image_token_id=processor.image_token_id,
        assistant_header_ids=processor.assistant_header_ids,
        num_experts=2,
        moe_intermediate_size=16,
    )
    model = modeling.ParrotForConditionalGeneration(config).eval()
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    messages = [user_image_turn("What colour is the circle?")]
    out = pipe(text=messages, max_new_tokens=3, generate_kwargs={"do_sample": False})
    answer = out[0]["generated_text"][-1]
    assert answer["role"] == "assistant" and isinstance(answer["content"], str)
