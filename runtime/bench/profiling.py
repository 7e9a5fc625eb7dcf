"""Per-layer latency of each stage, one unified table whatever the backend.

* torch: the torch profiler over a run where every module opens a `record_function` scope; a layer's
  time is its scope's time minus its child modules' (exclusive), so every op counts once, in the innermost
  module that ran it. FLOPs and bytes per layer come from `roofline.CostCounter` on the same modules.
* onnxruntime: the session's node profiler (`enable_profiling`; events `cat == "Node"`, `*_kernel_time`,
  `dur` in µs), one row per node; FLOPs for MatMul/Gemm/Conv from the recorded shapes.
* tensorrt: an `IProfiler` attached to the execution context; engines must be built with
  `ProfilingVerbosity.DETAILED` for layer names (otherwise TensorRT reports indices). GPU only.

Profiling is separate from timing: the stage is first timed plainly (median of `runs`), then profiled.
Coverage (`COVERAGE`) compares the layers with the wall time of the same profiled calls; the plain timing
is reported next to it (the profiler's own overhead, `profiler_overhead`, is not a missing layer).
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rynn_edge.runtime.bench.roofline import Cost, CostCounter, Peak
from rynn_edge.runtime.bench.timing import time_calls

OTHER = "(other)"
COVERAGE = (
    "coverage = median over the profiled stage calls of (sum of the layer rows' times in that call) / "
    "(wall time of that call); each op is counted once, in the innermost layer that ran it; the "
    f"'{OTHER}' row (kind 'framework') is the rest of the wall: Python/session work between and around the "
    "layers, so the rows add up to the whole profiled stage. stage_ms: median of separate plain runs, no "
    "profiler; profiled_ms: median wall of the profiled calls; profiler_overhead = profiled_ms / stage_ms."
)


@dataclass
class Layer:
    name: str
    kind: str
    runs: int
    cost: Cost | None = None  # per call
    calls: int = 0
    per_run: np.ndarray = field(init=False)  # ms of this layer in each profiled stage call

    def __post_init__(self) -> None:
        self.per_run = np.zeros(self.runs)

    def add(self, run: int, ms: float) -> None:
        self.calls += 1
        self.per_run[run] += ms


@dataclass
class StageProfile:
    stage: str
    backend: str
    stage_ms: float  # plain timing run (median), no profiler attached
    runs: int
    wall_ms: np.ndarray  # wall time of each profiled stage call
    layers: dict[str, Layer] = field(default_factory=dict)

    def layer(self, name: str, kind: str, cost: Cost | None = None) -> Layer:
        return self.layers.setdefault(name, Layer(name, kind, self.runs, cost))

    @property
    def layers_per_run(self) -> np.ndarray:
        return sum((layer.per_run for layer in self.layers.values()), np.zeros(self.runs))

    @property
    def coverage(self) -> float:
        return float(np.median(self.layers_per_run / self.wall_ms))

    @property
    def layers_ms(self) -> float:
        return float(np.median(self.layers_per_run))

    @property
    def profiled_ms(self) -> float:
        return float(np.median(self.wall_ms))

    def summary(self, peak: Peak | None) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "backend": self.backend,
            "stage_ms": self.stage_ms,
            "profiled_ms": self.profiled_ms,
            "layers_ms": self.layers_ms,
            "coverage": self.coverage,
            "profiler_overhead": self.profiled_ms / self.stage_ms,
            "runs": self.runs,
            "rows": self.rows(peak),
        }

    def rows(self, peak: Peak | None) -> list[dict[str, Any]]:
        """Unified rows, slowest first: mean time per stage call, share of the profiled wall, FLOPs, bytes,
        achieved rates; the last row is `OTHER`, so the rows add up to the mean profiled call."""
        total = float(self.wall_ms.mean()) or 1.0
        out = []
        for layer in sorted(self.layers.values(), key=lambda x: -x.per_run.sum()):
            mean_ms = float(layer.per_run.mean())
            row: dict[str, Any] = {
                "stage": self.stage,
                "layer": layer.name,
                "kind": layer.kind,
                "calls": layer.calls // self.runs,
                "mean_ms": mean_ms,
                "share": mean_ms / total,
            }
            if layer.cost is not None and (layer.cost.flops or layer.cost.bytes):
                seconds = mean_ms / 1e3
                row.update(flops=layer.cost.flops, bytes=layer.cost.bytes)
                if seconds > 0:
                    row["tflops"] = layer.cost.flops / seconds / 1e12
                    row["gbs"] = layer.cost.bytes / seconds / 1e9
                if peak is not None and seconds > 0:
                    row["roofline_ms"] = peak.seconds(layer.cost) * 1e3
                    row["bound"] = peak.bound(layer.cost)
                    row["of_roofline"] = row["roofline_ms"] / mean_ms
            out.append(row)
        other = total - float(self.layers_per_run.mean())
        out.append(
            {
                "stage": self.stage,
                "layer": OTHER,
                "kind": "framework",
                "calls": 1,
                "mean_ms": other,
                "share": other / total,
            }
        )
        return out


def _median_ms(fn: Callable[[], object], runs: int) -> float:

    return float(np.median(time_calls(fn, runs, 1))) * 1e3


# --- torch -----------------------------------------------------------------------------------------------
def _scopes(root, prefix: str):
    """Hooks opening a profiler scope per module call; returns the handles."""

    handles = []
    for name, module in root.named_modules():
        label = f"{prefix}.{name}" if name else prefix
        kind = type(module).__name__

        def enter(_m, _i, label=label, kind=kind):
            scope = torch.profiler.record_function(f"layer::{label}::{kind}")
            scope.__enter__()
            _m._rynn_scope = scope

        def leave(_m, _i, _o):
            _m._rynn_scope.__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def profile_torch(
    stage: str, fn: Callable[[], object], modules: dict[str, Any], runs: int, device: str = "cpu"
) -> StageProfile:
    """`fn` runs the stage once; `modules` maps a name prefix to each root module the stage calls."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        plain_ms = _median_ms(fn, runs)
    counter = CostCounter()
    with torch.no_grad():  # not inference_mode: it hides linear/conv2d's decomposition into mm/convolution
        handles = []
        for prefix, module in modules.items():
            ctx = counter.module_scopes(module, prefix)
            ctx.__enter__()
            handles.append(ctx)
        with counter:
            fn()
        for ctx in handles:
            ctx.__exit__(None, None, None)
    costs = dict(counter.by_scope)
    handles = [h for prefix, module in modules.items() for h in _scopes(module, prefix)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    try:
        with torch.inference_mode(), profile(activities=activities) as prof:
            for run in range(runs):
                with torch.profiler.record_function(f"run::{run}"):
                    fn()
    finally:
        for h in handles:
            h.remove()
    gpu = device.startswith("cuda")

    def ms(event) -> float:
        return (event.device_time_total if gpu else event.cpu_time_total) / 1e3

    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    calls = [e for e in events if e.name.startswith("run::")]
    starts = [e.time_range.start for e in calls]
    result = StageProfile(stage, "torch", plain_ms, runs, np.asarray([e.cpu_time_total / 1e3 for e in calls]))
    for event in events:
        if event.name.startswith("layer::"):
            _, label, kind = event.name.split("::")
            children = sum(ms(c) for c in event.cpu_children if c.name.startswith("layer::"))
            run = bisect_right(starts, event.time_range.start) - 1
            result.layer(label, kind, costs.get(label)).add(run, ms(event) - children)
    return result


# --- onnxruntime -----------------------------------------------------------------------------------------
_ORT_FLOP_OPS = {"MatMul", "Gemm", "Conv", "FusedMatMul", "FusedConv", "MatMulInteger", "FusedGemm"}
_ORT_BYTES = {"float": 4, "float16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1, "double": 8}


def _ort_shapes(entries: list[dict]) -> list[tuple[str, list[int]]]:
    return [(t, s) for entry in entries for t, s in entry.items()]


def _ort_cost(op: str, args: dict) -> Cost | None:
    inputs = _ort_shapes(args.get("input_type_shape", []))
    outputs = _ort_shapes(args.get("output_type_shape", []))
    moved = sum(int(np.prod(s)) * _ORT_BYTES.get(t, 4) for t, s in inputs + outputs)
    flops = 0.0
    if op in _ORT_FLOP_OPS and inputs and outputs:
        out = outputs[0][1]
        if not op.endswith("Conv"):  # [.., M, K] @ [K, N]; the weight may be an unrecorded initializer
            flops = 2.0 * np.prod(out) * inputs[0][1][-1]
        elif len(inputs) >= 2:  # weight [C_out, C_in/g, kh, kw]
            flops = 2.0 * np.prod(out) * np.prod(inputs[1][1][1:])
    return Cost(float(flops), float(moved), float(moved) if flops else 0.0)


def profile_onnxruntime(
    stage: str, model_path: Path, feeds: dict, providers: list[str], runs: int
) -> StageProfile:
    """Plain session timing, then a profiling session over the same graph and feeds."""
    import onnxruntime as ort

    from rynn_edge.runtime.backends.onnxruntime import session_options

    plain = ort.InferenceSession(str(model_path), session_options(), providers=providers)
    plain_ms = _median_ms(lambda: plain.run(None, feeds), runs)
    prefix = str(Path(model_path).with_suffix("")) + "_profile"
    options = session_options(enable_profiling=True, profile_file_prefix=prefix)
    session = ort.InferenceSession(str(model_path), options, providers=providers)
    for _ in range(runs + 1):  # the first run is a warm-up, excluded below
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    calls = [e for e in events if e.get("name") == "model_run"][1:]
    starts = [e["ts"] for e in calls]
    result = StageProfile(stage, "onnxruntime", plain_ms, runs, np.asarray([e["dur"] / 1e3 for e in calls]))
    for event in events:
        if (
            event.get("cat") != "Node"
            or not event["name"].endswith("_kernel_time")
            or event["ts"] < starts[0]
        ):
            continue
        args = event.get("args", {})
        op = args.get("op_name", "?")
        layer = result.layer(event["name"].removesuffix("_kernel_time"), op, _ort_cost(op, args))
        layer.add(bisect_right(starts, event["ts"]) - 1, event["dur"] / 1e3)
    return result


# --- tensorrt --------------------------------------------------------------------------------------------
def tensorrt_profiler():
    """A `trt.IProfiler` adding `report_layer_time(layer_name, ms)` to `result` for profiled call `run`."""
    import tensorrt as trt

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.result: StageProfile | None = None
            self.run = 0

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.result.layer(layer_name, "trt").add(self.run, ms)

    return LayerTimes()


def profile_tensorrt(stage: str, context, execute: Callable[[], object], runs: int) -> StageProfile:
    """`context`: an IExecutionContext of an engine built with ProfilingVerbosity.DETAILED; `execute` runs it
    once synchronously (execute_v2 or enqueue + stream sync). Timing run first, then the profiled runs."""
    result = StageProfile(stage, "tensorrt", _median_ms(execute, runs), runs, np.zeros(runs))
    profiler = tensorrt_profiler()
    profiler.result = result
    context.profiler = profiler
    try:
        for run in range(runs):
            profiler.run = run
            start = time.perf_counter()
            execute()
            result.wall_ms[run] = (time.perf_counter() - start) * 1e3
    finally:
        context.profiler = None
    return result
