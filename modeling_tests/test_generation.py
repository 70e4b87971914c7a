"""`generate` and `pipeline("image-text-to-text")`: images encoded once at prefill, KV cache, padding, streaming."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import QUESTIONS, chat, make_image

import transformers


def _prompt_batch(processor, languages, padding_side="left"):
    texts = [processor.apply_chat_template(chat(QUESTIONS[lang]), add_generation_prompt=True, tokenize=False)
             for lang in languages]
    images = [[make_image(i)] for i, _ in enumerate(languages)]
    return processor(text=texts, images=images, padding=True, padding_side=padding_side, return_tensors="pt")


def _greedy(model, batch, **kwargs):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, **kwargs)
    return out[:, batch["input_ids"].shape[1]:]


@pytest.mark.compat
def test_vision_tower_and_moe_run_once_at_prefill(tiny):
    model, processor = tiny
    calls = {"vision": 0, "moe": 0, "forward": 0}
    hooks = [
        model.model.vision_tower.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1)),
        model.model.moe.register_forward_hook(lambda *a: calls.__setitem__("moe", calls["moe"] + 1)),
        model.model.language_model.register_forward_hook(
            lambda *a: calls.__setitem__("forward", calls["forward"] + 1)
        ),
    ]
    try:
        _greedy(model, _prompt_batch(processor, ["en", "zh"]))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"vision": 1, "moe": 1, "forward": 6}


@pytest.mark.compat
def test_greedy_with_cache_equals_without_cache(tiny):
    model, processor = tiny
    batch = _prompt_batch(processor, ["pt"])
    torch.testing.assert_close(_greedy(model, batch, use_cache=True), _greedy(model, batch, use_cache=False))


@pytest.mark.compat
def test_left_padded_batch_matches_each_sample_alone(tiny):
    model, processor = tiny
    languages = ["en", "ar", "ru"]
    batched = _greedy(model, _prompt_batch(processor, languages))
    assert (_prompt_batch(processor, languages)["attention_mask"] == 0).any()
    for row, lang in enumerate(languages):
        alone = _prompt_batch(processor, [lang])
        # the sample's image is make_image(0) alone but make_image(row) in the batch: use the same image
        alone["pixel_values"] = _prompt_batch(processor, languages)["pixel_values"][row : row + 1]
        torch.testing.assert_close(_greedy(model, alone)[0], batched[row], msg=lambda m: f"{lang}: {m}")


def test_streamer_yields_the_generated_text(tiny):
    model, processor = tiny
    batch = _prompt_batch(processor, ["tr"])
    streamer = transformers.TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=_greedy, args=(model, batch), kwargs={"streamer": streamer})
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    expected = processor.batch_decode(_greedy(model, batch), skip_special_tokens=True)[0]
    assert streamed == expected and streamed


def test_generate_from_inputs_embeds_matches_input_ids(tiny):
    model, processor = tiny
    batch = _prompt_batch(processor, ["zh"])
    from_ids = _greedy(model, batch)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        from_embeds = model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                     pixel_values=batch["pixel_values"], max_new_tokens=6, min_new_tokens=6,
                                     do_sample=False)
    torch.testing.assert_close(from_embeds[:, -6:], from_ids)


@pytest.mark.compat
def test_pipeline_answers_chat_messages_in_six_languages(tiny):
    model, processor = tiny
    pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
    for lang, question in QUESTIONS.items():
        messages = [{"role": "user", "content": [{"type": "image", "image": make_image(3)},
                                                 {"type": "text", "text": question}]}]
        result = pipe(text=messages, max_new_tokens=5, generate_kwargs={"do_sample": False, "min_new_tokens": 5})
        reply = result[0]["generated_text"]
        answer = reply[-1]["content"] if isinstance(reply, list) else reply
        batch = processor(
            text=[processor.apply_chat_template(chat(question), add_generation_prompt=True, tokenize=False)],
            images=[make_image(3)], return_tensors="pt",
        )
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        expected = processor.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        assert answer.strip() == expected.strip(), lang


def test_static_cache_generation_matches_dynamic_and_keeps_padding_out_of_routing(tiny):
    """With a static cache `generate` passes 4-D masks; routing must still ignore the left padding."""
    model, processor = tiny
    batch = _prompt_batch(processor, ["en", "ru", "zh"])
    assert (batch["attention_mask"] == 0).any()
    router = []
    hook = model.model.moe.register_forward_hook(lambda module, args, out: router.append(out[1].detach()))
    try:
        dynamic = _greedy(model, batch)
        static = _greedy(model, batch, cache_implementation="static")
    finally:
        hook.remove()
    torch.testing.assert_close(static, dynamic)
    torch.testing.assert_close(router[1], router[0])
