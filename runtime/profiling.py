"""Per-layer latency of each stage, one unified table whatever the backend.

* torch: the torch profiler over a run where every module opens a `record_function` scope; a layer's
  time is its scope's time minus its child modules' (exclusive), so the layers of a stage add up to the
  stage. FLOPs and bytes per layer come from `roofline.CostCounter` on the same modules.
* onnxruntime: the session's node profiler (`enable_profiling`; events `cat == "Node"`, `*_kernel_time`,
  `dur` in µs), one row per node; FLOPs for MatMul/Gemm/Conv from the recorded shapes.
* tensorrt: an `IProfiler` attached to the execution context; engines must be built with
  `ProfilingVerbosity.DETAILED` for layer names (otherwise TensorRT reports indices). GPU only.

Profiling is separate from timing: the stage is first timed plainly (median of `runs`), then profiled.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.runtime.roofline import Cost, CostCounter, Peak


@dataclass
class Layer:
    name: str
    kind: str
    calls: int = 0
    total_ms: float = 0.0
    cost: Cost | None = None  # per call
    samples: list[float] = field(default_factory=list)  # ms per call, in call order

    def per_run(self, runs: int) -> np.ndarray:
        """This layer's time in each profiled stage call (ms)."""
        return np.asarray(self.samples).reshape(runs, -1).sum(axis=1) if self.samples else np.zeros(runs)


@dataclass
class StageProfile:
    stage: str
    backend: str
    stage_ms: float  # plain timing run (median), no profiler attached
    runs: int
    layers: dict[str, Layer] = field(default_factory=dict)

    def rows(self, peak: Peak | None) -> list[dict[str, Any]]:
        """Unified rows, slowest first: mean time per stage call, share, FLOPs, bytes, achieved rates."""
        total = sum(layer.total_ms for layer in self.layers.values()) or 1.0
        out = []
        for layer in sorted(self.layers.values(), key=lambda x: -x.total_ms):
            mean_ms = layer.total_ms / self.runs
            row: dict[str, Any] = {
                "stage": self.stage,
                "layer": layer.name,
                "kind": layer.kind,
                "calls": layer.calls // self.runs,
                "mean_ms": mean_ms,
                "share": layer.total_ms / total,
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
        return out

    @property
    def median_run(self) -> int:
        """The profiled stage call whose layer total is the median (robust to a call disturbed by the OS)."""
        totals = sum((layer.per_run(self.runs) for layer in self.layers.values()), np.zeros(self.runs))
        return int(np.argsort(totals)[self.runs // 2])

    @property
    def layers_ms(self) -> float:
        """Sum of the layers' times in the median profiled call (compared with the plain-run median)."""
        return float(sum(layer.per_run(self.runs)[self.median_run] for layer in self.layers.values()))


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    from rynn_edge.runtime.benchmarking import time_calls

    return float(np.median(time_calls(fn, runs, 1))) * 1e3


# --- torch -----------------------------------------------------------------------------------------------
def _scopes(root, prefix: str):
    """Hooks opening a profiler scope per module call; returns the handles."""
    import torch

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
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        result = StageProfile(stage, "torch", _median_ms(fn, runs), runs)
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
            for _ in range(runs):
                fn()
    finally:
        for h in handles:
            h.remove()
    gpu = device.startswith("cuda")
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        if not event.name.startswith("layer::"):
            continue
        _, label, kind = event.name.split("::")
        inclusive = (event.device_time_total if gpu else event.cpu_time_total) / 1e3
        children = sum(
            ((c.device_time_total if gpu else c.cpu_time_total) / 1e3)
            for c in event.cpu_children
            if c.name.startswith("layer::")
        )
        layer = result.layers.setdefault(label, Layer(label, kind, cost=costs.get(label)))
        layer.calls += 1
        layer.total_ms += inclusive - children
        layer.samples.append(inclusive - children)
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

    plain = ort.InferenceSession(str(model_path), providers=providers)
    result = StageProfile(stage, "onnxruntime", _median_ms(lambda: plain.run(None, feeds), runs), runs)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.log_severity_level = 3
    options.profile_file_prefix = str(Path(model_path).with_suffix("")) + "_profile"
    session = ort.InferenceSession(str(model_path), options, providers=providers)
    for _ in range(runs + 1):  # the first run is a warm-up, excluded below
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    first_run = [e for e in events if e.get("name") == "model_run"]
    skip_until = first_run[0]["ts"] + first_run[0]["dur"] if first_run else 0
    for event in events:
        if (
            event.get("cat") != "Node"
            or not event["name"].endswith("_kernel_time")
            or event["ts"] < skip_until
        ):
            continue
        args = event.get("args", {})
        name = event["name"].removesuffix("_kernel_time")
        layer = result.layers.setdefault(
            name, Layer(name, args.get("op_name", "?"), cost=_ort_cost(args.get("op_name", ""), args))
        )
        layer.calls += 1
        layer.total_ms += event["dur"] / 1e3
        layer.samples.append(event["dur"] / 1e3)
    return result


# --- tensorrt --------------------------------------------------------------------------------------------
def tensorrt_profiler():
    """A `trt.IProfiler` collecting `report_layer_time(layer_name, ms)` per layer per execution (GPU only)."""
    import tensorrt as trt

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.times: dict[str, list[float]] = defaultdict(list)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.times[layer_name].append(ms)

    return LayerTimes()


def profile_tensorrt(stage: str, context, execute: Callable[[], object], runs: int) -> StageProfile:
    """`context`: an IExecutionContext of an engine built with ProfilingVerbosity.DETAILED; `execute` runs it
    once synchronously (execute_v2 or enqueue + stream sync). Timing run first, then the profiled runs."""
    result = StageProfile(stage, "tensorrt", _median_ms(execute, runs), runs)
    profiler = tensorrt_profiler()
    context.profiler = profiler
    try:
        for _ in range(runs):
            execute()
    finally:
        context.profiler = None
    for name, times in profiler.times.items():
        result.layers[name] = Layer(name, "trt", len(times), float(sum(times)), samples=list(times))
    return result
