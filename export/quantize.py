"""Explicit quantization of the backbone graphs: Q/DQ nodes written with plain ONNX ops.

TensorRT 11 only takes explicit quantization, and onnxruntime runs the same graphs on a CPU, so the
result is checkable everywhere. We write the nodes ourselves instead of calling NVIDIA ModelOpt:
`nvidia-modelopt[onnx]` replaces onnxruntime with onnxruntime-gpu, pins an older onnx and pulls
cupy-cuda12x, and its ONNX PTQ silently skips GEMV-shaped MatMuls; here every linear is quantized
by construction and `check_quantized` proves it.

Every q/k/v/o/gate/up/down linear of every layer is quantized (embeddings and lm_head stay float), except
the ones the accuracy fallback keeps float (`kept`, listed in the manifest). Per linear, a `Plan` holds
the numbers: an optional per-input-channel smoothing divisor s (an explicit Mul by 1/s on the
activation, the weight rows multiplied by s), the static activation scale and the quantized weight.
`plan_linear` makes it, the graph writer writes it and `fake_quant` simulates it (the search in
`rynn_edge.export.search` picks s, and the rounding, per linear by simulating), so the three cannot
disagree. The weight is rounded to nearest or, where the search finds it better, with GPTQ against the
linear's calibration inputs (`rynn_edge.export.gptq`); the scales are the same either way.

Schemes:
- int8: W8A8, activations per-tensor int8 (calibrated absmax after smoothing), weights per-output-channel
  int8, symmetric.
- int4: weight-only (W4A16), blockwise along K (block 32, or K when it does not divide), MSE-clipped
  block scales after the activation-aware scaling s; DequantizeLinear with block_size (opset 21).
- fp8: W8A8 in FLOAT8E4M3FN, per-tensor scales (amax / 448) for activations and weights.
Methods (`--quantization`): `outlier-safe` (default) runs on the Hadamard-rotated backbone
(`rynn_edge.export.rotation`) with s and the rounding searched per linear (QuaRot's recipe: rotation,
then GPTQ); `plain` is the pre-rotation recipe (int8
SmoothQuant alpha 0.5, int4 and fp8 round-to-nearest), kept as the baseline the tests show failing on
outlier checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rynn_edge.export import gptq
from rynn_edge.export.onnx_graphs import WeightFile, linear_weight

QUANT_OPSET = 21
SMOOTH_ALPHA = 0.5  # the plain int8 recipe
INT4_BLOCK = 32  # finer than the usual 128: round-to-nearest error grows with the block
FP8_MAX = 448.0
SCHEMES = ("int8", "int4", "fp8")
METHODS = ("outlier-safe", "plain")


def backbone_linears(backbone: nn.Module) -> dict[str, nn.Linear]:
    """The quantized linears: every projection inside the decoder layers (not lm_head)."""
    return {
        name: m
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("layers.")
    }


@dataclass
class Plan:
    """How one linear is quantized. `weight` is the low-bit weight [K, N] (int8 / int4 / fp8 values),
    dequantized as weight * weight_scale (per output channel [N], per tensor [] or per block [K/B, N])."""

    scheme: str
    alpha: float
    smooth: np.ndarray | None  # [K]: the activation is divided by it, weight rows multiplied
    act_scale: float | None  # None: weight-only
    weight: np.ndarray
    weight_scale: np.ndarray
    block: int = 0

    def as_stored(self, float_type: type) -> Plan:
        """This plan with its scales rounded as a graph of float type `float_type` stores them
        (`_write`: the smoothing's inverse, the activation and weight scales)."""

        def rounded(v):
            return np.asarray(v, np.float32).astype(float_type).astype(np.float32)

        return replace(
            self,
            smooth=None if self.smooth is None else 1.0 / rounded(1.0 / self.smooth),
            act_scale=None if self.act_scale is None else float(rounded(self.act_scale)),
            weight_scale=rounded(self.weight_scale),
        )

    def dequantized(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The fp32 weight [K, N] the quantized graph computes with, on `device`."""
        w = torch.from_numpy(self.weight.astype(np.float32)).to(device)
        scale = torch.from_numpy(np.asarray(self.weight_scale, np.float32)).to(device)
        if self.block:
            k, n = w.shape
            return (w.reshape(k // self.block, self.block, n) * scale[:, None]).reshape(k, n)
        return w * scale


def smoothing(absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray | None:
    """SmoothQuant's s_j = max|x_j|^a / max|W_j|^(1-a) (AWQ's activation-aware scale is the same form);
    None for alpha 0 (no Mul in the graph)."""
    if alpha == 0:
        return None
    w_max = np.abs(w).max(axis=1)
    s = np.where(
        (absmax > 0) & (w_max > 0),
        np.power(np.maximum(absmax, 1e-8), alpha) / np.power(np.maximum(w_max, 1e-8), 1 - alpha),
        1.0,
    )
    return (s / np.sqrt(s.max() * s.min())).clip(1e-4, 1e4).astype(np.float32)  # geometric centre 1


def plan_linear(
    scheme: str,
    w: np.ndarray,
    absmax: np.ndarray | None,
    alpha: float,
    clip: bool = True,
    rows: torch.Tensor | None = None,
) -> Plan:
    """The quantization of weight `w` [K, N] (fp32) whose input has per-channel maxima `absmax` [K];
    `clip`: search int4 block clipping (outlier-safe) instead of plain absmax; `rows` [M, K] (the
    linear's calibration inputs): round with GPTQ against them (`rynn_edge.export.gptq`) instead of to
    nearest. The scales are the same either way."""
    s = smoothing(absmax, w, alpha) if absmax is not None else None
    if s is not None:
        w = w * s[:, None]
    x_max = None if absmax is None else float((absmax if s is None else absmax / s).max())
    if x_max is None and scheme != "int4":
        raise ValueError(f"{scheme} quantizes activations and needs calibration statistics")
    k, n = w.shape
    block, act_scale = 0, None
    if scheme == "int8":
        scale = (np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0).astype(np.float32)
        act_scale = max(x_max, 1e-8) / 127.0
    elif scheme == "fp8":
        scale = np.asarray(np.float32(max(float(np.abs(w).max()), 1e-8) / FP8_MAX))
        act_scale = max(x_max, 1e-8) / FP8_MAX
    elif scheme == "int4":
        block = INT4_BLOCK if k % INT4_BLOCK == 0 else k
        scale = _int4_scales(w.reshape(k // block, block, n), clip)
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    device = "cpu" if rows is None else rows.device  # GPTQ runs where its calibration rows are
    if rows is not None and s is not None:
        rows = rows / torch.from_numpy(s).to(device)
    q = _round(scheme, torch.from_numpy(w).to(device), torch.from_numpy(scale).to(device), block, rows)
    return Plan(scheme, alpha, s, act_scale, q.cpu().numpy().astype(LOW_BIT[scheme][1]), scale, block)


INT_LEVELS = {"int8": (-127, 127), "int4": (-8, 7)}


def _levels(scheme: str, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The grid level nearest to each of `w` / `scale` (as fp32)."""
    if scheme == "fp8":
        return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    low, high = INT_LEVELS[scheme]
    return torch.clamp(torch.round(w / scale), low, high)


def _round(
    scheme: str, w: torch.Tensor, scale: torch.Tensor, block: int, rows: torch.Tensor | None
) -> torch.Tensor:
    if rows is None:  # every row at once; int4 scales broadcast over their blocks
        if not block:
            return _levels(scheme, w, scale)
        k, n = w.shape
        return _levels(scheme, w.reshape(k // block, block, n), scale[:, None]).reshape(k, n)
    row_scale = (lambda i: scale[i // block]) if block else (lambda i: scale)
    return gptq.round_compensated(w, rows, row_scale, lambda row, s: _levels(scheme, row, s))


INT4_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def _int4_scales(blocks: np.ndarray, clip: bool) -> np.ndarray:
    """Per block [K/B, N]: absmax / 7, or (clip) the clipped absmax among INT4_CLIPS with the least
    squared rounding error of the block (the MSE clipping of AWQ/GPTQ practice)."""
    absmax = np.maximum(np.abs(blocks).max(axis=1), 1e-8)
    best = best_err = None
    for ratio in INT4_CLIPS if clip else (1.0,):
        scale = absmax * ratio / 7.0
        err = ((np.clip(np.round(blocks / scale[:, None]), -8, 7) * scale[:, None] - blocks) ** 2).sum(axis=1)
        if best is None:
            best, best_err = scale, err
        else:
            better = err < best_err
            best, best_err = np.where(better, scale, best), np.where(better, err, best_err)
    return best.astype(np.float32)


def fake_quant(plan: Plan, x: torch.Tensor, w_dq: torch.Tensor) -> torch.Tensor:
    """What the quantized graph computes for input rows x [M, K] (fp32), given plan.dequantized() on x's
    device."""
    if plan.smooth is not None:
        x = x / torch.from_numpy(plan.smooth).to(x.device)
    if plan.act_scale is not None:
        a = plan.act_scale
        if plan.scheme == "int8":
            x = torch.clamp(torch.round(x / a), -128, 127) * a
        else:
            x = (x / a).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * a
    return x @ w_dq


@contextmanager
def simulated(plans: dict[nn.Linear, Plan]) -> Iterator[None]:
    """Within the block each linear in `plans` computes what its quantized graph computes (`fake_quant`).
    The dequantized weight is made on the linear's device at each call: holding every linear's would
    double the weights in memory."""

    def swap(linear, args, out):
        plan = plans[linear]
        x = args[0].float().reshape(-1, args[0].shape[-1])
        return fake_quant(plan, x, plan.dequantized(x.device)).reshape(out.shape).to(out.dtype)

    hooks = [linear.register_forward_hook(swap) for linear in plans]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def match_linears(model: onnx.ModelProto, backbone: nn.Module) -> dict[str, onnx.NodeProto]:
    """torch linear name -> the one MatMul that reads its weight (named `onnx_graphs.linear_weight`)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul":
            readers.setdefault(node.input[1], []).append(node)
    found, missing = {}, []
    for name in backbone_linears(backbone):
        hits = readers.get(linear_weight(name), [])
        if len(hits) == 1:
            found[name] = hits[0]
        else:
            missing.append(name)
    if missing:
        raise RuntimeError(f"backbone linear(s) not found once in the ONNX graph: {', '.join(missing[:5])}")
    return found


class _Writer:
    """Adds initializers/nodes to a graph and rewires MatMul inputs. Scales take the dtype of the
    weight they replace (the exporter leaves some linears fp32 inside an fp16 graph).

    A linear's weight is the graph's initializer when it has one, else (a graph from
    `onnx_graphs.export_backbone_graph`, weights still inputs) the torch linear's. With a `file`, every
    new tensor of 1 KiB or more goes to that external-data file as it is made."""

    def __init__(self, model: onnx.ModelProto, file: WeightFile | None):
        self.graph = model.graph
        self.file = file
        self.inits = {i.name: i for i in model.graph.initializer}
        self.new_nodes: dict[str, list[onnx.NodeProto]] = {}  # by MatMul output: inserted before it
        self.np_float: type = np.float32

    def weight(self, node: onnx.NodeProto, linear: nn.Linear) -> np.ndarray:
        """The float32 weight [K, N] of `node`, as the graph stores it (see `stored_type`)."""
        init = self.inits.get(node.input[1])
        dtype = self.stored_type(node)
        if init is not None:
            return numpy_helper.to_array(init).astype(np.float32)
        return linear.weight.detach().t().float().numpy().astype(dtype).astype(np.float32)

    def stored_type(self, node: onnx.NodeProto) -> np.dtype:
        """The dtype of `node`'s weight in this graph (the exporter leaves some linears fp32 inside an
        fp16 graph); later scales of this node take it."""
        init = self.inits.get(node.input[1])
        if init is not None:
            elem_type = init.data_type
        else:
            elem_type = next(
                i for i in self.graph.input if i.name == node.input[1]
            ).type.tensor_type.elem_type
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        self.np_float = dtype.type
        return dtype

    def const(self, name: str, value: np.ndarray) -> str:
        tensor = numpy_helper.from_array(value, name)
        if self.file is not None and len(tensor.raw_data) >= 1024:
            tensor = self.file.add(tensor)
        self.graph.initializer.append(tensor)
        return name

    def floats(self, name: str, value: np.ndarray) -> str:
        return self.const(name, np.asarray(value, dtype=np.float32).astype(self.np_float))

    def replace_weight(self, node: onnx.NodeProto, dq_inputs: list[str], axis: int, block: int = 0) -> None:
        old = node.input[1]
        out = f"{node.output[0]}/weight_dq"
        attrs = {"axis": axis, **({"block_size": block} if block else {})}
        self._insert(node, helper.make_node("DequantizeLinear", dq_inputs, [out], name=out, **attrs))
        node.input[1] = out
        if old in self.inits:
            self.graph.initializer.remove(self.inits.pop(old))
        else:
            self.graph.input.remove(next(i for i in self.graph.input if i.name == old))

    def smooth_input(self, node: onnx.NodeProto, pre_scale: str) -> str:
        smoothed = f"{node.output[0]}/smooth"
        self._insert(node, helper.make_node("Mul", [node.input[0], pre_scale], [smoothed], name=smoothed))
        node.input[0] = smoothed
        return smoothed

    def fake_quant_input(self, node: onnx.NodeProto, scale: str, zero: str, pre_scale: str | None) -> None:
        x = node.input[0] if pre_scale is None else self.smooth_input(node, pre_scale)
        q, dq = f"{node.output[0]}/input_q", f"{node.output[0]}/input_dq"
        self._insert(node, helper.make_node("QuantizeLinear", [x, scale, zero], [q], name=q))
        self._insert(node, helper.make_node("DequantizeLinear", [q, scale, zero], [dq], name=dq))
        node.input[0] = dq

    def _insert(self, node: onnx.NodeProto, new: onnx.NodeProto) -> None:
        self.new_nodes.setdefault(node.output[0], []).append(new)

    def finish(self, model: onnx.ModelProto) -> None:
        nodes = []
        for node in self.graph.node:
            nodes.extend(self.new_nodes.get(node.output[0], []))
            nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, QUANT_OPSET)


def quantize_backbone(
    models: list[onnx.ModelProto],
    backbone: nn.Module,
    plan: Callable[[str, np.ndarray], Plan],
    kept: frozenset[str] = frozenset(),
    file: WeightFile | None = None,
) -> list[onnx.ModelProto]:
    """Quantize every backbone linear of each graph in `models` (prefill and decode of one backbone) in
    place as `plan(name, w)` says, computed once per linear for all of them (w: its float weight [K, N]
    as the first graph stores it; linears in `kept` stay float); returns `models`. With `file`, the
    quantized weights are written there one linear at a time (see _Writer); the graphs share them."""
    writers = [(_Writer(model, file), match_linears(model, backbone)) for model in models]
    for name, linear in backbone_linears(backbone).items():
        if name in kept:
            continue
        (first, first_nodes), *others = writers
        linear_plan = plan(name, first.weight(first_nodes[name], linear))
        for writer, nodes in others:
            writer.stored_type(nodes[name])
        for writer, nodes in writers:
            _write(writer, nodes[name], name, linear_plan)
    for (writer, _), model in zip(writers, models, strict=True):
        writer.finish(model)
    return models


LOW_BIT = {
    "int8": ("int8", np.int8),
    "fp8": ("fp8", ml_dtypes.float8_e4m3fn),
    "int4": ("int4", ml_dtypes.int4),
}


def _write(writer: _Writer, node: onnx.NodeProto, name: str, plan: Plan) -> None:
    suffix, zero_type = LOW_BIT[plan.scheme]
    if plan.act_scale is not None:
        writer.fake_quant_input(
            node,
            writer.floats(f"{name}.input_scale", np.float32(plan.act_scale)),
            writer.const(f"{name}.zero_{suffix}", np.zeros((), zero_type)),
            None if plan.smooth is None else writer.floats(f"{name}.smooth_inv", 1.0 / plan.smooth),
        )
    elif plan.smooth is not None:  # weight-only: the activation-aware scaling is a plain Mul
        writer.smooth_input(node, writer.floats(f"{name}.smooth_inv", 1.0 / plan.smooth))
    zero_shape = plan.weight_scale.shape
    writer.replace_weight(
        node,
        [
            writer.const(f"{name}.weight_{suffix}", plan.weight),
            writer.floats(f"{name}.weight_scale", plan.weight_scale),
            writer.const(f"{name}.weight_zero", np.zeros(zero_shape, zero_type)),
        ],
        axis=0 if plan.block else 1,
        block=plan.block,
    )


@dataclass(frozen=True)
class QDQCount:
    linears: int
    quantized: int
    quantize_linear: int
    dequantize_linear: int
    kept: int = 0

    def as_dict(self) -> dict[str, int]:
        keys = ("linears", "quantized", "kept", "quantize_linear", "dequantize_linear")
        return {k: getattr(self, k) for k in keys}


def check_quantized(
    model: onnx.ModelProto, scheme: str, n_layers: int, vocab_size: int, kept: frozenset[str] = frozenset()
) -> QDQCount:
    """Prove every backbone linear is quantized: its weight comes from a DequantizeLinear of a low-bit
    initializer and (int8, fp8) its input from a Q -> DQ pair; only the linears in `kept` (torch names)
    may read a float weight. Raises naming what is missing."""
    kept_weights = {linear_weight(name) for name in kept}
    low_bit = {"int8": TensorProto.INT8, "int4": TensorProto.INT4, "fp8": TensorProto.FLOAT8E4M3FN}[scheme]
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    linears = quantized = 0
    problems = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        w = inits.get(node.input[1])
        if w is not None and len(w.dims) == 2 and w.dims[1] != vocab_size and w.name != "norm.unrotate":
            linears += 1
            if w.name not in kept_weights:
                problems.append(f"{node.name}: float weight {list(w.dims)}")
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        linears += 1
        if inits[dq.input[0]].data_type != low_bit:
            problems.append(f"{node.name}: weight is not {TensorProto.DataType.Name(low_bit)}")
            continue
        if scheme != "int4":
            act = producer.get(node.input[0])
            q = producer.get(act.input[0]) if act is not None and act.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                problems.append(
                    f"{node.name}: input is not quantized (no QuantizeLinear -> DequantizeLinear)"
                )
                continue
        quantized += 1
    expected = 7 * n_layers
    if linears != expected:
        problems.append(f"found {linears} backbone linears, expected 7 per layer x {n_layers} = {expected}")
    counts = {
        op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")
    }
    if linears - quantized != len(kept):
        problems.append(f"{linears - quantized} float linears, {len(kept)} kept by the fallback")
    if problems:
        raise RuntimeError(f"{scheme} quantization incomplete: " + "; ".join(problems[:8]))
    return QDQCount(linears, quantized, counts["QuantizeLinear"], counts["DequantizeLinear"], len(kept))
