"""What a run reports: its statistics, the live status line and the end-of-run summary.

The supervisor (`control.py`) feeds `RunStats` as records arrive; `summary` is the `run --json`
contract and the episode log's "end" record.
"""

from __future__ import annotations

import enum
import json
import sys
import time
from collections.abc import Sequence
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


def percentiles(
    values: Sequence[float] | np.ndarray,
    scale: float = 1.0,
    points: Sequence[int] = (50, 99),
    *,
    low: bool = False,
) -> dict[str, float | None]:
    """{"p50", "p99", "max"} (the `points` asked for; with `low`, "min" first), rounded to 3 decimals."""
    keys = (["min"] if low else []) + [f"p{p}" for p in points] + ["max"]
    arr = np.asarray(values, dtype=np.float64) * scale
    if arr.size == 0:
        return dict.fromkeys(keys)
    out = {"min": round(float(arr.min()), 3)} if low else {}
    out.update({f"p{p}": round(float(np.percentile(arr, p)), 3) for p in points})
    out["max"] = round(float(arr.max()), 3)
    return out


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

    def status_line(self, now_ns: int, bus_stats: dict[int, dict[str, int]], bus_label: str = "bus") -> str:
        jitter = percentiles(self.period_errors_ns[-200:], 1e-6)["p99"]
        infer = f"{self.latencies_s[-1] * 1e3:.0f} ms" if self.latencies_s else "-"
        errors = sum(v.get("timeouts", 0) + v.get("checksum_errors", 0) for v in bus_stats.values())
        return (
            f"t {(now_ns - self.t_start_ns) / 1e9:5.1f} s | loop {self.loop_hz() or 0:6.1f} Hz"
            f" | jitter p99 {jitter or 0:.2f} ms | inference {infer} | chunks {self.chunks_executed}"
            f" | {bus_label} errors {errors}"
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
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The end-of-run summary; `metrics`: `episode_metrics.episode_metrics` (seams, starvation, ...)."""
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
        **metrics,
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
    for line in metric_lines(s):
        print(line)
    for name, st in s["bus"].items():
        print(f"  {name:14s} " + " ".join(f"{k} {v}" for k, v in st.items()))
    if "torque_off" in s:
        print(f"  torque off: ids {s['torque_off']}; no answer: ids {s['no_answer']}")
    if s.get("episode_log"):
        print(f"  episode log: {Path(s['episode_log'])}")


def metric_lines(m: dict[str, Any]) -> list[str]:
    """The seam and starvation fields of a summary (or of `episode_metrics`) as a few text lines."""
    st, seams, infer, rp = (m[k] for k in ("starvation", "seams", "inference_budget", "replanning"))
    lines = []
    if st["held_fraction"] is not None:
        lines.append(
            f"  held for want of a chunk: {100 * st['held_fraction']:.1f}% of {st['cycles']} cycles "
            f"({st['held_cycles']} held; start-up {st['startup_cycles']} and stop {st['stop_cycles']} apart)"
        )
    k, used = rp["async_remaining"], rp["remaining_used"]
    k_text = "" if k is None else f", K {k}"
    if k == "auto" and used["min"] is not None:
        k_text += f" ({used['min']:g}..{used['max']:g} rows)"
    lines.append(
        f"  policy {rp['chunk_policy']}{k_text}: {seams['switches']} switches"
        f" ({rp['replans_per_s'] or 0:.2f}/s), {seams['slew_limited_switches']} at the slew limit"
    )
    lat, budget = infer["latency_ms"], infer["budget_ms"]
    lines.append(
        f"  inference ms p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} vs budget ms p50 {budget['p50']}"
        f" min {budget['min']}: {infer['late']} of {infer['with_budget']} late"
    )
    if seams["switches"] and seams["per_joint"]:
        jumps = ", ".join(
            f"{name} {v['at_switch']['p50']}/{v['at_switch']['max']} vs {v['inside']['p99']}"
            for name, v in ((name, j["velocity_jump"]) for name, j in seams["per_joint"].items())
        )
        lines.append(f"  goal velocity jump, units/s (at switches p50/max vs inside chunks p99): {jumps}")
    return lines
