"""Timing, statistics, the conditions of a run, and the table / CSV / JSON writers of bench and profile
(their PNGs: figures.py).

Timing: CUDA events on the current stream around each call on a GPU (then one synchronize), perf_counter
on the CPU (calls are synchronous there). Warm-up calls are run and discarded first.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rynn_edge.runtime.robot.chunking import (
    async_steady_state,
    auto_remaining,
    full_steady_state,
    switch_overhead_s,
)


def time_calls(fn: Callable[[], object], runs: int, warmup: int, device: str = "cpu") -> list[float]:
    """Seconds per call of `fn`, `runs` times after `warmup` discarded calls."""
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        samples = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return samples
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def summarize_ms(samples: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(samples, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
    }


def sustainable_hz(time_horizon: int, latency_s: float, action_rate: float) -> float:
    """Fresh actions per second the arm executes with async re-planning, one inference in flight.

    Each chunk is anchored at its observation time (row i is for t_obs + i/f). Calls run back to back,
    one every latency L; a chunk arrives L after its observation, so its first L*f rows are already past,
    and it is used until the next chunk arrives L later or until it runs out at t_obs + T/f:
        R = f * min(L, T/f - L) / L = clip(min(f, T/L - f), 0, f).
    R = f (the arm never waits) iff L <= T / (2f); R = 0 once L >= T/f (every row is stale on arrival).
    """
    return float(np.clip(min(action_rate, time_horizon / latency_s - action_rate), 0.0, action_rate))


def execute_whole_chunk_hz(time_horizon: int, latency_s: float, action_rate: float) -> float:
    """Upstream behaviour: run all T rows at f, then hold while the model thinks: T / (T/f + L)."""
    return time_horizon / (time_horizon / action_rate + latency_s)


def closed_loop(
    samples_s: Sequence[float], horizon: int, action_rate: float, loop_rate: float
) -> dict[str, Any]:
    """What `rynn-edge run` would do with these inference latencies at the action rate, in steady state:
    `--chunk-policy async` with the latency-aware K (`auto_remaining`, as the scheduler picks it) and
    `full`: the share of time the arm holds for want of a chunk, and re-plans per second. Each sample
    counts once, plus the switch overhead of the loop (`chunking.switch_overhead_s`)."""
    overhead = switch_overhead_s(loop_rate)
    latencies = [s + overhead for s in samples_s]

    def shares(states: list[tuple[float, float]]) -> tuple[float, float]:
        held, interval = map(sum, zip(*states, strict=True))
        return 100 * held / interval, len(states) / interval

    full_held, _ = shares([full_steady_state(horizon, lat, action_rate) for lat in latencies])
    out: dict[str, Any] = {"auto_remaining": None, "async_held_pct": None, "replans_per_s": None}
    if horizon >= 2:
        k = auto_remaining(list(samples_s), action_rate, horizon, overhead)
        held, rate = shares([async_steady_state(horizon, k, lat, action_rate) for lat in latencies])
        out = {"auto_remaining": k, "async_held_pct": held, "replans_per_s": rate}
    return {**out, "full_held_pct": full_held}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:

    out = {"python": platform.python_version()}
    for dist in ("rynn-edge", "torch", "numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment(device: str = "cpu") -> dict[str, Any]:
    """Where a result was measured: machine, CPU, GPU, library versions."""

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 1e9, 1),
        }
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "device": device,
        "versions": versions(),
        "loadavg": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return "-" if value is None else str(value)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and not isinstance(row[k], dict | list)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def write_outputs(
    result: dict[str, Any],
    out: Path,
    stem: str,
    rows: list[dict],
    plot: Callable[[Path], None] | None,
    *,
    as_json: bool,
) -> bool:
    """STEM.csv (`rows`), STEM.json (`result` + `files`) and, with a `plot`, STEM.png in `out`; with
    `as_json` the result is printed as one JSON object and True returned (print nothing else then)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    if plot is not None:
        files["png"] = out / f"{stem}.png"
        plot(files["png"])
    result["files"] = {k: str(v) for k, v in files.items()}
    write_csv(rows, files["csv"])
    write_json(result, files["json"])
    if as_json:
        print(json.dumps(result))
    return as_json


def set_threads(threads: int | None) -> None:
    """torch's CPU thread count for a measurement (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def where(env: dict[str, Any]) -> str:
    """The device a result was measured on: the GPU's name on CUDA, else the CPU model."""
    return env["gpu"]["name"] if env["gpu"] and env["device"].startswith("cuda") else env["cpu"]
