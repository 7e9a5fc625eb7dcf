"""Min/max normalisation statistics: upstream's hard-coded presets, or a user ``stats.json``.

``stats.json`` schema (``state`` may be left out, e.g. for a world model that only tokenises actions)::

    {"state":  {"min": [s0, s1, ...], "max": [s0, s1, ...]},
     "action": {"min": [a0, a1, ...], "max": [a0, a1, ...]}}

Each ``min``/``max`` pair has one finite number per dimension and ``min < max`` in every dimension.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rynn_edge.runtime.errors import UserError


@dataclass(frozen=True)
class Range:
    min: np.ndarray  # float64 [D]
    max: np.ndarray  # float64 [D]

    @property
    def dim(self) -> int:
        return len(self.min)


@dataclass(frozen=True)
class Stats:
    action: Range
    state: Range | None = None

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        out = {"action": {"min": self.action.min.tolist(), "max": self.action.max.tolist()}}
        if self.state is not None:
            out["state"] = {"min": self.state.min.tolist(), "max": self.state.max.tolist()}
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _range(lo: list[float], hi: list[float]) -> Range:
    return Range(np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64))


# rynnvla-002/data_lerobot/item_processor.py (the authors' private SO100 data; recompute for your own).
SO100 = Stats(
    action=_range(
        [-27.33398438, -27.24609375, -56.60156250, -51.50390625, -70.13671875, -9.07504368],
        [31.20117188, 29.44335938, 34.89257812, 45.87890625, 62.31445312, 74.56647491],
    ),
    state=_range(
        [-88.68164062, 24.16992188, -8.70117188, -59.06250000, -161.01562500, -2.15053773],
        [73.47656250, 193.27148438, 182.46093750, 101.60156250, 172.61718750, 68.23027802],
    ),
)

# rynnvla-002/data/item_processor.py, FlexARItemProcessor_Action_State (all four LIBERO suites).
LIBERO = Stats(
    action=_range(
        [-0.9375, -0.9375, -0.9375, -0.24214286, -0.375, -0.36428571, -1.0],
        [0.9375, 0.9375, 0.9375, 0.34821429, 0.375, 0.375, 1.0],
    ),
    state=_range(
        [-0.4827807, -0.3309336, 0.00812818, 1.00279467, -3.63125079, -1.84273835, -0.00545302, -0.04201502],
        [
            2.10313803e-01,
            3.90426440e-01,
            1.47277813e00,
            3.72486417e00,
            3.56188956e00,
            1.38632160e00,
            4.23214189e-02,
            1.31260958e-03,
        ],
    ),
)

# rynnvla-002/data/item_processor.py, FlexARItemProcessor_Action: the world model tokenises actions with a
# different range than the VLA (dims 3 and 5).
LIBERO_WORLD = Stats(
    action=_range(
        [-0.9375, -0.9375, -0.9375, -0.32571429, -0.375, -0.375, -1.0],
        [0.9375, 0.9375, 0.9375, 0.375, 0.375, 0.375, 1.0],
    ),
)

PRESETS = {"so100": SO100, "libero": LIBERO, "libero_world": LIBERO_WORLD}


def _parse_range(data: dict, key: str, source: str) -> Range:
    entry = data[key]
    if not isinstance(entry, dict) or "min" not in entry or "max" not in entry:
        raise UserError(f'{source}: "{key}" must be an object with "min" and "max" lists')
    values = {}
    for bound in ("min", "max"):
        seq = entry[bound]
        if not isinstance(seq, list) or not seq:
            raise UserError(f"{source}: {key}.{bound} must be a non-empty list of numbers")
        for i, v in enumerate(seq):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise UserError(f"{source}: {key}.{bound}[{i}] = {v!r} is not a finite number")
        values[bound] = seq
    if len(values["min"]) != len(values["max"]):
        raise UserError(
            f"{source}: {key}.min has {len(values['min'])} values but {key}.max has {len(values['max'])}"
        )
    for i, (lo, hi) in enumerate(zip(values["min"], values["max"], strict=True)):
        if not lo < hi:
            raise UserError(f"{source}: {key}.min[{i}] = {lo} is not below {key}.max[{i}] = {hi}")
    return _range(values["min"], values["max"])


def load_stats(name_or_path: str | Path) -> Stats:
    """A preset (``so100``, ``libero``, ``libero_world``) or a ``stats.json`` path."""
    if str(name_or_path) in PRESETS:
        return PRESETS[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise UserError(f"{path}: no such stats file and not a preset (presets: {', '.join(PRESETS)})")
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "action" not in data:
        raise UserError(f'{path}: missing key "action" (see the schema in rynn_edge.runtime.tokens.stats)')
    unknown = set(data) - {"state", "action"}
    if unknown:
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)}; expected only 'state' and 'action'")
    state = _parse_range(data, "state", str(path)) if "state" in data else None
    return Stats(action=_parse_range(data, "action", str(path)), state=state)
