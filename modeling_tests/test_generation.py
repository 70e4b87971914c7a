"""`generate` and `pipeline("image-text-to-text")`: images encoded once at prefill, KV cache, padding, streaming."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest
import torch
import transformers
from fixtures import QUESTIONS, chat, make_image


def _prompt_batch(processor, languages, padding_side="left"):
    texts = [
        processor.apply_chat_template(chat(QUESTIONS[lang]), add_generation_prompt=True, tokenize=False)
        for lang in languages
    ]
    images = [[make_image(i)] for i, _ in enumerate(languages)]
    return processor(text=texts, images=images, padding=True, padding_side=padding_side, return_tensors="pt")


def _greedy(model, batch, **kwargs):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, **kwargs)
    return out[:, batch["input_ids"].shape[1] :]


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
        torch.testing.assert_close(_greedy(model, alone)[0], batched[row], msg=lambda m, lang=lang: f"{lang}: {m}")


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
        from_embeds = model.generate(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
        )
    torch.testing.assert_close(from_embeds[:, -6:], from_ids)


@pytest.mark.compat
def test_pipeline_answers_chat_messages_in_six_languages(tiny):
    model, processor = tiny
    pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
    for lang, question in QUESTIONS.items():
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": make_image(3)}, {"type": "text", "text": question}],
            }
        ]
        result = pipe(text=messages, max_new_tokens=5, generate_kwargs={"do_sample": False, "min_new_tokens": 5})
        reply = result[0]["generated_text"]
        answer = reply[-1]["content"] if isinstance(reply, list) else reply
        batch = processor(
            text=[processor.apply_chat_template(chat(question), add_generation_prompt=True, tokenize=False)],
            images=[make_image(3)],
            return_tensors="pt",
        )
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        expected = processor.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0]
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


@pytest.mark.compat
def test_no_deprecation_warnings_from_parrot(tiny, tmp_path):
    """Forward, generate, pipeline, save and reload on the installed transformers: no FutureWarning or
    DeprecationWarning (the `warnings` module) and no deprecation message on transformers' logger."""
    model, processor = tiny
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    library_logger = transformers.utils.logging.get_logger("transformers")
    library_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = _prompt_batch(processor, ["tr", "zh"])
            with torch.no_grad():
                model(**batch, output_router_logits=True)
            _greedy(model, batch)
            pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
            content = [{"type": "image", "image": make_image(3)}, {"type": "text", "text": QUESTIONS["ar"]}]
            pipe(text=[{"role": "user", "content": content}], max_new_tokens=3, generate_kwargs={"do_sample": False})
            model.save_pretrained(tmp_path)
            processor.save_pretrained(tmp_path)
            reloaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path)
            transformers.AutoProcessor.from_pretrained(tmp_path)
            _greedy(reloaded, batch)
    finally:
        library_logger.removeHandler(handler)
    deprecations = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ]
    assert deprecations == []
    assert [m for m in messages if "deprecat" in m.lower()] == []


@pytest.mark.compat
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_callers_may_pass_either_cache_name(tiny, name):
    """Decoding step by step with the cache passed by hand, under the new name (5.24+) or the old one."""
    from transformers_parrot.models.parrot._compat import CACHE_KWARG

    if name != CACHE_KWARG and CACHE_KWARG == "past_key_values":
        pytest.skip("`cache` is not a transformers name before 5.24")
    model, processor = tiny
    batch = _prompt_batch(processor, ["pt"])
    expected = _greedy(model, batch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old name is deprecated on 5.24+
        out = model(**batch, use_cache=True)
        cache, tokens = out[CACHE_KWARG], [out.logits[:, -1].argmax(-1)]
        mask = batch["attention_mask"]
        for _ in range(expected.shape[1] - 1):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(input_ids=tokens[-1][:, None], attention_mask=mask, use_cache=True, **{name: cache})
            cache = out[CACHE_KWARG]
            tokens.append(out.logits[:, -1].argmax(-1))
    assert torch.equal(torch.stack(tokens, dim=1), expected)
