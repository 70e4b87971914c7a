"""Prompts without image data: a literal `<image>` in them is refused before the request reaches the engine.

vLLM runs the multimodal processor (where `ParrotMultiModalProcessor.apply` checks that placeholders and images
match) only for prompts that carry image data; a text-only prompt goes to the model as it is, where an `<image>`
token would be embedded as an ordinary word and answered. vLLM has no model hook for text-only prompts, so
`install_placeholder_check` wraps the renderer step every prompt passes (`BaseRenderer._process_tokens` and its
async twin, in the front-end process) with a check that acts on Parrot models only. `.ci/check_vllm_surface.py`
verifies on every CI run that the newest vLLM still has both methods with the signature wrapped here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from vllm.exceptions import VLLMValidationError
from vllm.renderers.base import BaseRenderer

from ..models.parrot.configuration_parrot import ParrotConfig
from ..models.parrot.processing_parrot import IMAGE_TOKEN

WRAPPED_METHODS = ("_process_tokens", "_process_tokens_async")
"""The `BaseRenderer` methods `install_placeholder_check` wraps (both take `(self, prompt, *, skip_mm_cache)`)."""


def check_placeholders_have_images(config: object, prompt: Mapping[str, object]) -> None:
    """Raise `VLLMValidationError` when a Parrot prompt without image data holds `<image>` placeholder tokens."""
    if not isinstance(config, ParrotConfig) or prompt.get("multi_modal_data"):
        return
    count = sum(1 for token in prompt.get("prompt_token_ids") or () if token == config.image_token_id)
    if count:
        raise VLLMValidationError(
            f"The prompt has {count} {IMAGE_TOKEN} placeholder(s) but no image was given: send one image per "
            f"{IMAGE_TOKEN} (chat messages: an image_url part), or remove {IMAGE_TOKEN} from a text-only prompt",
            parameter="prompt",
        )


def install_placeholder_check() -> None:
    """Wrap `BaseRenderer._process_tokens(_async)` with `check_placeholders_have_images` (once per process)."""
    sync, async_ = (getattr(BaseRenderer, name) for name in WRAPPED_METHODS)
    if getattr(sync, "parrot_placeholder_check", False):
        return

    @functools.wraps(sync)
    def process_tokens(self, prompt, **kwargs):
        check_placeholders_have_images(self.model_config.hf_config, prompt)
        return sync(self, prompt, **kwargs)

    @functools.wraps(async_)
    async def process_tokens_async(self, prompt, **kwargs):
        check_placeholders_have_images(self.model_config.hf_config, prompt)
        return await async_(self, prompt, **kwargs)

    process_tokens.parrot_placeholder_check = process_tokens_async.parrot_placeholder_check = True
    BaseRenderer._process_tokens = process_tokens
    BaseRenderer._process_tokens_async = process_tokens_async


__all__ = ["WRAPPED_METHODS", "check_placeholders_have_images", "install_placeholder_check"]
