"""What a run reports: its statistics, the live status line and the end-of-run summary.

The supervisor (`control.py`) feeds `RunStats` as records arrive; `summary` is the `run --json`
contract and the episode log's "end" record.
"""

from __future__ import annotations

import enum
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class ExitReason(enum.Enum):
    """Why a run ended, with its process exit code (documented in `rynn-edge run --help`)."""

    COMPLETED = ("completed", 0)
    SERVO_LOST = ("servo_lost", 3)
    SERVO_ERROR = ("servo_error", 4)
    CAMERA_LOST = ("camera_lost", 5)
    INFERENCE_STALLED = ("inference_stalled", 6)
    INFERENCE_FAILED = ("inference_failed", 7)
    BUS_ERROR = ("bus_error", 8)
    INTERNAL_ERROR = ("internal_error", 9)
    LOG_FAILED = ("log_failed", 10)  # the episode log could not be written (disk full, file too large)
    INTERRUPTED = ("interrupted", 130)
    TERMINATED = ("terminated", 143)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def code(self) -> int:
        return self.value[1]


EXIT_CODES_HELP = "exit codes: " + ", ".join(f"{r.code} {r.label}" for r in ExitReason) + ", 2 bad input"


def percentiles(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    arr = np.asarray(values, dtype=np.float64) * scale
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "max": round(float(arr.max()), 3),
    }


@dataclass
class RunStats:
    t_start_ns: int = 0
    cycles: int = 0
    first_cycle_ns: int | None = None
    last_cycle_ns: int | None = None
    period_errors_ns: list[int] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    chunks_executed: int = 0
    warm_up_s: float | None = None  # the policy's blocking warm-up query before the loop started

    def add_cycle(self, deadline_ns: int, period_error_ns: int) -> None:
        self.cycles += 1
        self.first_cycle_ns = self.first_cycle_ns or deadline_ns
        self.last_cycle_ns = deadline_ns
        self.period_errors_ns.append(period_error_ns)

    def add_chunk(self, latency_s: float) -> None:
        self.latencies_s.append(latency_s)
        self.chunks_executed += 1

    def loop_hz(self) -> float | None:
        if self.cycles < 2 or self.first_cycle_ns is None or self.last_cycle_ns == self.first_cycle_ns:
            return None
        return (self.cycles - 1) / ((self.last_cycle_ns - self.first_cycle_ns) / 1e9)

    def status_line(self, now_ns: int, bus_stats: dict[int, dict[str, int]]) -> str:
        jitter = percentiles(self.period_errors_ns[-200:], 1e-6)["p99"]
        infer = f"{self.latencies_s[-1] * 1e3:.0f} ms" if self.latencies_s else "-"
        errors = sum(v.get("timeouts", 0) + v.get("checksum_errors", 0) for v in bus_stats.values())
        return (
            f"t {(now_ns - self.t_start_ns) / 1e9:5.1f} s | loop {self.loop_hz() or 0:6.1f} Hz"
            f" | jitter p99 {jitter or 0:.2f} ms | inference {infer} | chunks {self.chunks_executed}"
            f" | bus errors {errors}"
        )


def print_status(line: str) -> None:
    print(line, end="\r" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)


def summary(
    exit_reason: str,
    exit_code: int,
    message: str,
    stats: RunStats,
    target_hz: float,
    *,
    missed_cycles: dict[str, int],
    servo_error_replies: dict[str, int],
    bus: dict[str, dict[str, int]],
    torque_report: dict[str, list[int]],
    episode_log: str | None,
) -> dict[str, Any]:
    return {
        "exit_reason": exit_reason,
        "exit_code": exit_code,
        "message": message,
        "duration_s": round((time.monotonic_ns() - stats.t_start_ns) / 1e9, 3) if stats.t_start_ns else 0.0,
        "loop_rate_hz": {"target": target_hz, "achieved": stats.loop_hz()},
        "period_error_ms": percentiles(stats.period_errors_ns, 1e-6),
        "inference_latency_ms": {
            k: v for k, v in percentiles(stats.latencies_s, 1e3).items() if k in ("p50", "p99")
        },
        "chunks_executed": stats.chunks_executed,
        "warm_up_ms": None if stats.warm_up_s is None else round(stats.warm_up_s * 1e3, 1),
        "cycles": stats.cycles,
        "missed_cycles": missed_cycles,
        "servo_error_replies": servo_error_replies,
        "bus": bus,
        **torque_report,
        "episode_log": episode_log,
    }


def print_outcome(result: dict[str, Any], as_json: bool) -> None:
    """The end-of-run summary: one JSON object on stdout, or a few readable lines."""
    if as_json:
        print(json.dumps(result))
        return
    s = result
    lat, err = s["inference_latency_ms"], s["period_error_ms"]
    hz = s["loop_rate_hz"]["achieved"]
    print(f"\nrun ended: {s['exit_reason']} (exit {s['exit_code']}): {s['message']}", file=sys.stderr)
    print(
        f"  loop {hz or 0:.1f} Hz (target {s['loop_rate_hz']['target']:g}); period error ms p50 {err['p50']} "
        f"p99 {err['p99']} max {err['max']}"
    )
    print(f"  inference ms p50 {lat['p50']} p99 {lat['p99']}; chunks executed {s['chunks_executed']}")
    for name, st in s["bus"].items():
        print(f"  {name:14s} " + " ".join(f"{k} {v}" for k, v in st.items()))
    if "torque_off" in s:
        print(f"  torque off: ids {s['torque_off']}; no answer: ids {s['no_answer']}")
    if s.get("episode_log"):
        print(f"  episode log: {Path(s['episode_log'])}")
