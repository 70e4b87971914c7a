"""Parrot under vLLM tensor parallelism (`tensor_parallel_size=2`, two CPU ranks): the projector and the Qwen2 LLM
are sharded, the vision tower's attention too, the MoE is replicated; the greedy tokens and log-probs stay those of
transformers. One engine for the module; skipped where vLLM is not installed.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")

from fixtures import QUESTIONS, make_image  # noqa: E402
from vllm_parrot import MAX_NEW_TOKENS, assert_same_greedy, chat_prompt, hf_greedy, save_tiny_parrot  # noqa: E402

# Two ranks on one CPU machine: no core held back for the front end, one OpenMP thread bound to each core.
TP_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "0|1"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from vllm import LLM

    directory = tmp_path_factory.mktemp("parrot_tp")
    model, processor = save_tiny_parrot(directory)
    saved = {key: os.environ.get(key) for key in TP_ENV}
    os.environ.update(TP_ENV)
    try:
        llm = LLM(
            model=str(directory),
            tensor_parallel_size=2,
            dtype="float32",
            enforce_eager=True,
            seed=0,
            max_model_len=256,
            kv_cache_memory_bytes=128 << 20,
        )
        yield llm, model, processor
        llm.llm_engine.engine_core.shutdown()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_tensor_parallel_matches_transformers(served):
    from vllm import SamplingParams

    llm, model, processor = served
    assert llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size == 2
    image, other = make_image(21), make_image(22)
    cases = [("zh", [image]), ("ar", [image]), ("en", [image, other]), ("ru", [])]
    requests = []
    for lang, images in cases:
        request = {"prompt": chat_prompt(processor, QUESTIONS[lang], n_images=len(images))}
        if images:
            request["multi_modal_data"] = {"image": images}
        requests.append(request)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=1)
    outputs = llm.generate(requests, params, use_tqdm=False)
    for (lang, images), request, output in zip(cases, requests, outputs):
        reference = hf_greedy(model, processor, request["prompt"], images or None)
        assert_same_greedy(output, reference, f"TP=2, {lang}, {len(images)} image(s)")
