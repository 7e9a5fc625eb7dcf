"""Calibration / held-out queries for quantization and the accuracy report.

`--calibration-data DIR` takes recorded queries in one of two layouts:
- `DIR/samples.jsonl`: one query per line, `{"images": ["front/000.png", "wrist/000.png"],
  "state": [...], "instruction": "..."}` (image paths relative to DIR, in prompt order);
- a LeRobot-style episode: `DIR/episode.jsonl` rows `{"frame_index", "observation.state",
  "task" or "instruction"}` with frames in `DIR/images/<camera>/frame_<index:06d>.png`, cameras in
  sorted order (name them `0_front`, `1_wrist` to set the prompt order).
Without a folder, synthetic camera-like frames, mid-range states and one instruction stand in; that
is enough for fp16 and a smoke test, but int8/fp8 scales should come from real recordings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tokens.images import load_image
from rynn_edge.runtime.tokens.stats import Stats

DEFAULT_INSTRUCTION = "pick up the red cube and place it in the box"
DEFAULT_SAMPLES = 6
HELD_OUT_FRACTION = 0.3
MIN_HELD_OUT = 2


@dataclass
class Sample:
    images: list[Image.Image]
    state: np.ndarray
    instruction: str


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e})") from None
    if not rows:
        raise UserError(f"{path}: no samples")
    return rows


def _image(path: Path) -> Image.Image:
    if not path.is_file():
        raise UserError(f"{path}: calibration image not found")
    return load_image(path)


def load_folder(folder: Path, limit: int | None = None) -> list[Sample]:

    if (folder / "samples.jsonl").is_file():
        rows = _jsonl(folder / "samples.jsonl")[:limit]
        try:
            return [
                Sample(
                    [_image(folder / p) for p in row["images"]],
                    np.asarray(row["state"], float),
                    row["instruction"],
                )
                for row in tqdm(rows, desc="calibration samples", disable=None)
            ]
        except KeyError as e:
            raise UserError(
                f"{folder / 'samples.jsonl'}: a row has no {e} (need images, state, instruction)"
            ) from None
    if (folder / "episode.jsonl").is_file():
        cameras = (
            sorted(p for p in (folder / "images").iterdir() if p.is_dir())
            if (folder / "images").is_dir()
            else []
        )
        if not cameras:
            raise UserError(f"{folder}/images: no camera folders for the episode frames")
        rows = _jsonl(folder / "episode.jsonl")[:limit]
        samples = []
        for row in tqdm(rows, desc="episode frames", disable=None):
            try:
                index, state = int(row["frame_index"]), row["observation.state"]
                instruction = row.get("instruction") or row["task"]
            except KeyError as e:
                raise UserError(f"{folder / 'episode.jsonl'}: a row has no {e}") from None
            images = [_image(cam / f"frame_{index:06d}.png") for cam in cameras]
            samples.append(Sample(images, np.asarray(state, float), instruction))
        return samples
    raise UserError(
        f"{folder}: no samples.jsonl and no episode.jsonl; see `rynn-edge export --help` for the "
        "calibration folder layouts"
    )


def synthetic(stats: Stats, n_images: int, count: int = DEFAULT_SAMPLES) -> list[Sample]:
    """Deterministic camera-like frames (gradients and blocks) with states spread over the stats range."""
    rng = np.random.default_rng(0)
    state_range = stats.state
    samples = []
    for i in range(count):
        images = []
        for _ in range(n_images):
            y, x = np.mgrid[0:240, 0:320]
            base = np.stack([x * 255 / 320, y * 255 / 240, (x + y) * 127 / 560], axis=-1)
            for _ in range(4):
                x0, y0 = rng.integers(0, 280), rng.integers(0, 200)
                base[y0 : y0 + 40, x0 : x0 + 40] = rng.integers(0, 256, 3)
            images.append(Image.fromarray(base.astype(np.uint8)))
        t = (i + 0.5) / count
        state = state_range.min + t * (state_range.max - state_range.min)
        samples.append(Sample(images, state, DEFAULT_INSTRUCTION))
    return samples


def split(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(calibration, held-out): the last 30% of the queries, at least 2 (from 4 queries on) and never
    more than half, are held out for the accuracy gate and never calibrate; one sample serves both."""
    if len(samples) == 1:
        return samples, samples
    held = max(MIN_HELD_OUT, int(round(len(samples) * HELD_OUT_FRACTION)))
    held = max(1, min(held, len(samples) // 2))
    return samples[:-held], samples[-held:]
