"""Parrot served by vLLM's offline `LLM` through the plugin: same greedy tokens and log-probs as transformers.

All of vLLM's default caches are on (multimodal processor cache, encoder cache, prefix caching) and chunked prefill
uses chunks smaller than one image, so every request exercises the paths where routing could go stale. One engine
for the module (start-up is 20-70 s on CPU). Skipped where vLLM is not installed (the main test venv).
"""

from __future__ import annotations

import base64
import io

import pytest

pytest.importorskip("vllm")

from fixtures import QUESTIONS, make_image  # noqa: E402
from vllm_parrot import (  # noqa: E402
    LOGPROB_TOLERANCE,
    MAX_NEW_TOKENS,
    assert_same_greedy,
    chat_prompt,
    hf_greedy,
    save_tiny_parrot,
)

CHUNK_TOKENS = 8  # max_num_batched_tokens: smaller than one image (10 tokens), so images are prefilled in chunks
MAX_MODEL_LEN = 256
MAX_IMAGES = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(llm, hf model, processor) for one tiny Parrot saved to disk."""
    from vllm import LLM

    directory = tmp_path_factory.mktemp("parrot_vllm")
    model, processor = save_tiny_parrot(directory)
    llm = LLM(
        model=str(directory),
        dtype="float32",
        enforce_eager=True,
        seed=0,
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=CHUNK_TOKENS,
        enable_chunked_prefill=True,
        limit_mm_per_prompt={"image": MAX_IMAGES},
        kv_cache_memory_bytes=256 << 20,
    )
    yield llm, model, processor
    llm.llm_engine.engine_core.shutdown()


def _params():
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=1)


def _request(processor, question, images, uuids=None):
    request = {"prompt": chat_prompt(processor, question, n_images=len(images))}
    if images:
        request["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
    if uuids is not None:
        request["multi_modal_uuids"] = {"image": uuids}
    return request


def test_engine_prefills_images_in_chunks(served):
    llm, model, _ = served
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    assert scheduler.max_num_batched_tokens == CHUNK_TOKENS < model.config.image_seq_length
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    assert llm.llm_engine.vllm_config.model_config.multimodal_config.mm_processor_cache_gb > 0


def test_same_image_different_prompts_one_after_the_other(served):
    llm, model, processor = served
    image = make_image(1)
    for lang in ("zh", "ar", "en", "zh"):
        reference = hf_greedy(model, processor, chat_prompt(processor, QUESTIONS[lang]), [image])
        (output,) = llm.generate([_request(processor, QUESTIONS[lang], [image])], _params(), use_tqdm=False)
        assert_same_greedy(output, reference, lang)


def test_same_image_different_prompts_in_one_batch(served):
    llm, model, processor = served
    image = make_image(2)
    languages = ["pt", "tr", "ru", "pt", "en"]
    outputs = llm.generate(
        [_request(processor, QUESTIONS[lang], [image]) for lang in languages], _params(), use_tqdm=False
    )
    for lang, output in zip(languages, outputs):
        reference = hf_greedy(model, processor, chat_prompt(processor, QUESTIONS[lang]), [image])
        assert_same_greedy(output, reference, lang)


def test_two_images_in_one_prompt(served):
    llm, model, processor = served
    images = [make_image(3), make_image(4)]
    for lang in ("en", "ar"):
        (output,) = llm.generate([_request(processor, QUESTIONS[lang], images)], _params(), use_tqdm=False)
        reference = hf_greedy(model, processor, chat_prompt(processor, QUESTIONS[lang], n_images=2), images)
        assert_same_greedy(output, reference, f"two images, {lang}")


def test_text_only_prompt(served):
    llm, model, processor = served
    (output,) = llm.generate([_request(processor, QUESTIONS["ru"], [])], _params(), use_tqdm=False)
    reference = hf_greedy(model, processor, chat_prompt(processor, QUESTIONS["ru"], n_images=0), None)
    assert_same_greedy(output, reference, "text only")


def test_client_uuid_reused_across_prompts(served):
    llm, model, processor = served
    image = make_image(5)
    for lang in ("tr", "zh", "tr"):
        (output,) = llm.generate(
            [_request(processor, QUESTIONS[lang], [image], uuids=["client-image-5"])], _params(), use_tqdm=False
        )
        reference = hf_greedy(model, processor, chat_prompt(processor, QUESTIONS[lang]), [image])
        assert_same_greedy(output, reference, f"uuid, {lang}")


def test_chat_with_base64_image(served):
    llm, model, processor = served
    image = make_image(6)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    for lang in ("ar", "pt"):
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": QUESTIONS[lang]},
                ],
            }
        ]
        (output,) = llm.chat(messages, _params(), use_tqdm=False)
        reference = hf_greedy(model, processor, chat_prompt(processor, QUESTIONS[lang]), [image])
        assert_same_greedy(output, reference, f"chat, {lang}")


def test_image_keyed_without_its_prompt_reuses_stale_routing(served, monkeypatch):
    """Negative control: hashing an image without its prompt's guidance (vLLM's default key) gives wrong outputs."""
    from dataclasses import replace

    from vllm.multimodal.processing import BaseMultiModalProcessor

    from transformers_parrot.vllm.processing import GUIDANCE_KWARG, ParrotMultiModalProcessor

    def image_only_hashes(self, inputs):
        kwargs = {k: v for k, v in inputs.hf_processor_mm_kwargs.items() if k != GUIDANCE_KWARG}
        return BaseMultiModalProcessor._get_mm_hashes(self, replace(inputs, hf_processor_mm_kwargs=kwargs))

    llm, model, processor = served
    monkeypatch.setattr(ParrotMultiModalProcessor, "_get_mm_hashes", image_only_hashes)
    image = make_image(7)
    first, second = "zh", "ar"
    llm.generate([_request(processor, QUESTIONS[first], [image])], _params(), use_tqdm=False)
    (stale,) = llm.generate([_request(processor, QUESTIONS[second], [image])], _params(), use_tqdm=False)
    prompt = chat_prompt(processor, QUESTIONS[second])
    reference = hf_greedy(model, processor, prompt, [image])
    with pytest.raises(AssertionError):
        assert_same_greedy(stale, reference, "image-only key")
    # what it served is the second prompt answered with the first prompt's routing
    stale_reference = hf_greedy(
        model, processor, prompt, [image], routing_prompt=chat_prompt(processor, QUESTIONS[first])
    )
    assert_same_greedy(stale, stale_reference, "image-only key, first prompt's routing")
    assert max(abs(a - b) for a, b in zip(reference[2], stale_reference[2])) > 10 * LOGPROB_TOLERANCE


def test_bad_inputs_get_clear_errors_and_the_engine_keeps_serving(served):
    from vllm.exceptions import VLLMValidationError

    llm, model, processor = served
    image = make_image(8)
    prompt = chat_prompt(processor, QUESTIONS["en"])
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but 2 image\(s\)"):
        llm.generate([{"prompt": prompt, "multi_modal_data": {"image": [image, image]}}], _params(), use_tqdm=False)
    too_many = [make_image(9)] * (MAX_IMAGES + 1)
    with pytest.raises(VLLMValidationError, match=f"At most {MAX_IMAGES} image"):
        llm.generate([_request(processor, QUESTIONS["en"], too_many)], _params(), use_tqdm=False)
    with pytest.raises(VLLMValidationError, match=f"maximum context length is {MAX_MODEL_LEN} tokens"):
        llm.generate([_request(processor, QUESTIONS["en"] * 200, [image])], _params(), use_tqdm=False)
    broken = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": QUESTIONS["en"]},
            ],
        }
    ]
    with pytest.raises(Exception, match="(?i)image"):
        llm.chat(broken, _params(), use_tqdm=False)
    (output,) = llm.generate([_request(processor, QUESTIONS["en"], [image])], _params(), use_tqdm=False)
    assert_same_greedy(output, hf_greedy(model, processor, prompt, [image]), "after bad inputs")


def test_image_placeholder_without_image_data_is_refused(served):
    """vLLM sends a prompt without image data past the multimodal processor: the plugin refuses its `<image>`."""
    from vllm.exceptions import VLLMValidationError

    llm, model, processor = served
    prompt = chat_prompt(processor, QUESTIONS["en"])  # one <image>, and no image sent with it
    refused = r"1 <image> placeholder\(s\) but no image was given"
    with pytest.raises(VLLMValidationError, match=refused):
        llm.generate([{"prompt": prompt}], _params(), use_tqdm=False)
    with pytest.raises(VLLMValidationError, match=refused):
        llm.generate([{"prompt_token_ids": processor.tokenizer(prompt)["input_ids"]}], _params(), use_tqdm=False)
    typed = [{"role": "user", "content": f"<image><image> {QUESTIONS['en']}"}]  # typed by the user, no image part
    with pytest.raises(VLLMValidationError, match=r"2 <image> placeholder\(s\) but no image"):
        llm.chat(typed, _params(), use_tqdm=False)
    (output,) = llm.generate([_request(processor, QUESTIONS["ru"], [])], _params(), use_tqdm=False)
    reference = hf_greedy(model, processor, chat_prompt(processor, QUESTIONS["ru"], n_images=0), None)
    assert_same_greedy(output, reference, "text only, after the refused prompts")
