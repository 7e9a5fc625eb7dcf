"""Calibration / held-out queries for quantization and the accuracy report.

`--calibration-data DIR` takes recorded queries in one of two layouts:
- `DIR/samples.jsonl`: one query per line, `{"images": ["front/000.png", "wrist/000.png"],
  "state": [...], "instruction": "..."}` (image paths relative to DIR, in prompt order; an SO100 state
  may also be LeRobot's observation object `{"shoulder_pan.pos": ..., ...}` with all six joints);
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
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.embodiment import Embodiment
from rynn_edge.runtime.tokens.images import load_image
from rynn_edge.runtime.tokens.stats import Stats

DEFAULT_INSTRUCTION = "pick up the red cube and place it in the box"
DEFAULT_SAMPLES = 6
HELD_OUT_FRACTION = 0.3
MIN_HELD_OUT = 2
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Sample:
    images: list[Image.Image]
    state: np.ndarray
    instruction: str


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(`file:line`, row object) for every non-blank line of a JSON Lines file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if data.startswith(GZIP_MAGIC):
        raise UserError(f"{path}: gzip-compressed; decompress it to plain JSON Lines (gunzip)")
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err}); expected JSON Lines") from None
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            raise UserError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object {{...}} per line, got {_kind(row)}")
        rows.append((where, row))
    if not rows:
        raise UserError(f"{path}: no samples")
    return rows


def _field(row: dict[str, Any], where: str, *keys: str) -> Any:
    """The first of `keys` the row has (several: accepted spellings of one field)."""
    for key in keys:
        if key in row:
            return row[key]
    raise UserError(f'{where}: no "{keys[0]}" key (a row has {", ".join(map(repr, row)) or "no keys"})')


def _joint_state(value: dict[str, Any], where: str, key: str) -> list[Any]:
    """LeRobot's observation dict {"shoulder_pan.pos": ...} -> values in SO100 joint order, when its keys
    are exactly the six joints (with or without ".pos")."""
    joints = {name.removesuffix(".pos"): v for name, v in value.items()}
    if len(joints) != len(value) or set(joints) != set(so100.MOTORS):
        expected = ", ".join(f"{m}.pos" for m in so100.MOTORS)
        raise UserError(
            f'{where}: "{key}" has keys {", ".join(value) or "(none)"}; an object state needs exactly the '
            f"SO100 joints {expected} (or give a list of numbers in that order)"
        )
    return [joints[m] for m in so100.MOTORS]


def _state(value: Any, where: str, key: str, body: Embodiment) -> np.ndarray:
    example = f"a list of {body.state_dim} numbers"
    if isinstance(value, dict) and body.name == "so100":
        value = _joint_state(value, where, key)
    if not isinstance(value, list):
        raise UserError(f'{where}: "{key}" is {_kind(value)} ({str(value)[:60]!r}); expected {example}')
    bad = next(
        (i for i, v in enumerate(value) if not isinstance(v, (int, float)) or isinstance(v, bool)), None
    )
    if bad is not None:
        raise UserError(f'{where}: "{key}"[{bad}] is {_kind(value[bad])}; expected {example}')
    state = np.asarray(value, dtype=float)
    if len(state) != body.state_dim:
        raise UserError(
            f'{where}: "{key}" has {len(state)} values; the {body.name} state has {body.state_dim}'
        )
    if not np.isfinite(state).all():
        raise UserError(f'{where}: "{key}" has a value that is not finite ({value})')
    return state


def _views(count: int, where: str, what: str, body: Embodiment) -> None:
    if count not in body.image_counts:
        want = " or ".join(map(str, body.image_counts))
        raise UserError(f"{where}: {what}; {body.name} queries take {want} views, in prompt order")


def _image(path: Path, where: str) -> Image.Image:
    if not path.is_file():
        raise UserError(f"{where}: calibration image {path} not found")
    try:
        return load_image(path)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def _images(value: Any, where: str, folder: Path, body: Embodiment) -> list[Image.Image]:
    if isinstance(value, str):
        raise UserError(
            f'{where}: "images" is one string; give a list of paths in prompt order, e.g. ["{value}"]'
        )
    if not isinstance(value, list):
        raise UserError(f'{where}: "images" is {_kind(value)}; expected a list of paths in prompt order')
    bad = next((i for i, p in enumerate(value) if not isinstance(p, str) or not p), None)
    if bad is not None:
        raise UserError(
            f'{where}: "images"[{bad}] is {_kind(value[bad])}; expected a path (relative to {folder})'
        )
    _views(len(value), where, f'"images" has {len(value)} paths', body)
    return [_image(folder / p, where) for p in value]


def _instruction(row: dict[str, Any], where: str, *keys: str) -> str:
    value = _field(row, where, *keys)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f'{where}: "{keys[0]}" is {_kind(value)} ({value!r}); expected the task as text')
    return value


def _frame_index(row: dict[str, Any], where: str) -> int:
    value = _field(row, where, "frame_index")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(f'{where}: "frame_index" is {value!r}; expected a whole number >= 0')
    return value


def load_folder(folder: Path, body: Embodiment) -> list[Sample]:
    """Every query of the folder, each checked against the robot (views, state size) where it is read;
    a bad row is refused naming its file, line and key."""
    if not folder.is_dir():
        raise UserError(f"--calibration-data {folder}: not a folder (see `rynn-edge export --help`)")
    if (folder / "samples.jsonl").is_file():
        return [
            Sample(
                _images(_field(row, where, "images"), where, folder, body),
                _state(_field(row, where, "state"), where, "state", body),
                _instruction(row, where, "instruction"),
            )
            for where, row in tqdm(_rows(folder / "samples.jsonl"), desc="calibration samples", disable=None)
        ]
    if (folder / "episode.jsonl").is_file():
        images = folder / "images"
        cameras = sorted(p for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
        if not cameras:
            raise UserError(f"{images}: no camera folders for the episode frames")
        _views(len(cameras), str(images), f"{len(cameras)} camera folders", body)
        samples = []
        for where, row in tqdm(_rows(folder / "episode.jsonl"), desc="episode frames", disable=None):
            index = _frame_index(row, where)
            state = _state(_field(row, where, "observation.state"), where, "observation.state", body)
            instruction = _instruction(row, where, "instruction", "task")
            frames = [_image(cam / f"frame_{index:06d}.png", where) for cam in cameras]
            samples.append(Sample(frames, state, instruction))
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
