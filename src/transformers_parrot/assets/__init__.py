"""Small bundled fixtures: the tiny multilingual tokenizer and a deterministic demo image."""

from __future__ import annotations

from pathlib import Path

TINY_TOKENIZER_DIR: Path = Path(__file__).resolve().parent / "tiny_tokenizer"


def bundled_image(width: int = 64, height: int = 48):
    """A deterministic PIL RGB image (white background, red circle on the left, blue square on the right)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    r = min(width, height) // 4
    cx, cy = width // 4, height // 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 30, 30))
    sx, sy = 3 * width // 4, height // 2
    draw.rectangle((sx - r, sy - r, sx + r, sy + r), fill=(30, 60, 220))
    return image


__all__ = ["TINY_TOKENIZER_DIR", "bundled_image"]
