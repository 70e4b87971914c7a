"""Parrot: the files published as Hub remote code (`trust_remote_code=True`).

Self-contained: these modules import only torch, transformers (with its numpy and PIL) and each other, so a
checkpoint folder holding copies of them loads without this package. Application code (training, evaluation,
demo, chat, conversion) builds on them and lives outside this subpackage.
"""

from .configuration_parrot import ParrotConfig
from .image_processing_parrot import ParrotImageProcessor
from .modeling_parrot import ParrotForConditionalGeneration, ParrotModel, ParrotPreTrainedModel
from .processing_parrot import ParrotProcessor

__all__ = [
    "ParrotConfig",
    "ParrotForConditionalGeneration",
    "ParrotImageProcessor",
    "ParrotModel",
    "ParrotPreTrainedModel",
    "ParrotProcessor",
]
