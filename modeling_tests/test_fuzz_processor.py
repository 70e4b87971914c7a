"""Property-based tests (hypothesis) of `ParrotImageProcessor` and `ParrotProcessor`: odd PIL modes, tiny and thin
sizes, numpy arrays of many dtypes, shapes and value ranges, `<image>` counts against the number of images, long and
empty texts. Every input gives a result that equals an independent computation, or a ValueError/TypeError naming the
problem; never an error from deep inside PIL/numpy/torch and never a silently wrong picture.

Deterministic: `derandomize=True`, bounded `max_examples`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fixtures import make_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_image_processing import SIDE, expected_pixels

from transformers_parrot.models.parrot.image_processing_parrot import to_pil_rgb

FUZZ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLEAR_ERRORS = (ValueError, TypeError)

sizes = st.tuples(st.integers(1, 48), st.integers(1, 48)) | st.sampled_from([(1, 300), (300, 1), (2, 1), (1, 2)])


def _call(processor, **kwargs):
    """The processor's output, or the clear error it raised; numpy/PIL warnings count as failures."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        try:
            return processor(**kwargs)
        except CLEAR_ERRORS as error:
            return error


def _assert_pixels(processor, pixels: np.ndarray, expected: Image.Image) -> None:
    """`pixels` (3, SIDE, SIDE) are those of the RGB image `expected`: exactly what the processor gives for that
    image (so the conversion is right), and close to the independent reference (bicubic resampling of a few-pixel
    side rounds differently by up to 2 grey levels)."""
    np.testing.assert_array_equal(pixels, processor(images=[expected], text="<image>")["pixel_values"][0])
    np.testing.assert_allclose(pixels, expected_pixels(expected), atol=0.04)


def _assert_clear(result, *words: str) -> None:
    assert isinstance(result, CLEAR_ERRORS), f"expected a clear error, got {type(result).__name__}"
    message = str(result)
    assert type(result).__module__ == "builtins" and message, repr(result)
    assert "image" in message.lower() or "text" in message.lower(), message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------------------------------------- arrays
ARRAY_DTYPES = [
    "uint8",
    "uint16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "bool",
    "complex64",
    "<U1",
    "object",
]


@st.composite
def image_arrays(draw):
    """(array, expected 8-bit RGB HWC array or None when the array must be refused)."""
    w, h = draw(sizes)
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    shape = (h, w) if channels is None else (h, w, channels)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 256, size=shape)
    kind = draw(st.sampled_from(["in_range", "out_of_range", "non_finite"]))
    valid = dtype.kind in "biuf"
    if dtype.kind == "f":
        array = (values / 255.0).astype(dtype)
        if kind == "out_of_range":
            array.flat[rng.integers(array.size)] = draw(st.sampled_from([-0.5, 1.5, 300.0]))
            valid = False
        elif kind == "non_finite":
            array.flat[rng.integers(array.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            valid = False
        eight_bit = np.rint(array.astype(np.float64) * 255).astype(np.uint8) if valid else None
    elif dtype.kind == "b":
        array = values >= 128
        eight_bit = array.astype(np.uint8) * 255
    elif dtype.kind in "iu":
        array = values.astype(dtype)
        if kind == "out_of_range":
            array.flat[rng.integers(array.size)] = 256 if dtype.itemsize > 1 else 255
            valid = dtype.itemsize == 1  # 255 is still in range for uint8
        eight_bit = values.astype(np.uint8) if valid else None
    else:
        array = values.astype(dtype)
        eight_bit = None
    layout = draw(st.sampled_from(["hwc", "chw"])) if channels is not None else "hwc"
    if layout == "chw":
        array = np.moveaxis(array, -1, 0)
    # the documented guess: the channel axis is the last one unless only the first has 1, 3 or 4 entries
    if channels is not None:
        guessed_chw = array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4)
        if guessed_chw != (layout == "chw"):
            return array, "ambiguous"
    if not valid:
        return array, None
    grey_or_rgb = eight_bit if eight_bit.ndim == 3 else eight_bit[:, :, None]
    rgb = np.repeat(grey_or_rgb, 3, axis=-1) if grey_or_rgb.shape[-1] == 1 else grey_or_rgb[..., :3]
    return array, np.ascontiguousarray(rgb)


@FUZZ
@given(case=image_arrays())
def test_arrays_give_the_right_pixels_or_a_clear_error(processor, case):
    array, expected = case
    result = _call(processor, images=[array], text="<image>", return_tensors="np")
    if isinstance(expected, str):  # an axis order the guess cannot tell: any clear outcome, finite pixels
        assert isinstance(result, CLEAR_ERRORS) or np.isfinite(result["pixel_values"]).all()
        return
    if expected is None:
        _assert_clear(result, "image 0")
        return
    assert not isinstance(result, Exception), result
    pixels = result["pixel_values"]
    assert pixels.shape == (1, 3, SIDE, SIDE)
    _assert_pixels(processor, pixels[0], Image.fromarray(expected, "RGB"))


# ---------------------------------------------------------------------------------------------- PIL modes
PLAIN_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA", "RGBa", "La", "HSV", "LAB"]
WIDE_MODES = ["I;16", "I;16B", "I", "F"]


@st.composite
def pil_images(draw):
    """(image, expected RGB PIL image or None when it must be refused)."""
    w, h = draw(sizes)
    mode = draw(st.sampled_from(PLAIN_MODES + WIDE_MODES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if mode in PLAIN_MODES:
        image = make_image(int(rng.integers(1000)), (w, h)).convert("RGBA" if mode in ("La", "RGBa") else mode)
        if mode == "La":
            image = Image.merge("La", (image.convert("L"), image.getchannel("A")))
            grey, alpha = image.split()
            return image, Image.merge("RGBa", (grey, grey, grey, alpha)).convert("RGB")
        if mode == "RGBa":
            image = image.convert("RGBa")
        if mode == "P" and draw(st.booleans()):
            image.info["transparency"] = 0
            return image, image.convert("RGBA").convert("RGB")
        return image, image.convert("RGB")
    bad = draw(st.sampled_from([None, None, "negative", "nan"]))
    if mode.startswith("I;16"):
        grey = rng.integers(0, 65536, size=(h, w)).astype(np.uint16)
        image = Image.fromarray(grey, "I;16").convert(mode) if mode != "I;16" else Image.fromarray(grey, "I;16")
        eight = np.rint(grey / 257.0)
        bad = None
    else:
        top = draw(st.sampled_from([200, 5000, 1 << 20]))
        grey = rng.integers(0, top + 1, size=(h, w)).astype(np.float64)
        if bad == "negative":
            grey.flat[0] = -3
        if bad == "nan":
            if mode == "I":
                bad = None
            else:
                grey.flat[0] = np.nan
        image = Image.fromarray(grey.astype(np.int32 if mode == "I" else np.float32), mode)
        finite = grey[np.isfinite(grey)]
        scale = 255.0 / finite.max() if finite.size and finite.max() > 255 else 1.0
        eight = np.rint(grey.astype(np.float32 if mode == "F" else np.float64) * scale)
    if bad is not None:
        return image, None
    return image, Image.fromarray(np.clip(eight, 0, 255).astype(np.uint8), "L").convert("RGB")


@FUZZ
@given(case=pil_images())
def test_pil_modes_give_the_right_pixels_or_a_clear_error(processor, case):
    image, expected = case
    result = _call(processor, images=[image], text="<image>", return_tensors="np")
    if expected is None:
        _assert_clear(result, "image 0", image.mode)
        return
    assert not isinstance(result, Exception), f"{image.mode} {image.size}: {result}"
    assert result["pixel_values"].shape == (1, 3, SIDE, SIDE)
    _assert_pixels(processor, result["pixel_values"][0], expected)


def test_la_and_unconvertible_modes():
    """Premultiplied grey+alpha converts like PIL's RGBa; a mode PIL cannot convert is named in the error."""
    la = Image.merge("La", (Image.new("L", (2, 2), 50), Image.new("L", (2, 2), 128)))
    assert to_pil_rgb(la, "image 0").getpixel((0, 0)) == Image.new("RGBa", (1, 1), (50, 50, 50, 128)).convert(
        "RGB"
    ).getpixel((0, 0))
    with pytest.raises(ValueError, match="image 0: a mode F image must hold finite"):
        to_pil_rgb(Image.fromarray(np.full((2, 2), np.nan, np.float32), "F"), "image 0")
    with pytest.raises(ValueError, match=r"image 0: unsupported image array dtype complex64"):
        to_pil_rgb(np.zeros((2, 2, 3), np.complex64), "image 0")
    assert np.asarray(to_pil_rgb(np.ones((2, 2), bool), "image 0")).min() == 255  # True is white, not 1/255


# ---------------------------------------------------------------------------------------------- texts and counts
TEXT_PIECES = st.sampled_from(
    [
        "<image>",
        "<image>\n",
        "<|im_start|>user\n",
        "<|im_end|>",
        "<imag",
        "image>",
        "<",
        "\n",
        " ",
        "",
        "圆圈",
        "ما لون",
        "Какого",
        "çğış",
    ]
)
texts = st.lists(TEXT_PIECES | st.text(max_size=12), max_size=12).map("".join) | st.just("")


@FUZZ
@given(
    batch=st.lists(st.tuples(texts, st.integers(0, 3)), min_size=1, max_size=3),
    nested=st.booleans(),
    long_words=st.integers(0, 400),
)
def test_image_counts_and_texts(processor, batch, nested, long_words):
    """Success iff every sample has one image per `<image>`; then each placeholder is exactly image_seq_length
    image tokens in a row and there is one pixel block per image, in order."""
    samples = [text + " word" * (long_words if i == 0 else 0) for i, (text, _) in enumerate(batch)]
    given_images = [[make_image(10 * i + j, (5 + j, 7)) for j in range(n)] for i, (_, n) in enumerate(batch)]
    images = given_images if nested else [image for sample in given_images for image in sample]
    counts = [text.count("<image>") for text in samples]
    result = _call(processor, text=samples, images=images or None, padding=True)
    matches = (
        ([len(s) for s in given_images] == counts) if nested else (sum(len(s) for s in given_images) == sum(counts))
    )
    if not matches:
        _assert_clear(result, "<image>" if sum(counts) else "image")
        return
    assert not isinstance(result, Exception), result
    token, n_tokens = processor.image_token_id, processor.image_seq_length
    for ids, mask, count in zip(result["input_ids"], result["attention_mask"], counts):
        kept = [t for t, m in zip(ids, mask) if m]
        runs = "".join("x" if t == token else "." for t in kept).split(".")
        assert [len(run) for run in runs if run] == [n_tokens] * count
    flat = [image for sample in given_images for image in sample]
    if flat:
        for pixels, image in zip(np.asarray(result["pixel_values"]), flat):
            _assert_pixels(processor, pixels, image)
    else:
        assert "pixel_values" not in result


@FUZZ
@given(text=texts, n_words=st.integers(0, 60), max_length=st.integers(1, 80))
def test_truncation_never_cuts_image_tokens(processor, text, n_words, max_length):
    text = "<image>" + text.replace("<image>", "") + " word" * n_words
    result = _call(processor, text=[text], images=[make_image(0)], truncation=True, max_length=max_length)
    full = processor(text=[text], images=[make_image(0)])["input_ids"][0]
    if len(full) <= max_length:
        assert result["input_ids"][0] == full
        return
    cut = full[:max_length] if processor.tokenizer.truncation_side == "right" else full[-max_length:]
    if cut.count(processor.image_token_id) == processor.image_seq_length:
        assert result["input_ids"][0] == cut
    else:
        _assert_clear(result, "max_length")


@pytest.mark.parametrize("text", [123, b"<image>", None, [], ["ok", 3], {"text": "x"}])
def test_text_of_the_wrong_type(processor, text):
    result = _call(processor, text=text)
    _assert_clear(result, "text")


def test_chat_template_refuses_unknown_roles(processor):
    """Found by the vLLM load test: a 'wizard' turn rendered as <|im_start|>wizard and was answered."""
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="roles are system, user and assistant, got .wizard."):
        processor.apply_chat_template([{"role": "wizard", "content": "hi"}], tokenize=False)
