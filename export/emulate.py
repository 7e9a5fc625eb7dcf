"""bf16 graphs on onnxruntime's CPU provider, which has Cast to/from bfloat16 but no bf16 compute kernels.

`emulate_bf16` rewrites a copy of a graph so that every bf16 tensor becomes an fp32 tensor holding a
bf16 value: bf16 initializers and inputs are widened (exact), and every node that produced bf16 now
computes in fp32 and its output is rounded to bf16 (Cast to bf16, Cast back; round-to-nearest-even).
That is a bf16 network with fp32 accumulation inside each op, which is how TensorRT's bf16 kernels
compute as well, so the accuracy gate measures the exported graph itself, not a torch stand-in.
The accuracy report says so (`measured_with`).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

BF16, FP32 = TensorProto.BFLOAT16, TensorProto.FLOAT
MEASURED_WITH = "bf16 graph emulated (fp32 kernels, every bf16 tensor rounded to bf16 after each op)"


def has_bf16(model: onnx.ModelProto) -> bool:
    g = model.graph
    values = [*g.input, *g.output, *g.value_info]
    return any(v.type.tensor_type.elem_type == BF16 for v in values) or any(
        i.data_type == BF16 for i in g.initializer
    )


def _widen_tensor(t: TensorProto) -> TensorProto:
    """A small bf16 tensor (a Constant's value) as fp32 with the same values."""
    return numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name)


def emulate_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The emulation graph of a bf16 `model` (a copy; `model` is not changed). Initializers stay bf16 in
    their (external) data and are widened by a Cast node, so weights are not copied here."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]
    }
    g = m.graph
    nodes: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}
    for init in g.initializer:
        if init.data_type == BF16:
            init.name, wide = f"{init.name}/bf16", init.name
            nodes.append(helper.make_node("Cast", [init.name], [wide], name=f"{wide}/widen", to=FP32))
    for value in [*g.input, *g.output]:
        if value.type.tensor_type.elem_type == BF16:
            value.type.tensor_type.elem_type = FP32
    for value in g.input:
        if types.get(value.name) == BF16:  # graph inputs: round what the caller passes to bf16
            rounded = f"{value.name}/as_bf16"
            nodes += _round(value.name, rounded)
            rename[value.name] = rounded
    outputs = {o.name for o in g.output}
    for node in g.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        for attr in node.attribute:
            if attr.name == "to" and attr.i == BF16:
                attr.i = FP32
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == BF16:
                attr.t.CopyFrom(_widen_tensor(attr.t))
        rounded = [o for o in node.output if types.get(o) == BF16]
        for out in rounded:
            node.output[list(node.output).index(out)] = f"{out}/fp32"
        nodes.append(node)
        for out in rounded:
            nodes += _round(f"{out}/fp32", out)
    del g.value_info[:]
    del g.node[:]
    g.node.extend(nodes)
    assert outputs == {o.name for o in g.output}
    return m


def _round(src: str, dst: str) -> list[onnx.NodeProto]:
    mid = f"{dst}/bf16"
    return [
        helper.make_node("Cast", [src], [mid], name=f"{mid}/round", to=BF16),
        helper.make_node("Cast", [mid], [dst], name=f"{dst}/widen", to=FP32),
    ]
