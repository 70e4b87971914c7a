"""Convert released Parrot checkpoints (original LLaVA-style ``parrot_qwen2`` format) to transformers-native Parrot.

The original format (AIDC-AI/Parrot-7B, AIDC-AI/Parrot-14B): a Qwen2 ``config.json`` with the multimodal fields
(``mm_vision_tower``, ``mm_projector_type``, ``num_experts``, ``moe_weight``, ...) at top level, a Qwen2 tokenizer
without ``<image>``, and weights named as the left column of `key_mapping.KEY_MAPPING`.

    from transformers_parrot.conversion import convert, verify
    result = convert("AIDC-AI/Parrot-7B", "Parrot-7B-hf", dtype="bfloat16")
    assert verify("AIDC-AI/Parrot-7B", "Parrot-7B-hf").ok

Modules: `hub` (input from a folder or the Hub, ``--push_to_hub``), `reading` (config, tensor headers and tensors,
vision tower), `settings` (original config → ParrotConfig), `key_mapping` (the key table and the key check),
`writing` (streamed safetensors shards), `converter` (`convert`), `verification` (`verify`), `cli`
(``parrot-convert``), `errors` (errors and exit codes).
"""

from .cli import build_parser, main
from .converter import ConversionResult, convert
from .errors import ConversionError, PublishError
from .key_mapping import KEY_MAPPING, build_plan
from .settings import multimodal_settings
from .verification import VERIFY_PROMPTS, VerifyReport, verify

__all__ = [
    "convert",
    "verify",
    "main",
    "build_parser",
    "ConversionError",
    "PublishError",
    "ConversionResult",
    "VerifyReport",
    "KEY_MAPPING",
    "build_plan",
    "multimodal_settings",
    "VERIFY_PROMPTS",
]
