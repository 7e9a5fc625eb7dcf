"""What the robot-facing protocols of `serve` share (LeRobot's AsyncInference, openpi's websocket): the
identity a client must ask for, camera views matched by name, inputs checked before they reach the model,
one inference at a time in arrival order, warm-up, and goals kept inside the embodiment's valid ranges.

Valid goal ranges (SO100, LeRobot units): each body joint stays inside the range of positions the
artifact's stats record for it (the positions the arm held in the data the model learned from; the
state bins saturate there too, so the model has no competence beyond them; ±180 degrees where the stats
carry no state range), the gripper inside LeRobot's 0-100. `max_step` (off unless given) additionally
keeps every goal of a chunk within that many units of the state the chunk was computed from.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.predictor import Predictor
from rynn_edge.runtime.robot import so100

POLICY_TYPE = "rynnvla002"
GRIPPER_RANGE = (0.0, 100.0)  # LeRobot's RANGE_0_100
JOINT_LIMIT_WITHOUT_STATS = 180.0  # the widest a LeRobot DEGREES calibration can express
MAX_TASK_CHARS = 2000
MAX_VIEW_SIDE = 4096
LOG_EVERY_S = 10.0  # one line per session and kind of message in this window; the rest are counted


@dataclass(frozen=True)
class Chunk:
    goals: np.ndarray  # float64 [T, A], inside the valid ranges
    clipped: int  # goal values moved into range by this chunk
    infer_s: float


@dataclass(frozen=True)
class GoalLimits:
    lower: np.ndarray
    upper: np.ndarray
    max_step: float | None

    @classmethod
    def of(cls, predictor: Predictor, max_step: float | None) -> GoalLimits:
        state_range = predictor.stats.state
        joints = so100.RELATIVE_JOINTS
        lower = np.full(len(so100.MOTORS), -JOINT_LIMIT_WITHOUT_STATS)
        upper = np.full(len(so100.MOTORS), JOINT_LIMIT_WITHOUT_STATS)
        if state_range is not None:
            lower[:joints], upper[:joints] = state_range.min[:joints], state_range.max[:joints]
        lower[joints:], upper[joints:] = GRIPPER_RANGE
        return cls(lower, upper, max_step)

    def apply(self, goals: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, int]:
        """Goals inside the ranges (and within `max_step` of `state`; the ranges win where both bind)."""
        lower, upper = self.lower, self.upper
        if self.max_step is not None:
            lower = np.minimum(np.maximum(lower, state - self.max_step), upper)
            upper = np.maximum(np.minimum(upper, state + self.max_step), lower)
        safe = np.clip(goals, lower, upper)
        return safe, int(np.count_nonzero(safe != goals))

    def describe(self) -> str:
        names = list(so100.MOTORS)
        ranges = ", ".join(
            f"{n} [{lo:g}, {hi:g}]" for n, lo, hi in zip(names, self.lower, self.upper, strict=True)
        )
        step = "off" if self.max_step is None else f"{self.max_step:g}"
        return f"goal ranges {ranges}; max step {step}"


class SessionLog:
    """stderr lines; repeated ones (refusals, clipping) rate-limited: the first of each (session, kind) in
    a window, then a count."""

    def __init__(self, prefix: str, every_s: float = LOG_EVERY_S):
        self.prefix, self.every_s = prefix, every_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def line(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=sys.stderr, flush=True)

    def limited(self, session: str, kind: str, text: str) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get((session, kind), (-math.inf, 0))
        if now - last < self.every_s:
            self._last[(session, kind)] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more like it in the last {self.every_s:g} s)" if suppressed else ""
        self._last[(session, kind)] = (now, 0)
        self.line(f"{session}: {text}{more}")

    def forget(self, session: str) -> None:
        for key in [k for k in self._last if k[0] == session]:
            del self._last[key]


class ServedPolicy:
    """The served artifact behind any protocol. `infer` runs on one worker thread, requests in arrival
    order: a session has at most one request waiting, so sessions take turns."""

    def __init__(
        self,
        predictor: Predictor,
        artifact: Path,
        camera_map: Sequence[tuple[str, str]] = (),
        max_step: float | None = None,
    ):
        if predictor.robot != "so100":
            raise UserError(f"serving drives SO100 arms; this artifact's robot is {predictor.robot}")
        self.predictor = predictor
        self.artifact = artifact
        self.views = predictor.embodiment.views
        self.camera_map = dict(camera_map)
        unknown = sorted(v for v in self.camera_map.values() if v not in self.views)
        if unknown:
            raise UserError(
                f"--camera-map names view(s) {', '.join(unknown)}; {predictor.robot} views are "
                f"{', '.join(self.views)}"
            )
        self.limits = GoalLimits.of(predictor, max_step)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rynn-edge-inference")

    @property
    def horizon(self) -> int:
        return self.predictor.backend.time_horizon

    @property
    def names(self) -> list[str]:
        """What a client may give as the policy's path or name: the folder as given, resolved, or its name."""
        return list(dict.fromkeys([str(self.artifact), str(self.artifact.resolve()), self.artifact.name]))

    def check_identity(self, policy_type: Any, path: Any) -> None:
        accepted = f"policy type {POLICY_TYPE!r} with path {' or '.join(map(repr, self.names))}"
        if policy_type != POLICY_TYPE:
            raise UserError(f"policy type {policy_type!r} is not served here; this server serves {accepted}")
        if not isinstance(path, str) or (path.rstrip("/") or path) not in self.names:
            raise UserError(f"policy path {path!r} is not served here; this server serves {accepted}")

    def view_order(self, cameras: Sequence[str]) -> list[str]:
        """The client's camera names in prompt order, each matched to a view by name (or --camera-map)."""
        view_of = {name: self.camera_map.get(name, name) for name in cameras}
        unknown = [n for n, v in view_of.items() if v not in self.views]
        taken = list(view_of.values())
        doubled = sorted({v for v in taken if taken.count(v) > 1})
        missing = [v for v in self.views if v not in taken]
        if unknown or doubled or missing:
            problems = [f"unknown camera(s) {', '.join(unknown)}"] if unknown else []
            problems += [f"more than one camera for view(s) {', '.join(doubled)}"] if doubled else []
            problems += [f"no camera for view(s) {', '.join(missing)}"] if missing else []
            raise UserError(
                f"cameras {', '.join(cameras) or '(none)'}: {'; '.join(problems)}; {self.predictor.robot} "
                f"takes views {', '.join(self.views)}, matched by name (map other names with "
                "--camera-map CLIENT_NAME=VIEW)"
            )
        by_view = {v: n for n, v in view_of.items()}
        return [by_view[v] for v in self.views]

    def images(self, cameras: dict[str, Any], order: Sequence[str]) -> list[np.ndarray]:
        extra = sorted(map(str, set(cameras) - set(order)))
        if extra:
            raise UserError(f"camera(s) {', '.join(extra)} not declared; expected {', '.join(order)}")
        return [check_view(name, cameras.get(name)) for name in order]

    def infer(self, images: list[np.ndarray], state: np.ndarray, task: str) -> Chunk:
        start = time.perf_counter()
        goals = self.predictor.predict(images, state, task).goals
        safe, clipped = self.limits.apply(goals, state)
        return Chunk(safe, clipped, time.perf_counter() - start)

    async def run(self, images: list[np.ndarray], state: np.ndarray, task: str) -> Chunk:
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self.infer, images, state, task
        )

    def warm_up(self) -> float:
        """One query on blank frames before `ready` (lazy initialisation happens here, not in a client's
        first chunk); returns its seconds."""
        state_range = self.predictor.stats.state
        state = (
            np.zeros(len(so100.MOTORS)) if state_range is None else (state_range.min + state_range.max) / 2
        )
        blank = [np.zeros((480, 640, 3), np.uint8) for _ in self.views]
        return self.infer(blank, state, "warm up").infer_s

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def check_view(name: str, image: Any) -> np.ndarray:
    if image is None:
        raise UserError(f"camera {name!r}: no frame in the observation")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise UserError(f"camera {name!r}: expected an HxWx3 uint8 RGB array, got {got}")
    height, width = image.shape[:2]
    if not (1 <= height <= MAX_VIEW_SIDE and 1 <= width <= MAX_VIEW_SIDE):
        raise UserError(f"camera {name!r}: a {width}x{height} frame; sides must be 1-{MAX_VIEW_SIDE} pixels")
    return image


def check_state(values: Sequence[Any], what: str) -> np.ndarray:
    """Six finite numbers (LeRobot's SO100 units: degrees, gripper 0-100) in motor order."""
    names = list(so100.MOTORS)
    if len(values) != len(names):
        raise UserError(f"{what}: expected {len(names)} values ({', '.join(names)}), got {len(values)}")
    for name, value in zip(names, values, strict=True):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
            raise UserError(f"{what}: {name} must be a finite number, got {value!r}"[:200])
    return np.asarray([float(v) for v in values], dtype=np.float64)


def check_task(task: Any, what: str) -> str:
    if not isinstance(task, str) or not task.strip():
        raise UserError(f"{what}: expected the instruction as a non-empty string, got {type(task).__name__}")
    if len(task) > MAX_TASK_CHARS:
        raise UserError(f"{what}: instruction of {len(task)} characters; at most {MAX_TASK_CHARS}")
    return task


async def until_stopped() -> str:
    """Wait for SIGINT or SIGTERM; returns the signal's name."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: stopped.done() or stopped.set_result(s.name))
    return await stopped
