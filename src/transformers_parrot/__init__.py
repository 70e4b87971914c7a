"""transformers-parrot: Parrot (arXiv 2406.02539) as a native Hugging Face Transformers model.

Importing this package registers Parrot with the transformers Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText`, `AutoModelForVision2Seq` where it exists, `AutoProcessor`) and marks the classes
for Hub remote code, so `save_pretrained` writes a folder that loads with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .models.parrot._compat import AutoModelForVision2Seq, register_image_processor
from .models.parrot.configuration_parrot import ParrotConfig
from .models.parrot.image_processing_parrot import ParrotImageProcessor
from .models.parrot.modeling_parrot import ParrotForConditionalGeneration, ParrotModel, ParrotPreTrainedModel
from .models.parrot.processing_parrot import ParrotProcessor

__version__ = "0.1.0"  # the single source of the version: pyproject.toml reads it (see RELEASING.md)

AutoConfig.register(ParrotConfig.model_type, ParrotConfig, exist_ok=True)
AutoModel.register(ParrotConfig, ParrotModel, exist_ok=True)
AutoModelForImageTextToText.register(ParrotConfig, ParrotForConditionalGeneration, exist_ok=True)
if AutoModelForVision2Seq is not None:  # removed in transformers 5
    AutoModelForVision2Seq.register(ParrotConfig, ParrotForConditionalGeneration, exist_ok=True)
AutoProcessor.register(ParrotConfig, ParrotProcessor, exist_ok=True)
register_image_processor(ParrotConfig, ParrotImageProcessor)

# Remote code: `save_pretrained` copies the modeling/configuration/processing files and writes `auto_map`.
ParrotConfig.register_for_auto_class()
ParrotForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
ParrotModel.register_for_auto_class("AutoModel")
ParrotProcessor.register_for_auto_class("AutoProcessor")
ParrotImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "ParrotConfig",
    "ParrotPreTrainedModel",
    "ParrotModel",
    "ParrotForConditionalGeneration",
    "ParrotProcessor",
    "ParrotImageProcessor",
]
