"""Image preprocessing exactly as RynnVLA-002 training saw it: resize first (Pillow, aspect ignored),
then RGB conversion with alpha blended onto white, then value/255*2-1 in float64 cast to float32.

Modes deeper than 8 bits (16-bit PNGs: I;16 / I, float TIFFs: F) are first scaled to 8-bit L; Pillow's
own conversion would clip them (a 16-bit picture reads as almost white)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rynn_edge.runtime.errors import UserError


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file; UserError names the file if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except Image.DecompressionBombError as err:
        raise UserError(f"{path}: refused, it decompresses to too many pixels ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read as an image ({err})") from None


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit integer modes -> L by value/257 (65535 -> 255); 32-bit I by its range (values above
    255 are read as 16-bit); F as 0..1 when its maximum is at most 1, else as 0..255."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif img.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as upstream's tokenizer makes it: any transparency is blended onto white, then truncated."""
    if img.mode == "RGB":
        return img
    rgba = np.array(img.convert("RGBA"))
    if not (rgba[:, :, 3] < 255).any():
        return img.convert("RGB")
    alpha = rgba[:, :, 3:] / 255.0
    blended = (1 - alpha) * 255 + alpha * rgba[:, :, :3]
    return Image.fromarray(blended.astype(np.uint8), "RGB")


def resize_for_model(img: Image.Image, size: int) -> Image.Image:
    """Resize to size x size ignoring aspect, with the filter training's `img.resize((s, s))` used:
    bicubic, except nearest for palette and 1-bit images (Pillow's default for those modes)."""
    if img.size == (size, size):
        return img
    nearest = img.mode in ("1", "P")
    return img.resize((size, size), Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC)


def to_model_input(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """Images (PIL or HxWx3 uint8 RGB arrays) -> float32 [B, 3, size, size] in [-1, 1]."""
    if len(images) == 0:
        raise UserError("no images given")
    batch = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise UserError(f"image {i}: expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
            image = Image.fromarray(image, "RGB")
        image = to_8bit(image)
        pixels = np.array(to_rgb(resize_for_model(image, size)))
        batch.append(pixels / 255.0 * 2 - 1)  # float64 like upstream, then one rounding to float32
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(torch.float32).contiguous()
