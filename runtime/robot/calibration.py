"""LeRobot calibration files and the raw-tick <-> training-unit conversion.

The file is LeRobot's `dict[str, MotorCalibration]` JSON: one object per motor name with integer
fields `id`, `drive_mode`, `homing_offset`, `range_min`, `range_max`. The conversions reproduce
LeRobot's `MotorsBus._normalize` / `_unnormalize` bit for bit, including the `int()` truncation
toward zero on the way back to ticks and the 4095 (not 4096) in DEGREES mode.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.runtime.errors import UserError

FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
MAX_TICK = 4095  # 12-bit position of the STS3215
MAX_SERVO_ID = 253  # 254 is the broadcast id


class NormMode(enum.Enum):
    DEGREES = "degrees"
    RANGE_M100_100 = "range_m100_100"
    RANGE_0_100 = "range_0_100"


@dataclass(frozen=True)
class MotorCalibration:
    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int


def load_calibration(path: str | Path, names: Sequence[str]) -> dict[str, MotorCalibration]:
    """Read a LeRobot calibration JSON; every motor in `names` must be present and valid."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"calibration file {path}: expected an object of motor name -> calibration")
    if "motor_names" in data:
        raise UserError(
            f"calibration file {path} is in the older LeRobot layout (one list per field); record a new "
            "one with `rynn-edge calibrate`"
        )
    missing = [name for name in names if name not in data]
    if missing:
        raise UserError(f"calibration file {path} has no entry for motor(s) {', '.join(missing)}")
    calib: dict[str, MotorCalibration] = {}
    for name in names:
        entry = data[name]
        if not isinstance(entry, dict):
            raise UserError(
                f"calibration file {path}: motor {name!r} must be an object with {', '.join(FIELDS)}"
            )
        bad = [f for f in FIELDS if not isinstance(entry.get(f), int) or isinstance(entry.get(f), bool)]
        if bad:
            raise UserError(
                f"calibration file {path}: motor {name!r} needs integer field(s) {', '.join(bad)}"
            )
        cal = MotorCalibration(**{f: entry[f] for f in FIELDS})
        if cal.range_max <= cal.range_min:
            raise UserError(
                f"calibration file {path}: motor {name!r} has range_min {cal.range_min} >= range_max "
                f"{cal.range_max}; recalibrate and move the joint through its range"
            )
        for field in ("range_min", "range_max"):
            if not 0 <= getattr(cal, field) <= MAX_TICK:
                raise UserError(
                    f"calibration file {path}: motor {name!r} {field} {getattr(cal, field)} is outside "
                    f"the servo's 0..{MAX_TICK}"
                )
        if not 0 <= cal.id <= MAX_SERVO_ID:
            raise UserError(
                f"calibration file {path}: motor {name!r} id {cal.id} is outside 0..{MAX_SERVO_ID}"
            )
        twin = next((other for other, c in calib.items() if c.id == cal.id), None)
        if twin is not None:
            raise UserError(f"calibration file {path}: motors {twin!r} and {name!r} both have id {cal.id}")
        if cal.drive_mode not in (0, 1):
            raise UserError(
                f"calibration file {path}: motor {name!r} drive_mode {cal.drive_mode} is not 0 or 1"
            )
        if abs(cal.homing_offset) > 2047:
            raise UserError(
                f"calibration file {path}: motor {name!r} homing_offset {cal.homing_offset} exceeds ±2047"
            )
        calib[name] = cal
    return calib


def _read_json(path: Path) -> Any:
    if path.is_dir():
        # LeRobot's calibration root holds robots/<type>/<id>.json: three levels, never a deep walk.
        found = sorted(
            str(p.relative_to(path)) for depth in ("", "*/", "*/*/") for p in path.glob(f"{depth}*.json")
        )
        found = found[:5]
        hint = f"; it holds {', '.join(found)}" if found else ""
        raise UserError(
            f"calibration {path} is a folder; pass the arm's JSON file (LeRobot keeps one per arm, "
            f"e.g. robots/so100_follower/<id>.json){hint}"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"calibration file {path} does not exist; record one with `rynn-edge calibrate`"
        ) from None
    except OSError as err:
        raise UserError(f"calibration file {path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(
            f"calibration file {path} is not text (binary data); expected LeRobot's JSON"
        ) from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"calibration file {path} is not valid JSON: {err}") from None


def save_calibration(path: str | Path, calib: dict[str, MotorCalibration]) -> None:
    """Write the file the way LeRobot does (indent 4), atomically so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({name: asdict(cal) for name, cal in calib.items()}, indent=4) + "\n")
    os.replace(tmp, path)


def normalize(raw: int, cal: MotorCalibration, mode: NormMode, resolution: int = 4096) -> float:
    """Raw Present/Goal_Position ticks (sign already decoded) -> LeRobot units."""
    lo, hi = cal.range_min, cal.range_max
    if mode is NormMode.DEGREES:
        # DEGREES neither clamps nor applies drive_mode, exactly like LeRobot.
        return (raw - (lo + hi) / 2) * 360 / (resolution - 1)
    bounded = min(hi, max(lo, raw))
    if mode is NormMode.RANGE_M100_100:
        value = (bounded - lo) / (hi - lo) * 200 - 100
        return -value if cal.drive_mode else value
    value = (bounded - lo) / (hi - lo) * 100
    return 100 - value if cal.drive_mode else value


def unnormalize(value: float, cal: MotorCalibration, mode: NormMode, resolution: int = 4096) -> int:
    """LeRobot units -> raw ticks, truncated toward zero with int() as LeRobot does."""
    lo, hi = cal.range_min, cal.range_max
    if mode is NormMode.DEGREES:
        return int(value * (resolution - 1) / 360 + (lo + hi) / 2)
    if mode is NormMode.RANGE_M100_100:
        value = -value if cal.drive_mode else value
        return int((min(100.0, max(-100.0, value)) + 100) / 200 * (hi - lo) + lo)
    value = 100 - value if cal.drive_mode else value
    return int(min(100.0, max(0.0, value)) / 100 * (hi - lo) + lo)


class JointMap:
    """Vector conversion for an ordered set of motors (the model's state/action order)."""

    def __init__(self, calib: dict[str, MotorCalibration], modes: dict[str, NormMode]):
        self.names = list(modes)
        self.calib = [calib[name] for name in self.names]
        self.modes = [modes[name] for name in self.names]
        self.ids = [cal.id for cal in self.calib]

    def to_units(self, raw: Sequence[int]) -> np.ndarray:
        return np.array(
            [normalize(int(r), c, m) for r, c, m in zip(raw, self.calib, self.modes, strict=True)]
        )

    def to_raw(self, units: Sequence[float]) -> np.ndarray:
        return np.array(
            [unnormalize(float(u), c, m) for u, c, m in zip(units, self.calib, self.modes, strict=True)],
            dtype=np.int32,
        )

    def raw_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Goal clamp in ticks: the calibrated range of every joint."""
        return (
            np.array([c.range_min for c in self.calib], dtype=np.int32),
            np.array([c.range_max for c in self.calib], dtype=np.int32),
        )
