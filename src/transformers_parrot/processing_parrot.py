# Copyright 2025 The transformers-parrot authors. Licensed under the Apache License, Version 2.0.
"""Processor for Parrot (arXiv 2406.02539): a LLaVA-style multilingual vision-language model.

Published as Hub remote code: this file imports only torch/numpy/PIL/transformers and works on transformers 4.57
and 5.x.

One ``<image>`` placeholder in the text stands for one image. The text is tokenized *unexpanded* (``<image>`` is a
single special token), then every placeholder id is repeated ``image_seq_length`` times (577 for CLIP ViT-L/14-336
with its CLS token). Offsets of the copies all point at the placeholder's characters, so ``offset_mapping`` keeps
mapping onto the rendered (unexpanded) text: that is what keeps assistant-token masks right.

Images are converted to RGB, padded to a centred square with the image-processor mean colour and then CLIP
preprocessed (transformers' ``LlavaImageProcessor`` with ``do_pad=True``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from ._compat import ProcessorPartsAttributes, llava_image_processor_class, make_processor_files_portable

IMAGE_TOKEN = "<image>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_IMAGE_SEQ_LENGTH = 577

# ChatML. Images of a turn render as "<image>\n" (one per image) before the turn's text; assistant answers and their
# <|im_end|> are generation blocks (return_assistant_tokens_mask); the newline after <|im_end|> is not.
DEFAULT_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system=false) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = true -%}{%- endif -%}"
    "{%- if not ns.system -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set c = namespace(images='', text='') -%}"
    "{%- if message['content'] is string -%}"
    "{%- set c.text = message['content'] -%}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or item['type'] == 'image_url' -%}"
    "{%- set c.images = c.images + '<image>\\n' -%}"
    "{%- elif item['type'] == 'text' -%}"
    "{%- set c.text = c.text + item['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- c.images + c.text + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- c.images + c.text + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# image-processor keyword arguments accepted by __call__ and forwarded to the image processor
_IMAGE_KWARGS = {
    "do_pad", "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb",
}
# keyword arguments that transformers' apply_chat_template may pass and that have no meaning here
_IGNORED_KWARGS = {"return_text_replacement_offsets", "return_mm_token_type_ids", "videos_kwargs", "audio_kwargs",
                   "do_sample_frames", "sampling_rate"}
_TRUNCATION_OFF = (None, False, "do_not_truncate")


def default_image_processor(**overrides):
    """LLaVA/CLIP-336 image processor with pad-to-square, as the released Parrot checkpoints use; keyword arguments
    override settings (e.g. ``size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}`` for tests)."""
    settings = dict(
        do_pad=True,
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        resample=3,  # bicubic
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    settings.update(overrides)
    return llava_image_processor_class()(**settings)


def _to_pil_rgb(image, where: str) -> Image.Image:
    """Any supported image (PIL in any mode, HWC/CHW uint8 or float array/tensor, local path) → PIL RGB."""
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"{where}: {image!r} is not an existing local image file")
        with Image.open(image) as opened:
            opened.load()
            image = opened.copy()
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"{where}: empty image of size {image.size}")
        mode = image.mode
        if mode == "RGB":
            return image
        if mode.startswith("I;16") or mode in ("I", "F"):
            # 16/32-bit grey: scale to 8 bits (a plain PIL convert would clip everything above 255 to white)
            array = np.asarray(image, dtype=np.float64)
            if mode.startswith("I;16"):
                array = array / 257.0
            elif array.size and array.max() > 255:
                array = array * (255.0 / array.max())
            grey = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
            return grey.convert("RGB")
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        # 1, L, LA, P, RGBA, CMYK, YCbCr, ...: alpha is dropped as in the original (PIL convert)
        return image.convert("RGB")
    try:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy() if image.is_floating_point() else image.cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise ValueError(f"{where}: image arrays must be 2-D or 3-D, got shape {array.shape}")
        if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # CHW → HWC
        if array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{where}: cannot find the channel axis of an image array of shape {image.shape}")
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"{where}: empty image of shape {image.shape}")
        if np.issubdtype(array.dtype, np.floating):
            if array.size and (array.min() < 0 or array.max() > 1):
                raise ValueError(f"{where}: float image arrays must hold values in [0, 1]")
            array = np.rint(array * 255)
        elif array.dtype != np.uint8:
            if array.size and (array.min() < 0 or array.max() > 255):
                raise ValueError(f"{where}: integer image arrays must hold values in [0, 255]")
        array = array.astype(np.uint8)
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        elif array.shape[-1] == 4:
            array = array[..., :3]
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    raise ValueError(
        f"{where}: unsupported image type {type(image).__name__}; pass a PIL image, a numpy array or torch tensor "
        "(HWC or CHW, uint8 or float in [0, 1]) or a local file path"
    )


def _is_image_like(obj) -> bool:
    if isinstance(obj, (Image.Image, str, os.PathLike, np.ndarray)):
        return True
    return type(obj).__name__ == "Tensor"


class ParrotProcessor(ProcessorPartsAttributes, ProcessorMixin):
    r"""
    Builds Parrot inputs: token ids with each ``<image>`` expanded to ``image_seq_length`` image tokens, an attention
    mask and (when images are given) ``pixel_values`` of shape ``(num_images, 3, H, W)``.

    Args:
        image_processor: a LLaVA image processor (pad to square + CLIP); defaults to CLIP ViT-L/14-336 settings.
        tokenizer: a Qwen2 (ChatML) fast tokenizer with ``<image>``, ``<|im_start|>`` and ``<|im_end|>`` as tokens.
        chat_template: Jinja chat template; defaults to Parrot's ChatML template.
        image_seq_length: number of visual tokens per image (577 = CLS + 24×24 patches for ViT-L/14 at 336 px).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None,
                 image_seq_length: int = DEFAULT_IMAGE_SEQ_LENGTH, **kwargs):
        if tokenizer is None:
            raise ValueError("ParrotProcessor needs a tokenizer (a Qwen2 fast tokenizer with an <image> token)")
        if image_processor is None:
            image_processor = default_image_processor()
        if int(image_seq_length) < 1:
            raise ValueError(f"image_seq_length must be a positive integer, got {image_seq_length}")
        self.image_seq_length = int(image_seq_length)
        _validate_tokenizer(tokenizer)
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def image_token(self) -> str:
        return IMAGE_TOKEN

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def assistant_header_ids(self) -> list[int]:
        """Token ids of ``<|im_start|>assistant\\n``: where every answer starts (the model config needs them)."""
        return list(self.tokenizer.encode(IM_START + "assistant\n", add_special_tokens=False))

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    # ------------------------------------------------------------------ main entry point
    def __call__(self, images=None, text=None, videos=None, audio=None, return_tensors=None, padding=False,
                 padding_side=None, truncation=None, max_length=None, pad_to_multiple_of=None,
                 return_offsets_mapping=False, add_special_tokens=True, return_attention_mask=True, **kwargs):
        if videos is not None or audio is not None:
            raise ValueError("ParrotProcessor handles images and text only (got videos/audio)")
        # 5.x-style grouped kwargs (text_kwargs=..., images_kwargs=..., common_kwargs=...): flattened; they only
        # fill arguments the call left at their defaults
        grouped = {}
        for group in ("text_kwargs", "images_kwargs", "common_kwargs"):
            grouped.update(kwargs.pop(group, None) or {})
        if grouped:
            return_tensors = grouped.pop("return_tensors", None) if return_tensors is None else return_tensors
            padding = grouped.pop("padding", padding) if padding is False else padding
            padding_side = grouped.pop("padding_side", None) if padding_side is None else padding_side
            truncation = grouped.pop("truncation", None) if truncation is None else truncation
            max_length = grouped.pop("max_length", None) if max_length is None else max_length
            if pad_to_multiple_of is None:
                pad_to_multiple_of = grouped.pop("pad_to_multiple_of", None)
            return_offsets_mapping = return_offsets_mapping or grouped.pop("return_offsets_mapping", False)
            add_special_tokens = grouped.pop("add_special_tokens", add_special_tokens)
            return_attention_mask = grouped.pop("return_attention_mask", return_attention_mask)
            for key, value in grouped.items():
                kwargs.setdefault(key, value)
        for key in _IGNORED_KWARGS:
            kwargs.pop(key, None)
        image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _IMAGE_KWARGS}

        if text is None:
            raise ValueError("ParrotProcessor needs `text` (with one <image> placeholder per image)")
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            texts = list(text)
        else:
            raise ValueError("`text` must be a string or a list of strings")
        if not texts:
            raise ValueError("`text` is an empty list")

        encoding = self.tokenizer(
            texts, add_special_tokens=add_special_tokens, return_offsets_mapping=return_offsets_mapping,
            padding=False, truncation=False, return_attention_mask=False, **kwargs,
        )
        ids_per_sample = [np.asarray(ids, dtype=np.int64) for ids in encoding["input_ids"]]
        image_token_id = self.image_token_id
        counts = [int((ids == image_token_id).sum()) for ids in ids_per_sample]
        per_sample_images = self._split_images(images, counts)

        # expand placeholders (vectorised: np.repeat over the per-token repeat counts)
        input_ids, offsets = [], []
        for i, ids in enumerate(ids_per_sample):
            repeats = np.where(ids == image_token_id, self.image_seq_length, 1)
            input_ids.append(np.repeat(ids, repeats))
            if return_offsets_mapping:
                offs = np.asarray(encoding["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
                offsets.append(np.repeat(offs, repeats, axis=0))

        # truncation (never into image tokens)
        if truncation not in _TRUNCATION_OFF:
            limit = max_length
            if limit is None:
                limit = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 1e9 else None
            if limit is not None:
                side = getattr(self.tokenizer, "truncation_side", "right")
                for i, ids in enumerate(input_ids):
                    if len(ids) <= limit:
                        continue
                    kept = slice(0, limit) if side == "right" else slice(len(ids) - limit, len(ids))
                    if int((ids[kept] == image_token_id).sum()) != counts[i] * self.image_seq_length:
                        raise ValueError(
                            f"Sample {i} has {len(ids)} tokens after expanding its {counts[i]} image(s) to "
                            f"{self.image_seq_length} tokens each; truncating it to max_length={limit} would cut "
                            "image tokens. Raise max_length, shorten the text or use fewer images."
                        )
                    input_ids[i] = ids[kept]
                    if return_offsets_mapping:
                        offsets[i] = offsets[i][kept]

        # padding
        lengths = [len(ids) for ids in input_ids]
        target = None
        if padding is True or padding == "longest":
            target = max(lengths)
        elif padding == "max_length":
            target = max_length if max_length is not None else self.tokenizer.model_max_length
            target = max(target, max(lengths))
        elif padding not in (False, None, "do_not_pad"):
            raise ValueError(f"Unknown padding strategy {padding!r}")
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        side = padding_side or getattr(self.tokenizer, "padding_side", "right")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        attention_mask = [np.ones(n, dtype=np.int64) for n in lengths]
        if target is not None and any(n < target for n in lengths):
            pad_id = self.tokenizer.pad_token_id
            if pad_id is None:
                raise ValueError("Padding needs tokenizer.pad_token (Parrot uses <|endoftext|>)")
            for i, n in enumerate(lengths):
                width = target - n
                if width == 0:
                    continue
                before, after = (width, 0) if side == "left" else (0, width)
                input_ids[i] = np.pad(input_ids[i], (before, after), constant_values=pad_id)
                attention_mask[i] = np.pad(attention_mask[i], (before, after), constant_values=0)
                if return_offsets_mapping:
                    offsets[i] = np.pad(offsets[i], ((before, after), (0, 0)), constant_values=0)
        if return_tensors is not None and len(set(len(ids) for ids in input_ids)) > 1:
            raise ValueError(
                f"Samples have different lengths {sorted(set(len(ids) for ids in input_ids))}; pass padding=True "
                "to return tensors"
            )

        data = {"input_ids": [ids.tolist() for ids in input_ids]}
        if return_attention_mask:
            data["attention_mask"] = [mask.tolist() for mask in attention_mask]
        if return_offsets_mapping:
            data["offset_mapping"] = [[tuple(pair) for pair in offs.tolist()] for offs in offsets]
        flat_images = [image for sample in per_sample_images for image in sample]
        if flat_images:
            data["pixel_values"] = self._preprocess_images(per_sample_images, image_kwargs)
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ helpers
    def _split_images(self, images, counts: list[int]) -> list[list]:
        """Match images to placeholders: returns one list of images per sample."""
        total = sum(counts)
        if images is None:
            if total:
                per = ", ".join(f"sample {i}: {c}" for i, c in enumerate(counts) if c)
                raise ValueError(f"The text has {total} <image> placeholder(s) ({per}) but no images were given")
            return [[] for _ in counts]
        if _is_image_like(images):
            arr_batch = type(images).__name__ in ("ndarray", "Tensor") and getattr(images, "ndim", 0) == 4
            images = list(images) if arr_batch else [images]
        if not isinstance(images, (list, tuple)):
            raise ValueError(f"unsupported `images` type {type(images).__name__}")
        nested = any(isinstance(item, (list, tuple)) for item in images)
        if nested:
            if len(images) != len(counts):
                raise ValueError(
                    f"Got images for {len(images)} samples (nested list) but {len(counts)} text(s)"
                )
            per_sample = []
            for i, (sample, count) in enumerate(zip(images, counts)):
                sample = list(sample) if isinstance(sample, (list, tuple)) else [sample]
                if len(sample) != count:
                    raise ValueError(
                        f"Sample {i}: {count} <image> placeholder(s) in the text but {len(sample)} image(s) given"
                    )
                per_sample.append(sample)
        else:
            images = list(images)
            if len(images) != total:
                detail = ", ".join(f"sample {i}: {c}" for i, c in enumerate(counts))
                if total == 0:
                    raise ValueError(
                        f"Got {len(images)} image(s) but the text has no <image> placeholder; put one <image> in "
                        "the text per image (the chat template does this for {'type': 'image'} items)"
                    )
                raise ValueError(
                    f"Got {len(images)} image(s) but the text has {total} <image> placeholder(s) ({detail})"
                )
            per_sample, start = [], 0
            for count in counts:
                per_sample.append(images[start:start + count])
                start += count
        for i, sample in enumerate(per_sample):
            for j, image in enumerate(sample):
                if image is None:
                    raise ValueError(f"Sample {i}: image {j} is None")
        return per_sample

    def _preprocess_images(self, per_sample_images, image_kwargs):
        pil_images = [_to_pil_rgb(image, where=f"sample {i}, image {j}")
                      for i, sample in enumerate(per_sample_images) for j, image in enumerate(sample)]
        # channels_last is explicit: inferring it fails for 1-pixel-high/wide images (shape (1, W, 3) looks CHW)
        out = self.image_processor(pil_images, return_tensors="np", input_data_format="channels_last",
                                   **image_kwargs)
        return np.asarray(out["pixel_values"], dtype=np.float32)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Decode generated ids (2-D, or 1-D for one sequence) into strings."""
        if getattr(generated_outputs, "ndim", 2) == 1 or (
            isinstance(generated_outputs, list) and generated_outputs and isinstance(generated_outputs[0], int)
        ):
            generated_outputs = [generated_outputs]
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    def apply_chat_template(self, conversation, *args, **kwargs):
        """transformers' ``apply_chat_template``, after turning string contents into ``[{"type": "text", ...}]``
        (transformers 4.57 needs list contents to tokenize; the rendered text is the same)."""
        return super().apply_chat_template(_listify_contents(conversation), *args, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        make_processor_files_portable(Path(save_directory))
        return result


def _listify_contents(conversation):
    def fix(message):
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return {**message, "content": [{"type": "text", "text": message["content"]}]}
        return message

    if isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], (list, tuple)):
        return [[fix(m) for m in conv] for conv in conversation]
    if isinstance(conversation, (list, tuple)):
        return [fix(m) for m in conversation]
    return conversation


def _validate_tokenizer(tokenizer):
    missing = []
    vocab = tokenizer.get_vocab()
    for token in (IMAGE_TOKEN, IM_START, IM_END):
        token_id = vocab.get(token)
        if token_id is None or list(tokenizer.encode(token, add_special_tokens=False)) != [token_id]:
            missing.append(token)
    if missing:
        raise ValueError(
            f"The tokenizer must encode {missing} as single tokens. Add them with "
            f"`tokenizer.add_tokens({missing}, special_tokens=True)` (and resize the model's input embeddings if "
            "the new ids fall outside them)."
        )


__all__ = ["ParrotProcessor", "DEFAULT_CHAT_TEMPLATE", "default_image_processor"]
