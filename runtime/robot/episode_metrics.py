"""Seams and starvation of a run: what its loop cycles, queries and chunks say about chunking.

`EpisodeTrace` collects the records of a run, fed either live by the supervisor (the very field dicts
it writes to the episode log) or afterwards from the log (`load_trace`); `episode_metrics(trace)` turns
it into the fields of the run summary. The live summary and `rynn-edge plot --summary` therefore run
the same code on the same values.

Phases of a run, from the loop cycles: start-up (before the first policy chunk row is executed), the
policy-driven run, and the stop (from the safe stop's hold or rest move, chunk id < 0, to the end).
Only the run phase is measured:

* starvation: cycles held (no chunk row covered the cycle's deadline) over the run's cycles;
* seams: a switch is the first executed cycle of a chunk other than the previous executed one. Per
  joint, the goal velocity jump |dv| = |g[n] - 2g[n-1] + g[n-2]| * rate (units/s) and acceleration
  jump |da| = |g[n] - 3g[n-1] + 3g[n-2] - g[n-3]| * rate^2 (units/s^2) of the commanded goals; at a
  switch, the largest over the SEAM_CYCLES cycles from it (every cycle whose jump involves the switch
  cycle's goal), inside chunks, per cycle over the other executed cycles not touching a held one;
  a switch hits the slew limit when a joint's goal moved by max_step ticks in one of those cycles;
* inference vs budget: each chunk's inference latency against the budget its query had (the time
  left on the plan being executed, less the switch overhead); late = latency > budget;
* re-planning: the K in force at each query and switches per second.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.episode_log import CorruptLogError, iter_episode
from rynn_edge.runtime.robot.report import percentiles

SEAM_CYCLES = 4  # the switch cycle's goal enters |da| of it and the 3 cycles after
METRIC_KEYS = ("starvation", "seams", "inference_budget", "replanning")
# Step record field -> (dtype, column name). Per-joint fields become [n, joints] columns.
STEP_FIELDS = {
    "deadline_ns": (np.int64, "t_ns"),
    "period_error_ns": (np.int64, "period_error_ns"),
    "held": (np.bool_, "held"),
    "chunk_id": (np.int64, "chunk_id"),
    "valid": (np.bool_, "valid"),
    "servo_error": (np.uint8, "servo_error"),
    "goal": (np.float64, "goal"),
    "state": (np.float64, "state"),
    "goal_raw": (np.int32, "goal_raw"),
}


class _Columns:
    """Rows appended one at a time, kept as numpy blocks (a 1-hour log is ~360k rows)."""

    BLOCK = 4096

    def __init__(self, dtypes: dict[str, type]):
        self._dtypes = dtypes
        self._pending: dict[str, list] = {name: [] for name in dtypes}
        self._blocks: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}
        self.n = 0

    def append(self, row: dict[str, Any]) -> None:
        for name, values in self._pending.items():
            values.append(row[name])
        self.n += 1
        if self.n % self.BLOCK == 0:
            self._flush()

    def _flush(self) -> None:
        for name, dtype in self._dtypes.items():
            if self._pending[name]:
                self._blocks[name].append(np.asarray(self._pending[name], dtype=dtype))
                self._pending[name] = []

    def __getitem__(self, name: str) -> np.ndarray:
        self._flush()
        blocks = self._blocks[name]
        if len(blocks) > 1:
            blocks[:] = [np.concatenate(blocks)]
        return blocks[0] if blocks else np.empty(0, dtype=self._dtypes[name])


class EpisodeTrace:
    """What the metrics and the plot need from a run's records, in arrays."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.max_step: int | None = None
        self.steps = _Columns({column: dtype for dtype, column in STEP_FIELDS.values()})
        self.queries: list[dict[str, Any]] = []
        self.chunks: list[dict[str, Any]] = []
        self.bus: list[dict[str, Any]] = []
        self.end: dict[str, Any] | None = None
        self.torn_line: int | None = None  # a log whose last line was cut short: its number

    def add(self, kind: str, record: dict[str, Any]) -> None:
        if kind == "start":
            self.config, self.max_step = record["config"], record.get("max_step")
        elif kind == "step":
            self.steps.append({column: record[field] for field, (_, column) in STEP_FIELDS.items()})
        elif kind == "query":
            self.queries.append({k: record.get(k) for k in ("chunk_id", "t_ns", "budget_s", "remaining")})
        elif kind == "chunk":
            self.chunks.append({k: record[k] for k in ("chunk_id", "t_ns", "switch_ns", "latency_s")})
        elif kind == "bus":
            self.bus.append({k: record[k] for k in ("t_ns", "timeouts", "checksum_errors")})
        elif kind == "end":
            self.end = record

    @property
    def joint_names(self) -> list[str]:
        return list(self.config.get("motors", []))


class _Field(NamedTuple):
    what: str  # what a good value is, for the message
    ok: Callable[[Any], bool]
    optional: bool = False  # may be absent or null
    per_joint: bool = False  # a list with one such value per motor of the start record


def _integer(lo: int = -(2**63), hi: int = 2**63 - 1) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _finite(v) and v > 0


def _names(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(name, str) for name in v)


INTEGER = _Field("an integer", _integer())
NUMBER = _Field("a finite number", _finite)
# What the metrics and the plot read, per record kind; checked line by line before any column is built.
RECORD_FIELDS: dict[str, dict[str, _Field]] = {
    "config": {
        "loop_rate_hz": _Field("a number > 0 (Hz)", _positive),
        "rate_hz": _Field("a number > 0 (Hz)", _positive),
        "motors": _Field("a non-empty list of motor names", _names),
        "chunk_policy": _Field("a string", lambda v: isinstance(v, str), optional=True),
        "async_remaining": _Field("an integer", _integer(), optional=True),
        "time_horizon": _Field("an integer", _integer(), optional=True),
    },
    "start": {"max_step": _Field("an integer >= 1", _integer(1), optional=True)},
    "step": {
        "deadline_ns": INTEGER,
        "period_error_ns": INTEGER,
        "held": _Field("true or false", lambda v: isinstance(v, bool)),
        "chunk_id": INTEGER,
        "valid": _Field("true or false", lambda v: isinstance(v, bool), per_joint=True),
        "servo_error": _Field("an ERR byte 0..255", _integer(0, 255), per_joint=True),
        "goal": NUMBER._replace(per_joint=True),
        "state": NUMBER._replace(per_joint=True),
        "goal_raw": _Field("a position in ticks", _integer(-(2**31), 2**31 - 1), per_joint=True),
    },
    "query": {
        "chunk_id": INTEGER,
        "t_ns": INTEGER,
        "budget_s": NUMBER._replace(optional=True),
        "remaining": INTEGER._replace(optional=True),
    },
    "chunk": {
        "chunk_id": INTEGER,
        "t_ns": INTEGER,
        "switch_ns": INTEGER._replace(optional=True),
        "latency_s": NUMBER,
    },
    "bus": {"t_ns": INTEGER, "timeouts": INTEGER, "checksum_errors": INTEGER},
    "end": {"exit_reason": _Field("a string", lambda v: isinstance(v, str))},
}


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return f"{text[:40]}..." if len(text) > 43 else text


_GOOD = object()  # a per-joint list with no bad value


def record_problem(kind: str, record: dict[str, Any], joints: int) -> str | None:
    """What is wrong with a record read from a log (None: nothing the metrics or the plot would trip on)."""
    if kind == "start":
        config = record.get("config")
        if not isinstance(config, dict):
            return f"'config' is {_shown(config)}; expected an object (the run's configuration)"
        problem = _fields_problem("config", config, joints)
        return f"config {problem}" if problem else _fields_problem("start", record, joints)
    return _fields_problem(kind, record, joints)


def _fields_problem(kind: str, record: dict[str, Any], joints: int) -> str | None:
    for name, field in RECORD_FIELDS.get(kind, {}).items():
        value = record.get(name)
        if value is None and field.optional:
            continue
        if name not in record:
            return f"has no '{name}' field"
        if field.per_joint:
            if not isinstance(value, list) or len(value) != joints:
                got = f"{len(value)} values" if isinstance(value, list) else _shown(value)
                return f"'{name}' is {got}; expected a list of {joints} (one per motor), each {field.what}"
            bad = next((v for v in value if not field.ok(v)), _GOOD)
            if bad is not _GOOD:
                return f"'{name}' holds {_shown(bad)}; expected each {field.what}"
        elif not field.ok(value):
            return f"'{name}' is {_shown(value)}; expected {field.what}"
    return None


def load_trace(path: str | Path) -> EpisodeTrace:
    """Read an episode log; a UserError (naming the file and line) for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such episode log")
    trace = EpisodeTrace()
    torn: list[int] = []
    number = 0
    try:
        for number, record in enumerate(iter_episode(path, on_torn=torn.append), start=1):
            kind = record.get("kind") if isinstance(record, dict) else None
            if number == 1 and kind != "start":
                raise UserError(
                    f"{path} is not an episode log: line 1 is not a 'start' record "
                    "(episode logs are written by `rynn-edge run --episode-log`)"
                )
            if not isinstance(kind, str):
                raise UserError(f"{path}: line {number} is not an episode log record (no 'kind')")
            if number > 1 and kind == "start":
                raise UserError(f"{path}: line {number}: a second 'start' record (two logs joined?)")
            problem = record_problem(kind, record, len(trace.joint_names))
            if problem:
                raise UserError(f"{path}: line {number}: {kind!r} record: {problem}")
            trace.add(kind, record)
    except CorruptLogError as err:
        raise UserError(f"{err} (not an episode log, or damaged before its end)") from None
    if number == 0:
        what = "its only line is incomplete" if torn else "it is empty"
        raise UserError(f"{path} is not an episode log: {what}")
    trace.torn_line = torn[0] if torn else None
    return trace


def run_span(held: np.ndarray, chunk_id: np.ndarray) -> tuple[int, int]:
    """[first, stop): from the first executed policy row to the start of the safe stop (or the end)."""
    executing = ~held & (chunk_id > 0)
    if not executing.any():
        return len(held), len(held)
    first = int(np.argmax(executing))
    stopped = np.flatnonzero(chunk_id[first:] < 0)
    return first, first + int(stopped[0]) if len(stopped) else len(held)


def switch_cycles(held: np.ndarray, chunk_id: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Indices of the cycles at which the loop started executing a different chunk."""
    executed = first + np.flatnonzero(~held[first:stop])
    ids = chunk_id[executed]
    return executed[1:][ids[1:] != ids[:-1]]


def _jumps(goal: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """|dv| and |da| per cycle and joint (0 where the cycles before do not exist)."""
    dv, da = np.zeros_like(goal), np.zeros_like(goal)
    dv[2:] = np.abs(goal[2:] - 2 * goal[1:-1] + goal[:-2]) * rate_hz
    da[3:] = np.abs(goal[3:] - 3 * goal[2:-1] + 3 * goal[1:-2] - goal[:-3]) * rate_hz**2
    return dv, da


def episode_metrics(trace: EpisodeTrace) -> dict[str, Any]:
    """The seam, starvation, inference-budget and re-planning fields of the run summary."""
    cfg, steps = trace.config, trace.steps
    held, chunk_id, t_ns = steps["held"], steps["chunk_id"], steps["t_ns"]
    n = len(held)
    first, stop = run_span(held, chunk_id)
    run_cycles = stop - first
    held_cycles = int(held[first:stop].sum())
    switches = switch_cycles(held, chunk_id, first, stop)
    span_s = (int(t_ns[stop - 1]) - int(t_ns[first])) / 1e9 if run_cycles > 1 else None
    return {
        "starvation": {
            "cycles": run_cycles,
            "held_cycles": held_cycles,
            "held_fraction": round(held_cycles / run_cycles, 4) if run_cycles else None,
            "startup_cycles": first,
            "stop_cycles": n - stop,
        },
        "seams": _seams(trace, switches, first, stop),
        "inference_budget": _inference_budget(trace),
        "replanning": {
            "chunk_policy": cfg.get("chunk_policy"),
            "async_remaining": _remaining_setting(cfg),
            "remaining_used": percentiles(
                [q["remaining"] for q in trace.queries if q["remaining"] is not None], low=True, points=(50,)
            ),
            "switches": len(switches),
            "replans_per_s": round(len(switches) / span_s, 3) if span_s else None,
        },
    }


def _remaining_setting(cfg: dict[str, Any]) -> int | str | None:
    if cfg.get("chunk_policy") != "async":
        return None
    fixed = cfg.get("async_remaining")
    return "auto" if fixed is None else fixed


def _seams(trace: EpisodeTrace, switches: np.ndarray, first: int, stop: int) -> dict[str, Any]:
    steps = trace.steps
    held, goal, goal_raw = steps["held"], steps["goal"], steps["goal_raw"]
    n = len(held)
    windows = switches[:, None] + np.arange(SEAM_CYCLES)  # [switches, SEAM_CYCLES]
    in_run = windows < stop
    windows = np.minimum(windows, max(n - 1, 0))
    in_seam = np.zeros(n, dtype=bool)
    in_seam[windows[in_run]] = True
    # Inside a chunk: an executed run cycle whose jump involves only executed cycles, none at a seam.
    executed = ~held & (np.arange(n) >= first) & (np.arange(n) < stop)
    inside = executed.copy()
    for lag in range(1, SEAM_CYCLES):
        inside[lag:] &= executed[:-lag]
    inside[: SEAM_CYCLES - 1] = False
    inside &= ~in_seam

    per_joint: dict[str, Any] = {}
    if n:
        dv, da = _jumps(goal, float(trace.config["loop_rate_hz"]))
        for j, name in enumerate(trace.joint_names):
            per_joint[name] = {
                label: {
                    "at_switch": percentiles(np.where(in_run, jump[windows, j], 0.0).max(axis=1)),
                    "inside": percentiles(jump[inside, j]),
                }
                for label, jump in (("velocity_jump", dv), ("acceleration_jump", da))
            }
    slewed = slew_limited(goal_raw, trace.max_step)
    at_limit = None if slewed is None else int((slewed[windows] & in_run).any(axis=1).sum())
    return {
        "switches": len(switches),
        "slew_limited_switches": at_limit,
        "slew_limited_cycles": None if slewed is None else int(slewed[first:stop].sum()),
        "units": "goal units/s (velocity_jump) and units/s^2 (acceleration_jump); degrees, gripper 0-100",
        "per_joint": per_joint,
    }


def slew_limited(goal_raw: np.ndarray, max_step: int | None) -> np.ndarray | None:
    """Per cycle: some joint's goal moved by the per-cycle step limit (the C loop's slew clamp)."""
    if max_step is None:
        return None
    out = np.zeros(len(goal_raw), dtype=bool)
    if len(goal_raw) > 1:
        out[1:] = (np.abs(np.diff(goal_raw.astype(np.int64), axis=0)) >= max_step).any(axis=1)
    return out


def _inference_budget(trace: EpisodeTrace) -> dict[str, Any]:
    budgets = {q["chunk_id"]: q["budget_s"] for q in trace.queries}
    latency = [c["latency_s"] for c in trace.chunks]
    paired = [(c["latency_s"], budgets.get(c["chunk_id"])) for c in trace.chunks]
    paired = [(lat, budget) for lat, budget in paired if budget is not None]
    return {
        "chunks": len(latency),
        "with_budget": len(paired),
        "late": sum(lat > budget for lat, budget in paired),
        "latency_ms": percentiles(latency, 1e3, (50, 90, 99)),
        "budget_ms": percentiles([b for _, b in paired], 1e3, (50,), low=True),
        "slack_ms": percentiles([b - lat for lat, b in paired], 1e3, (1, 50), low=True),
    }
