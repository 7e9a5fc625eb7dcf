"""Explicit quantization of the backbone graphs: Q/DQ nodes written with plain ONNX ops.

TensorRT 11 only takes explicit quantization, and onnxruntime runs the same graphs on a CPU, so the
result is checkable everywhere. We write the nodes ourselves instead of calling NVIDIA ModelOpt:
`nvidia-modelopt[onnx]` replaces onnxruntime with onnxruntime-gpu, pins an older onnx and pulls
cupy-cuda12x, and its ONNX PTQ silently skips GEMV-shaped MatMuls; here every linear is quantized
by construction and `check_quantized` proves it.

Schemes (every q/k/v/o/gate/up/down linear of every layer; embeddings and lm_head stay float):
- int8: W8A8, SmoothQuant (alpha 0.5) folded into the weights with a per-channel Mul on the activation,
  activations per-tensor int8 (calibrated absmax), weights per-output-channel int8, symmetric.
- int4: weight-only (W4A16), blockwise along K (block 32, or K when it does not divide), round-to-nearest,
  DequantizeLinear with block_size (opset 21).
- fp8: W8A8 in FLOAT8E4M3FN, per-tensor scales (amax / 448) for activations and weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rynn_edge.export.onnx_graphs import WeightFile, linear_weight

QUANT_OPSET = 21
SMOOTH_ALPHA = 0.5
INT4_BLOCK = 32  # finer than the usual 128: round-to-nearest error grows with the block
FP8_MAX = 448.0
SCHEMES = ("int8", "int4", "fp8")


@dataclass
class Calibration:
    """Per-input-channel absmax of every backbone linear's input, keyed by torch module name."""

    absmax: dict[str, np.ndarray]

    @classmethod
    def collect(cls, backbone: nn.Module, run_samples) -> Calibration:
        """Hook every backbone linear, call `run_samples()` (which runs prefills), keep the maxima."""
        absmax: dict[str, np.ndarray] = {}
        hooks = []
        for name, module in backbone_linears(backbone).items():

            def hook(_m, args, name=name):
                x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(0).numpy()
                absmax[name] = np.maximum(absmax[name], x) if name in absmax else x

            hooks.append(module.register_forward_pre_hook(hook))
        try:
            run_samples()
        finally:
            for h in hooks:
                h.remove()
        return cls(absmax)


def backbone_linears(backbone: nn.Module) -> dict[str, nn.Linear]:
    """The quantized linears: every projection inside the decoder layers (not lm_head)."""
    return {
        name: m
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("layers.")
    }


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
        """The float32 weight [K, N] of `node`; later scales of this node take its stored dtype."""
        init = self.inits.get(node.input[1])
        if init is not None:
            w = numpy_helper.to_array(init)
        else:  # in the graph's dtype (the exporter leaves some linears fp32 inside an fp16 graph)
            value = next(i for i in self.graph.input if i.name == node.input[1])
            dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            w = linear.weight.detach().t().numpy().astype(dtype)
        self.np_float = w.dtype.type
        return w.astype(np.float32)

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

    def fake_quant_input(self, node: onnx.NodeProto, scale: str, zero: str, pre_scale: str | None) -> None:
        x = node.input[0]
        if pre_scale is not None:
            smoothed = f"{node.output[0]}/smooth"
            self._insert(node, helper.make_node("Mul", [x, pre_scale], [smoothed], name=smoothed))
            x = smoothed
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
    model: onnx.ModelProto,
    backbone: nn.Module,
    scheme: str,
    calibration: Calibration | None,
    file: WeightFile | None = None,
) -> onnx.ModelProto:
    """Quantize every backbone linear of `model` in place with `scheme`; returns `model`. With `file`,
    the quantized weights are written there one linear at a time (see _Writer)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    if scheme != "int4" and calibration is None:
        raise ValueError(f"{scheme} quantizes activations and needs calibration statistics")
    writer = _Writer(model, file)
    linears = backbone_linears(backbone)
    for name, node in match_linears(model, backbone).items():
        w = writer.weight(node, linears[name])  # [K, N]
        if scheme == "int4":
            _int4(writer, node, name, w)
        elif scheme == "int8":
            _int8(writer, node, name, w, calibration.absmax[name])
        else:
            _fp8(writer, node, name, w, calibration.absmax[name])
    writer.finish(model)
    return model


def _int8(writer: _Writer, node: onnx.NodeProto, name: str, w: np.ndarray, absmax: np.ndarray) -> None:
    w_max = np.abs(w).max(axis=1)
    smooth = np.where(
        (absmax > 0) & (w_max > 0),
        np.power(np.maximum(absmax, 1e-8), SMOOTH_ALPHA)
        / np.power(np.maximum(w_max, 1e-8), 1 - SMOOTH_ALPHA),
        1.0,
    ).clip(1e-4, 1e4)
    w = w * smooth[:, None]
    act_scale = max(float((absmax / smooth).max()), 1e-8) / 127.0
    w_scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0
    q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    zero = writer.const(f"{name}.zero_int8", np.zeros((), np.int8))
    writer.fake_quant_input(
        node,
        writer.floats(f"{name}.input_scale", np.float32(act_scale)),
        zero,
        writer.floats(f"{name}.smooth_inv", 1.0 / smooth),
    )
    writer.replace_weight(
        node,
        [
            writer.const(f"{name}.weight_int8", q),
            writer.floats(f"{name}.weight_scale", w_scale),
            writer.const(f"{name}.weight_zero", np.zeros(w.shape[1], np.int8)),
        ],
        axis=1,
    )


def _fp8(writer: _Writer, node: onnx.NodeProto, name: str, w: np.ndarray, absmax: np.ndarray) -> None:

    act_scale = max(float(absmax.max()), 1e-8) / FP8_MAX
    w_scale = max(float(np.abs(w).max()), 1e-8) / FP8_MAX
    zero = writer.const(f"{name}.zero_fp8", np.zeros((), ml_dtypes.float8_e4m3fn))
    writer.fake_quant_input(node, writer.floats(f"{name}.input_scale", np.float32(act_scale)), zero, None)
    q = (w / w_scale).astype(ml_dtypes.float8_e4m3fn)
    writer.replace_weight(
        node,
        [
            writer.const(f"{name}.weight_fp8", q),
            writer.floats(f"{name}.weight_scale", np.float32(w_scale)),
            writer.const(f"{name}.weight_zero", np.zeros((), ml_dtypes.float8_e4m3fn)),
        ],
        axis=1,
    )


def _int4(writer: _Writer, node: onnx.NodeProto, name: str, w: np.ndarray) -> None:

    k, n = w.shape
    block = INT4_BLOCK if k % INT4_BLOCK == 0 else k
    blocks = w.reshape(k // block, block, n)
    scale = np.maximum(np.abs(blocks).max(axis=1), 1e-8) / 7.0  # [K/B, N]
    q = np.clip(np.round(blocks / scale[:, None]), -8, 7).reshape(k, n).astype(ml_dtypes.int4)
    writer.replace_weight(
        node,
        [
            writer.const(f"{name}.weight_int4", q),
            writer.floats(f"{name}.weight_scale", scale),
            writer.const(f"{name}.weight_zero", np.zeros_like(scale, dtype=ml_dtypes.int4)),
        ],
        axis=0,
        block=block,
    )


@dataclass(frozen=True)
class QDQCount:
    linears: int
    quantized: int
    quantize_linear: int
    dequantize_linear: int

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("linears", "quantized", "quantize_linear", "dequantize_linear")}


def check_quantized(model: onnx.ModelProto, scheme: str, n_layers: int, vocab_size: int) -> QDQCount:
    """Prove every backbone linear is quantized: its weight comes from a DequantizeLinear of a low-bit
    initializer and (int8, fp8) its input from a Q -> DQ pair. Raises naming what is missing."""
    low_bit = {"int8": TensorProto.INT8, "int4": TensorProto.INT4, "fp8": TensorProto.FLOAT8E4M3FN}[scheme]
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    linears = quantized = 0
    problems = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        w = inits.get(node.input[1])
        if w is not None and len(w.dims) == 2 and w.dims[1] != vocab_size:
            linears += 1
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
    if problems:
        raise RuntimeError(f"{scheme} quantization incomplete: " + "; ".join(problems[:8]))
    counts = {
        op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")
    }
    return QDQCount(linears, quantized, counts["QuantizeLinear"], counts["DequantizeLinear"])
