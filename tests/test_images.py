"""Image preprocessing: loading errors, RGB conversion, resize and the float conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tokens.images import load_image, resize_for_model, to_model_input, to_rgb


def test_load_image_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")


def test_load_image_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=r"broken\.png: cannot read as an image"):
        load_image(path)


def test_load_image_returns_decoded_pixels(tmp_path: Path) -> None:
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert np.array_equal(np.array(load_image(tmp_path / "a.png")), pixels)


def test_rgba_is_blended_onto_white_and_truncated() -> None:
    rgba = np.array([[[100, 50, 0, 128], [10, 20, 30, 0], [7, 8, 9, 255]]], dtype=np.uint8)
    rgb = np.array(to_rgb(Image.fromarray(rgba, "RGBA")))
    # alpha 128/255: 127.0 + 50.196 = 177.196 -> 177, 127.0 + 25.098 -> 152, 127.0 + 0 -> 127 (floor of 127.0)
    assert rgb[0, 0].tolist() == [177, 152, 127]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[0, 2].tolist() == [7, 8, 9]


def test_opaque_rgba_converts_without_blending() -> None:
    rgba = np.array([[[100, 50, 3, 255]]], dtype=np.uint8)
    assert np.array(to_rgb(Image.fromarray(rgba, "RGBA"))).tolist() == [[[100, 50, 3]]]


def test_palette_and_grayscale_become_rgb() -> None:
    palette_img = Image.new("P", (2, 1))
    palette_img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_img.putpixel((1, 0), 1)
    assert np.array(to_rgb(palette_img)).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), "L")
    assert np.array(to_rgb(gray)).tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]


def test_grayscale_with_alpha_is_blended() -> None:
    la = Image.fromarray(np.array([[[0, 0]]], dtype=np.uint8), "LA")
    assert np.array(to_rgb(la)).tolist() == [[[255, 255, 255]]]


def test_rgb_is_returned_unchanged() -> None:
    img = Image.new("RGB", (3, 2), (1, 2, 3))
    assert to_rgb(img) is img


def test_non_square_resize_gives_exact_size_with_bicubic() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    out = resize_for_model(img, 32)
    assert out.size == (32, 32)
    assert np.array_equal(np.array(out), np.array(img.resize((32, 32), Image.Resampling.BICUBIC)))
    assert not np.array_equal(np.array(out), np.array(img.resize((32, 32), Image.Resampling.BILINEAR)))


def test_palette_resize_keeps_palette_colours() -> None:
    img = Image.new("P", (5, 3))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((2, 1), 1)
    out = resize_for_model(img, 8)
    assert out.size == (8, 8)
    assert set(np.array(out).flatten().tolist()) <= {0, 1}


def test_float_conversion_matches_float64_arithmetic_then_float32() -> None:
    values = np.arange(256, dtype=np.uint8)
    pixels = np.stack([values.reshape(16, 16)] * 3, axis=-1)
    tensor = to_model_input([pixels], 16)
    expected = (values.reshape(16, 16) / 255.0 * 2 - 1).astype(np.float32)
    assert tensor.dtype == torch.float32
    assert tensor.shape == (1, 3, 16, 16)
    assert np.array_equal(tensor[0, 1].numpy(), expected)
    assert tensor[0, 0, 0, 0] == -1.0 and tensor[0, 0, 15, 15] == 1.0
    # Doing the arithmetic in float32 rounds differently for about half of the values.
    float32_path = (torch.from_numpy(values).float() / 255 * 2 - 1).view(16, 16)
    assert not torch.equal(tensor[0, 1], float32_path)


def test_model_input_is_channel_first_and_batched() -> None:
    red = np.zeros((20, 30, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue = Image.new("RGB", (10, 10), (0, 0, 255))
    batch = to_model_input([red, blue], 8)
    assert batch.shape == (2, 3, 8, 8)
    assert batch[0, 0].eq(1.0).all() and batch[0, 2].eq(-1.0).all()
    assert batch[1, 2].eq(1.0).all() and batch[1, 0].eq(-1.0).all()


def test_model_input_resizes_before_blending_alpha() -> None:
    # Training resized the RGBA image first and blended afterwards; the other order gives other pixels.
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (24, 40, 4), dtype=np.uint8), "RGBA")
    expected = np.array(to_rgb(rgba.resize((16, 16), Image.Resampling.BICUBIC))) / 255.0 * 2 - 1
    got = to_model_input([rgba], 16)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected.astype(np.float32))


def test_model_input_rejects_bad_arrays() -> None:
    with pytest.raises(UserError, match="HxWx3 uint8"):
        to_model_input([np.zeros((4, 4, 3), dtype=np.float32)], 4)
    with pytest.raises(UserError, match="no images"):
        to_model_input([], 4)
