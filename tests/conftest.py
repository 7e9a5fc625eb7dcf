"""Shared fixtures: tiny random checkpoint bundles in the exact upstream layout, made once per session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from exporting import calibration_folder, export_bundle
from PIL import Image

from rynn_edge.runtime.backends.artifact import MANIFEST
from rynn_edge.runtime.tiny.bundle import write_tiny_bundle

# Commands run in-process (bench, profile, also from module-scoped fixtures) may set torch's
# process-wide thread count; every test starts from the default (float results depend on the split).
DEFAULT_TORCH_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _default_torch_threads():
    torch.set_num_threads(DEFAULT_TORCH_THREADS)
    yield
    torch.set_num_threads(DEFAULT_TORCH_THREADS)


@pytest.fixture(scope="session")
def so100_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_bundle(tmp_path_factory.mktemp("so100"), "so100", seed=0)


@pytest.fixture(scope="session")
def libero_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_bundle(tmp_path_factory.mktemp("libero"), "libero", seed=1)


def synthetic_frame(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A deterministic camera-like frame: smooth gradients plus a few blocks, not square on purpose."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    for _ in range(4):
        x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
        base[y0 : y0 + 40, x0 : x0 + 40] = rng.integers(0, 256, 3)
    return Image.fromarray(base.astype(np.uint8))


@pytest.fixture(scope="session")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four image files: two 320x240 PNGs, a 256x256 PNG, and a 640x480 JPEG."""
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    specs = [((320, 240), "png"), ((320, 240), "png"), ((256, 256), "png"), ((640, 480), "jpg")]
    for i, (size, ext) in enumerate(specs):
        path = folder / f"frame{i}.{ext}"
        synthetic_frame(i, size).save(path)
        paths.append(path)
    return paths


# --- exported artifacts (rynn-edge export), shared by the export, profile and bench tests -----------------
@pytest.fixture(scope="session")
def so100_calib(tmp_path_factory, frames) -> Path:
    return calibration_folder(tmp_path_factory.mktemp("calib") / "so100", frames, [10, 80, 90, 20, 5, 30])


@pytest.fixture(scope="session")
def so100_fp32(tmp_path_factory, so100_bundle, so100_calib) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("art") / "so100_fp32"
    assert export_bundle(so100_bundle, out, so100_calib, "--precision", "fp32", "--format", "triton") == 0
    return out, json.loads((out / MANIFEST).read_text())
