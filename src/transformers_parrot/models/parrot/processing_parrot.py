# Copyright 2025 The transformers-parrot authors. Licensed under the Apache License, Version 2.0.
"""Processor for Parrot (arXiv 2406.02539): a LLaVA-style multilingual vision-language model.

Published as Hub remote code: this file imports only numpy and transformers and works on transformers 4.57 and 5.x.

One ``<image>`` placeholder in the text stands for one image. Unlike LLaVA's processor, which repeats the placeholder
in the text, Parrot tokenizes the text *unexpanded* (``<image>`` is a single special token) and then repeats every
placeholder id ``image_seq_length`` times (577 for CLIP ViT-L/14-336 with its CLS token). The offsets of the copies
all point at the placeholder's characters, so ``offset_mapping`` keeps mapping onto the rendered (unexpanded) text:
that keeps assistant-token masks right on every release (4.57's apply_chat_template maps offsets as they are).
Truncation never cuts into image tokens. Images go through `ParrotImageProcessor` (pad to square + CLIP).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs

from ._compat import ImageTextProcessorMixin, make_processor_files_portable
from .image_processing_parrot import ParrotImageProcessor

IMAGE_TOKEN = "<image>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # also written in chat_template.jinja
DEFAULT_IMAGE_SEQ_LENGTH = 577

# The ChatML template ships next to this module (and is saved as chat_template.jinja with every processor). In Hub
# remote code only the .py files are copied: there the template comes from the saved folder instead.
_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")
DEFAULT_CHAT_TEMPLATE: str | None = _TEMPLATE_FILE.read_text(encoding="utf-8") if _TEMPLATE_FILE.is_file() else None

# What transformers' apply_chat_template may ask for and Parrot does not produce: the placeholders are expanded at
# the id level, so offsets already map onto the unexpanded text and there are no text replacements to report.
_NOT_PRODUCED = ("return_text_replacement_offsets", "return_mm_token_type_ids")


def default_image_processor(**overrides) -> ParrotImageProcessor:
    """`ParrotImageProcessor` with the CLIP ViT-L/14-336 settings, `overrides` replacing some of them."""
    return ParrotImageProcessor(**overrides)


class ParrotProcessor(ImageTextProcessorMixin):
    r"""
    Builds Parrot inputs: token ids with each ``<image>`` expanded to ``image_seq_length`` image tokens, an attention
    mask and (when images are given) ``pixel_values`` of shape ``(num_images, 3, H, W)``.

    Args:
        image_processor: a `ParrotImageProcessor` (or any LLaVA-style one); defaults to CLIP ViT-L/14-336 settings.
        tokenizer: a Qwen2 (ChatML) fast tokenizer with ``<image>``, ``<|im_start|>`` and ``<|im_end|>`` as tokens.
        chat_template: Jinja chat template; defaults to Parrot's ChatML template (``chat_template.jinja``).
        image_seq_length: number of visual tokens per image (577 = CLS + 24×24 patches for ViT-L/14 at 336 px).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_seq_length: int = DEFAULT_IMAGE_SEQ_LENGTH,
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("ParrotProcessor needs a tokenizer (a Qwen2 fast tokenizer with an <image> token)")
        if int(image_seq_length) < 1:
            raise ValueError(f"image_seq_length must be a positive integer, got {image_seq_length}")
        _validate_tokenizer(tokenizer)
        self.image_seq_length = int(image_seq_length)
        self.image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        super().__init__(
            image_processor if image_processor is not None else ParrotImageProcessor(),
            tokenizer,
            chat_template=chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE,
            **kwargs,
        )

    @property
    def assistant_header_ids(self) -> list[int]:
        """Token ids of ``<|im_start|>assistant\\n``: where every answer starts (the model config needs them)."""
        return list(self.tokenizer.encode(IM_START + "assistant\n", add_special_tokens=False))

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    def __call__(
        self, images: ImageInput | None = None, text: str | list[str] | None = None, **kwargs
    ) -> BatchFeature:
        """Tokenize `text` (one ``<image>`` per image), expand the placeholders and preprocess `images` (one list per
        sample, or flat in placeholder order). Keyword arguments are transformers' `ProcessingKwargs`: flat or grouped
        (``text_kwargs=``, ``images_kwargs=``, ``common_kwargs=``), merged with the tokenizer's own defaults."""
        for modality in ("videos", "audio"):
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"ParrotProcessor handles images and text only (got {modality})")
        if text is None:
            raise ValueError("ParrotProcessor needs `text` (with one <image> placeholder per image)")
        texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"`text` must be a string or a non-empty list of strings, got {type(text).__name__}")
        merged = self._merge_kwargs(ProcessingKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = merged["text_kwargs"]
        images_kwargs = {**merged["images_kwargs"], "return_tensors": None}
        return_tensors = text_kwargs.pop("return_tensors", None)
        padding = {
            key: text_kwargs.pop(key, None)
            for key in ("padding", "max_length", "pad_to_multiple_of", "padding_side", "return_attention_mask")
        }
        truncation = text_kwargs.pop("truncation", None)
        for key in _NOT_PRODUCED:
            text_kwargs.pop(key, None)

        encoding = self.tokenizer(texts, **text_kwargs, return_attention_mask=False)
        counts = [ids.count(self.image_token_id) for ids in encoding["input_ids"]]
        flat_images = self._images_per_sample(images, counts)
        encoding = self._expand_image_tokens(encoding)
        if truncation not in (None, False, "do_not_truncate"):
            self._truncate(encoding, padding["max_length"], counts)
        offsets = encoding.pop("offset_mapping", None)
        pad_to = padding["max_length"] if padding["padding"] == "max_length" else None  # else only for truncation
        encoding = self.tokenizer.pad(
            encoding,
            padding=padding["padding"] or False,
            max_length=pad_to,
            pad_to_multiple_of=padding["pad_to_multiple_of"],
            padding_side=padding["padding_side"],
            return_attention_mask=padding["return_attention_mask"],
        )
        data = dict(encoding)
        if offsets is not None:  # padding positions get (0, 0), as the tokenizer gives special tokens
            data["offset_mapping"] = [
                _pad_like(offs, ids, padding["padding_side"] or self.tokenizer.padding_side)
                for offs, ids in zip(offsets, data["input_ids"])
            ]
        if flat_images:
            pixel_values = self.image_processor(flat_images, **images_kwargs)["pixel_values"]
            data["pixel_values"] = np.stack([np.asarray(p, dtype=np.float32) for p in pixel_values])
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _images_per_sample(self, images, counts: list[int]) -> list:
        """Check that every sample has one image per placeholder; return the images flat, in placeholder order."""
        total = sum(counts)
        if images is None:
            if total:
                per = ", ".join(f"sample {i}: {c}" for i, c in enumerate(counts) if c)
                raise ValueError(f"The text has {total} <image> placeholder(s) ({per}) but no images were given")
            return []
        if not isinstance(images, (list, tuple)):
            images = list(images) if getattr(images, "ndim", 0) == 4 else [images]
        if any(isinstance(sample, (list, tuple)) for sample in images):
            if len(images) != len(counts):
                raise ValueError(f"Got images for {len(images)} samples (nested list) but {len(counts)} text(s)")
            per_sample = [list(s) if isinstance(s, (list, tuple)) else [s] for s in images]
            for i, (sample, count) in enumerate(zip(per_sample, counts)):
                if len(sample) != count:
                    raise ValueError(
                        f"Sample {i}: {count} <image> placeholder(s) in the text but {len(sample)} image(s) given"
                    )
            return [image for sample in per_sample for image in sample]
        if len(images) != total:
            if total == 0:
                raise ValueError(
                    f"Got {len(images)} image(s) but the text has no <image> placeholder; put one <image> "
                    "in the text per image (the chat template does this for {'type': 'image'} items)"
                )
            detail = ", ".join(f"sample {i}: {c}" for i, c in enumerate(counts))
            raise ValueError(f"Got {len(images)} image(s) but the text has {total} <image> placeholder(s) ({detail})")
        return list(images)

    def _expand_image_tokens(self, encoding) -> dict[str, list]:
        """Repeat every ``<image>`` id (and its offsets, token type, ...) `image_seq_length` times."""
        repeats = [
            np.where(np.asarray(ids) == self.image_token_id, self.image_seq_length, 1) for ids in encoding["input_ids"]
        ]
        return {
            key: [
                np.repeat(np.asarray(row), n, axis=0).tolist() if isinstance(row, list) else row
                for row, n in zip(rows, repeats)
            ]
            for key, rows in encoding.items()
        }

    def _truncate(self, encoding: dict[str, list], max_length: int | None, counts: list[int]) -> None:
        """Truncate on the tokenizer's side to `max_length` (or `model_max_length`), refusing to cut image tokens."""
        limit = max_length if max_length is not None else self.tokenizer.model_max_length
        if limit is None or limit >= 1e9:  # the tokenizer's "no limit"
            return
        keep_end = self.tokenizer.truncation_side == "left"
        for i, ids in enumerate(encoding["input_ids"]):
            if len(ids) <= limit:
                continue
            kept = slice(len(ids) - limit, None) if keep_end else slice(0, limit)
            if ids[kept].count(self.image_token_id) != counts[i] * self.image_seq_length:
                raise ValueError(
                    f"Sample {i} has {len(ids)} tokens after expanding its {counts[i]} image(s) to "
                    f"{self.image_seq_length} tokens each; truncating it to max_length={limit} would cut image "
                    "tokens. Raise max_length, shorten the text or use fewer images."
                )
            for rows in encoding.values():
                rows[i] = rows[i][kept]

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        # saving a remote-code class sets `auto_map` on the object itself; it belongs to the saved files only
        self.__dict__.pop("auto_map", None)
        make_processor_files_portable(Path(save_directory))
        return result


def _pad_like(offsets: list, ids: list, side: str) -> list:
    width = len(ids) - len(offsets)
    padding = [(0, 0)] * width
    return padding + [tuple(o) for o in offsets] if side == "left" else [tuple(o) for o in offsets] + padding


def _validate_tokenizer(tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    missing = [
        token
        for token in (IMAGE_TOKEN, IM_START, IM_END)
        if vocab.get(token) is None or list(tokenizer.encode(token, add_special_tokens=False)) != [vocab[token]]
    ]
    if missing:
        raise ValueError(
            f"The tokenizer must encode {missing} as single tokens. Add them with "
            f"`tokenizer.add_tokens({missing}, special_tokens=True)` (and resize the model's input embeddings if "
            "the new ids fall outside them)."
        )


__all__ = ["ParrotProcessor", "DEFAULT_CHAT_TEMPLATE", "default_image_processor"]
