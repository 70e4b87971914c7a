"""ParrotImageProcessor: LLaVA's pad-to-square CLIP preprocessing plus Parrot's image conversions, checked against an
independent reference; called directly, through ParrotProcessor and through AutoImageProcessor. Offline, CPU, fast.
Runs on transformers 5.x and 4.57."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

import transformers_parrot  # noqa: F401  (registers ParrotImageProcessor with AutoImageProcessor)
from transformers_parrot.assets import bundled_image
from transformers_parrot.models.parrot.image_processing_parrot import ParrotImageProcessor
from transformers_parrot.models.parrot.processing_parrot import ParrotProcessor

pytestmark = pytest.mark.compat  # image processing is part of the transformers 4.57 compatibility subset

SIDE = 30  # output side of the `processor` fixture's image processor
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def expected_pixels(image: Image.Image, side: int = SIDE) -> np.ndarray:
    """Independent reference: pad to a centred square with int(mean*255), resize to side (bicubic), CLIP normalise."""
    image = image.convert("RGB")
    w, h = image.size
    m = max(w, h)
    canvas = Image.new("RGB", (m, m), tuple(int(x * 255) for x in CLIP_MEAN))
    canvas.paste(image, ((m - w) // 2, (m - h) // 2))
    resized = canvas.resize((side, side), Image.BICUBIC)
    array = np.asarray(resized, dtype=np.float64) / 255.0
    array = (array - CLIP_MEAN) / CLIP_STD
    return array.transpose(2, 0, 1).astype(np.float32)


def test_bundled_image():
    a, b = bundled_image(), bundled_image()
    assert a.mode == "RGB" and a.size == (64, 48)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    pixels = np.asarray(a)
    assert tuple(pixels[24, 16]) == (220, 30, 30) and tuple(pixels[24, 48]) == (30, 60, 220)


# ---------------------------------------------------------------------------------------------- through the processor
def _mode_image(mode, size=(20, 12)):
    base = bundled_image(*size) if min(size) >= 4 else Image.new("RGB", size, (10, 200, 30))
    if mode == "I;16":
        array = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        image = Image.fromarray(array)
        assert image.mode == "I;16"
        return image
    if mode == "P_transparent":
        image = base.convert("P")
        image.info["transparency"] = 0
        return image
    return base.convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P_transparent", "RGBA", "CMYK", "1", "I;16", "I", "F", "RGB"])
def test_image_modes(processor, mode):
    image = _mode_image(mode)
    out = processor(images=[image], text="<image>", return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, SIDE, SIDE) and torch.isfinite(out["pixel_values"]).all()
    if mode in ("L", "LA", "I;16", "1"):  # grey modes become equal-channel RGB
        grey = Image.fromarray(np.asarray(_mode_image("L")), mode="L") if mode != "1" else image
        ref = expected_pixels(grey.convert("RGB"))
        np.testing.assert_allclose(out["pixel_values"][0].numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1), (3, 7), (7, 3)])
def test_degenerate_sizes(processor, size):
    image = Image.new("RGB", size, (10, 200, 30))
    out = processor(images=[image], text="<image>", return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, SIDE, SIDE)
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), expected_pixels(image), atol=1e-4)


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (33, 33), (200, 30)])
def test_pixels_match_independent_reference(processor, size):
    image = bundled_image(*size)
    out = processor(images=[image], text="<image>", return_tensors="pt")
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), expected_pixels(image), atol=1e-4)


def test_array_inputs_and_unsupported(processor):
    image = bundled_image()
    ref = processor(images=[image], text="<image>")["pixel_values"]
    hwc = np.asarray(image)
    for variant in (hwc, hwc.transpose(2, 0, 1), torch.from_numpy(hwc.copy()), hwc.astype(np.float32) / 255.0):
        out = processor(images=[variant], text="<image>")["pixel_values"]
        np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="unsupported image type"):
        processor(images=[object()], text="<image>")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        processor(images=[hwc.astype(np.float32)], text="<image>")
    with pytest.raises(ValueError, match="not an existing local image file"):
        processor(images=["/nonexistent/x.png"], text="<image>")
    with pytest.raises(ValueError, match="image 0 is None"):
        processor(images=[[None]], text=["<image>"])


def test_default_image_processor_is_clip336(tokenizer):
    processor = ParrotProcessor(tokenizer=tokenizer)
    assert processor.image_seq_length == 577
    ip = processor.image_processor
    assert ip.do_pad and ip.size["shortest_edge"] == 336 and ip.crop_size["height"] == 336
    out = processor(images=[bundled_image()], text="<image>", return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 336, 336)
    assert (out["input_ids"] == processor.image_token_id).sum() == 577
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), expected_pixels(bundled_image(), 336), atol=1e-4)


# ---------------------------------------------------------------------------------------------- called directly
def test_defaults_are_clip336_pad_to_square():
    image_processor = ParrotImageProcessor()
    assert image_processor.do_pad and image_processor.do_convert_rgb and image_processor.do_center_crop
    assert image_processor.size["shortest_edge"] == 336 and image_processor.crop_size["height"] == 336
    np.testing.assert_allclose(image_processor.image_mean, CLIP_MEAN)
    np.testing.assert_allclose(image_processor.image_std, CLIP_STD)
    out = image_processor(bundled_image(), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 336, 336)
    np.testing.assert_allclose(out[0].numpy(), expected_pixels(bundled_image(), 336), atol=1e-4)


def test_batches_nested_lists_and_explicit_channel_layout():
    image_processor = ParrotImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    a, b = bundled_image(), bundled_image(30, 50)
    flat = image_processor([a, b, a], return_tensors="pt")["pixel_values"]
    nested = image_processor([[a], [b, a]], return_tensors="pt")["pixel_values"]
    assert flat.shape == (3, 3, SIDE, SIDE) and torch.equal(flat, nested)
    np.testing.assert_allclose(flat[1].numpy(), expected_pixels(b), atol=1e-4)
    # a 4 x 3 x 3 array reads as HWC by default; said to be channels-first it is the transposed image
    hwc = np.asarray(bundled_image(3, 3))
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    as_chw = image_processor(chw, input_data_format="channels_first", return_tensors="np")["pixel_values"]
    as_hwc = image_processor(hwc, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(as_chw, as_hwc, atol=1e-6)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    ramp = (np.arange(12 * 20, dtype=np.uint32).reshape(12, 20) * 273).astype(np.uint16)  # 0 .. 65247
    image_processor = ParrotImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    out = image_processor(Image.fromarray(ramp), return_tensors="np")["pixel_values"][0]
    eight_bit = Image.fromarray(np.clip(np.rint(ramp / 257.0), 0, 255).astype(np.uint8), mode="L")
    np.testing.assert_allclose(out, expected_pixels(eight_bit), atol=1e-4)
    assert len(np.unique(np.round(out[0], 3))) > 20  # a plain 8-bit convert would saturate almost all of it


def test_auto_image_processor_loads_it_from_a_saved_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    nested = config.get("image_processor") or json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert nested["image_processor_type"] == "ParrotImageProcessor"
    assert nested["auto_map"]["AutoImageProcessor"] == "image_processing_parrot.ParrotImageProcessor"
    assert (tmp_path / "image_processing_parrot.py").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ParrotImageProcessor and loaded.crop_size["height"] == SIDE
    image = _mode_image("I;16")
    expected = processor(images=[image], text="<image>", return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(loaded(image, return_tensors="np")["pixel_values"], expected)
