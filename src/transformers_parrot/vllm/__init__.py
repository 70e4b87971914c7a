"""Serve Parrot with vLLM: an out-of-tree model plugin (the only place this package imports vLLM).

vLLM calls `register` in every one of its processes through the `vllm.general_plugins` entry point, so a folder saved
by this package serves with `vllm.LLM(model=DIR)` or `vllm serve DIR`, with no flag and no `trust_remote_code`.
"""

from __future__ import annotations

ARCHITECTURE = "ParrotForConditionalGeneration"


def register() -> None:
    """Register Parrot's config/processor with transformers' Auto classes and its model with vLLM's registry, and
    refuse `<image>` placeholders in prompts sent without image data (`prompts.install_placeholder_check`)."""
    from vllm import ModelRegistry

    import transformers_parrot  # noqa: F401  (registers ParrotConfig and ParrotProcessor with the Auto classes)

    from .prompts import install_placeholder_check

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}.model:ParrotForConditionalGeneration")
    install_placeholder_check()


__all__ = ["ARCHITECTURE", "register"]
