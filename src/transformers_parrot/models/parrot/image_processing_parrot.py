# Copyright 2025 The transformers-parrot authors. Licensed under the Apache License, Version 2.0.
"""Image processor for Parrot (arXiv 2406.02539): transformers' LLaVA image processor (pad to a centred square with
the mean colour, then CLIP resize / crop / normalise) with the CLIP ViT-L/14-336 settings of the released checkpoints,
accepting more image forms than LLaVA's: PIL images in any mode (16/32-bit greyscale scaled, not clipped), HWC or
CHW arrays and tensors (integers in [0, 255], bool, or finite float in [0, 1]) and local file paths.

Published as Hub remote code: imports only numpy, PIL and transformers; works on transformers 4.57 and 5.x.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from ._compat import llava_image_processor_class

CLIP_336_PAD_TO_SQUARE: dict[str, Any] = {
    "do_pad": True,
    "size": {"shortest_edge": 336},
    "crop_size": {"height": 336, "width": 336},
    "resample": 3,  # bicubic
    "do_center_crop": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
}


def to_pil_rgb(image: Any, where: str, channels_first: bool | None = None) -> Image.Image:
    """One image (PIL in any mode, HWC/CHW uint8 or [0, 1] float array or tensor, local path) as a PIL RGB image.

    `channels_first` says how a 3-D array is laid out; None guesses it from which axis has 1, 3 or 4 entries.
    """
    if image is None:
        raise ValueError(f"{where} is None")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"{where}: {image!r} is not an existing local image file")
        with Image.open(image) as opened:
            opened.load()
            image = opened.copy()
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"{where}: empty image of size {image.size}")
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            # 16/32-bit grey: scale to 8 bits (PIL's convert would clip everything above 255 to white)
            grey = np.asarray(image, dtype=np.float64)
            if not np.isfinite(grey).all() or grey.min() < 0:
                raise ValueError(f"{where}: a mode {image.mode} image must hold finite, non-negative values")
            if image.mode.startswith("I;16"):
                grey = grey / 257.0
            elif grey.max() > 255:
                grey = grey * (255.0 / grey.max())
            return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L").convert("RGB")
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode == "La":  # premultiplied grey + alpha: PIL converts it only as RGBa
            grey, alpha = image.split()
            image = Image.merge("RGBa", (grey, grey, grey, alpha))
        if image.mode == "RGB":
            return image
        try:
            return image.convert("RGB")  # alpha is dropped, as in the original
        except ValueError as error:
            raise ValueError(f"{where}: cannot convert a mode {image.mode} image to RGB ({error})") from None
    if type(image).__name__ == "Tensor":
        image = image.detach().cpu().float().numpy() if image.is_floating_point() else image.cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{where}: unsupported image type {type(image).__name__}; pass a PIL image, a numpy array or torch tensor "
            "(HWC or CHW, uint8 or float in [0, 1]) or a local file path"
        )
    if image.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: unsupported image array dtype {image.dtype}; use uint8, another integer type "
            "with values in [0, 255], bool, or float in [0, 1]"
        )
    if image.dtype.kind == "b":
        image = image.astype(np.uint8) * 255
    array = image[:, :, None] if image.ndim == 2 else image
    if array.ndim != 3:
        raise ValueError(f"{where}: image arrays must be 2-D or 3-D, got shape {image.shape}")
    if channels_first is None or image.ndim == 2:
        channels_first = array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4)
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: cannot find the channel axis of an image array of shape {image.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{where}: empty image of shape {image.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{where}: float image arrays must hold finite values in [0, 1]")
        array = np.rint(array * 255)
    elif array.dtype != np.uint8 and array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{where}: integer image arrays must hold values in [0, 255]")
    array = array.astype(np.uint8)
    rgb = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def _flatten(images: Any) -> list:
    """A list of images from one image, a list, a list of per-sample lists or a 4-D batch array/tensor."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in (_flatten(item) if isinstance(item, (list, tuple)) else [item])]
    if getattr(images, "ndim", 0) == 4:
        return list(images)
    return [images]


class ParrotImageProcessor(llava_image_processor_class()):
    r"""
    transformers' LLaVA image processor (pad to square, then CLIP) with Parrot's CLIP ViT-L/14-336 defaults; keyword
    arguments override them (e.g. ``size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}``).

    Every input image is first converted to 8-bit RGB (see `to_pil_rgb`), so ``pixel_values`` always have shape
    ``(num_images, 3, crop_height, crop_width)``, in the order the images come (nested per-sample lists flattened).
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**{**CLIP_336_PAD_TO_SQUARE, **kwargs})

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):
        layout = kwargs.get("input_data_format")
        channels_first = None if layout is None else str(getattr(layout, "value", layout)) == "channels_first"
        images = [to_pil_rgb(image, f"image {index}", channels_first) for index, image in enumerate(_flatten(images))]
        if not images:
            raise ValueError("no images given (an empty list)")
        # channels_last is explicit: inferring it fails for 1-pixel-high/wide images (shape (1, W, 3) looks CHW)
        return super().preprocess(images, *args, **{**kwargs, "input_data_format": "channels_last"})


__all__ = ["ParrotImageProcessor", "CLIP_336_PAD_TO_SQUARE", "to_pil_rgb"]
