"""Stage wrappers around the runtime's torch modules and their ONNX export.

Every graph has fixed ranks, explicit masks and no data-dependent shapes; the only dynamic dims are
the batch of images and the token counts. I/O names and dtypes are the contract with the runtime's
onnxruntime backend and the TensorRT profiles (see `STAGE_IO`).

The decode graph takes N >= 1 new tokens (N = 1 per generated token, N = prompt length once to
fill the cache) and returns only their keys/values: the host owns the cache of `capacity` slots and
writes them at their slots, so the graph never scatters and its cache input keeps one static shape.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper
from torch import Tensor, nn

from rynn_edge.runtime.model.action_head import ActionHead
from rynn_edge.runtime.model.backbone import ChameleonBackbone
from rynn_edge.runtime.model.vqgan import VQGAN

OPSET = 18
VQ_FACTOR = 16


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension's TensorRT profile range."""

    name: str
    min: int
    opt: int
    max: int


class VQEncoder(nn.Module):
    """images [B, 3, S, S] in [-1, 1] -> codes int32 [B, (S/16)^2]; quant_conv + distances stay fp32."""

    def __init__(self, vq: VQGAN, dtype: torch.dtype):
        super().__init__()
        self.encoder, self.quant_conv, self.quantize = vq.encoder.to(dtype), vq.quant_conv, vq.quantize
        self.dtype = dtype

    def forward(self, images: Tensor) -> Tensor:
        z = self.encoder(images.to(self.dtype)).float()
        return self.quantize(self.quant_conv(z)).to(torch.int32)


class VQDecoder(nn.Module):
    """codes int32 [B, h, w] -> images uint8 [B, 16h, 16w, 3]."""

    def __init__(self, vq: VQGAN, dtype: torch.dtype):
        super().__init__()
        self.quantize, self.post_quant_conv = vq.quantize, vq.post_quant_conv.to(dtype)
        self.decoder, self.dtype = vq.decoder.to(dtype), dtype

    def forward(self, codes: Tensor) -> Tensor:
        latents = self.quantize.lookup(codes.long()).to(self.dtype)
        pixels = self.decoder(self.post_quant_conv(latents)).float()
        unit = (torch.clamp(pixels, -1.0, 1.0) + 1.0) / 2.0
        return (unit.permute(0, 2, 3, 1) * 255).to(torch.uint8)


class MatMulLinear(nn.Module):
    """A bias-free nn.Linear as `x @ weight_t` with weight_t [in, out]: exported with
    `export_params=False` the graph reads a named weight input straight into MatMul, where the exporter
    would otherwise fold Transpose(W) into an anonymous constant."""

    def __init__(self, weight_t: Tensor):
        super().__init__()
        self.weight_t = nn.Parameter(weight_t, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight_t


def linear_weight(name: str) -> str:
    """ONNX name of backbone linear `name`'s weight [in, out] in the backbone graphs."""
    return f"{name}.weight_t"


@contextmanager
def matmul_linears(backbone: ChameleonBackbone) -> Iterator[None]:
    """Swap every nn.Linear of `backbone` for a MatMulLinear while exporting, then put them back.

    The weights are re-laid out [in, out] in place, one at a time (the linear keeps the transposed view,
    same values): the exporter copies non-contiguous parameters, which would double the model."""
    swapped = [
        (parent, attr, child)
        for parent in backbone.modules()
        for attr, child in parent.named_children()
        if isinstance(child, nn.Linear) and child.bias is None
    ]
    for parent, attr, child in swapped:
        weight_t = child.weight.detach().t().contiguous()  # a no-op once laid out
        child.weight = nn.Parameter(weight_t.t(), requires_grad=False)
        setattr(parent, attr, MatMulLinear(weight_t))
    try:
        yield
    finally:
        for parent, attr, child in swapped:
            setattr(parent, attr, child)


class BackbonePrefill(nn.Module):
    """ids, positions int64 [1, L], key_mask bool [1, L] -> final-norm hidden fp32 [1, L, H]."""

    def __init__(self, backbone: ChameleonBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, ids: Tensor, positions: Tensor, key_mask: Tensor) -> Tensor:
        return self.backbone.prefill(ids, positions, key_mask).float()


class BackboneDecode(nn.Module):
    """N new tokens against a host-owned cache of S slots.

    ids, positions int64 [1, N]; past_k, past_v [layers, 1, heads, S, head_dim];
    attn_mask bool [1, N, S + N] (keys = the S cache slots, then the N new tokens; True = attend)
    -> logits fp32 [1, V] of the last new token, present_k, present_v [layers, 1, heads, N, head_dim].
    """

    def __init__(self, backbone: ChameleonBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(
        self, ids: Tensor, positions: Tensor, past_k: Tensor, past_v: Tensor, attn_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        bb = self.backbone
        x = bb.embed_tokens(ids)
        cos, sin = bb._rope(positions, x.dtype)
        mask = attn_mask[:, None]
        new_k, new_v = [], []
        for i, layer in enumerate(bb.layers):
            q, k, v = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)
            keys = torch.cat([past_k[i].to(k.dtype), k], dim=2)
            values = torch.cat([past_v[i].to(v.dtype), v], dim=2)
            x = x + layer.self_attn.out(q, keys, values, mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            new_k.append(k)
            new_v.append(v)
        logits = bb.logits(bb.norm(x[:, -1:]))[:, 0]
        return logits, torch.stack(new_k).to(past_k.dtype), torch.stack(new_v).to(past_v.dtype)


class ActionHeadGraph(nn.Module):
    """hidden fp32 [1, L, H], valid bool [1, L] -> normalized actions fp32 [1, T, A]."""

    def __init__(self, head: ActionHead, dtype: torch.dtype):
        super().__init__()
        self.head, self.dtype = head.to(dtype), dtype

    def forward(self, hidden: Tensor, valid: Tensor) -> Tensor:
        return self.head(hidden.to(self.dtype), valid).float()


@dataclass(frozen=True)
class StageIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


STAGE_IO = {
    "vq_encoder": StageIO(("images",), ("codes",)),
    "backbone_prefill": StageIO(("ids", "positions", "key_mask"), ("hidden",)),
    "action_head": StageIO(("hidden", "valid"), ("actions",)),
    "backbone_decode": StageIO(
        ("ids", "positions", "past_k", "past_v", "attn_mask"), ("logits", "present_k", "present_v")
    ),
    "vq_decoder": StageIO(("codes",), ("images",)),
}


def _export(
    module: nn.Module,
    example: tuple[Tensor, ...],
    stage: str,
    dynamic: dict[str, dict[int, str]],
    f: str | io.BytesIO,
    params: bool,
) -> None:
    names = STAGE_IO[stage]
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated upstream but needs no onnxscript and keeps plain ops.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            example,
            f,
            input_names=list(names.inputs),
            output_names=list(names.outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            export_params=params,
            dynamo=False,
        )


def export_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    stage: str,
    dynamic: dict[str, dict[int, str]],
    path: Path,
) -> Path:
    """torch -> ONNX at `path`, weights inside (the VQGAN and the action head: far below 2 GB)."""
    _export(module, example, stage, dynamic, str(path), params=True)
    return path


def export_backbone_graph(
    module: BackbonePrefill | BackboneDecode,
    example: tuple[Tensor, ...],
    stage: str,
    dynamic: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    """A backbone graph *without* its weights: every weight is a graph input named after the backbone's
    parameter (linears as `linear_weight(name)`), for `quantize` and `attach_weights` to turn into
    initializers in a WeightFile one tensor at a time. The exporter neither folds nor serializes the
    weights (the old way held the module, its folded copies and the 2 GB+ proto at once)."""
    buffer = io.BytesIO()
    with matmul_linears(module.backbone):
        _export(module, example, stage, dynamic, buffer, params=False)
    model = onnx.load_from_string(buffer.getvalue())
    prefix = "backbone."
    renamed = {i.name: i.name.removeprefix(prefix) for i in model.graph.input if i.name.startswith(prefix)}
    # The exporter casts some linears' weights to match an input whose ONNX type differs from torch's
    # (an fp16 graph's o_proj reads SDPA's fp32 output, so it runs fp32) and folds the cast into an
    # anonymous input "onnx::MatMul_N". Linears run in the order the modules are registered, so an
    # anonymous weight belongs to the linear after the last named one read before it (shape-checked).
    order = [linear_weight(n) for n, m in module.backbone.named_modules() if isinstance(m, nn.Linear)]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    params = dict(module.backbone.named_parameters())
    after = 0
    for node in model.graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if weight.startswith(prefix) and weight.removeprefix(prefix) in order:
            after = order.index(weight.removeprefix(prefix)) + 1
        elif weight.startswith("onnx::") and weight in shapes:
            name = order[min(after, len(order) - 1)]
            torch_shape = list(params[name.removesuffix("_t")].shape[::-1])  # the weight [in, out]
            if after == len(order) or f"{prefix}{name}" in renamed or shapes[weight] != torch_shape:
                raise RuntimeError(f"{stage}: cannot tell which linear's weight {weight} is")
            renamed[weight] = name
            after += 1
    for value in model.graph.input:
        value.name = renamed.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    return model


def backbone_weights(backbone: ChameleonBackbone) -> dict[str, Tensor]:
    """Graph weight name -> tensor (views, no copies) for every weight a backbone graph can read."""
    weights = dict(backbone.named_parameters())
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Linear) and module.bias is None:
            weights[linear_weight(name)] = weights.pop(f"{name}.weight").t()
    return weights


class WeightFile:
    """One external-data file that several graphs' initializers point into (prefill and decode share a
    backbone's weights, so they are stored once). Tensors are appended one at a time, each at a 64 KiB
    aligned offset (onnxruntime memory-maps aligned external data); identical bytes are stored once."""

    ALIGN = 1 << 16

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("wb")
        self._stored: dict[tuple, tuple[int, int]] = {}  # (dtype, dims, digest) -> (offset, length)

    def add(self, tensor: onnx.TensorProto, data: bytes | memoryview | None = None) -> onnx.TensorProto:
        """Store `data` (ONNX raw bytes; default: move `tensor.raw_data`) in the file; returns `tensor`,
        now referring to the file."""
        if data is None:
            data = tensor.raw_data
            tensor.ClearField("raw_data")
        key = (tensor.data_type, tuple(tensor.dims), hashlib.blake2b(data).digest())
        if key not in self._stored:
            offset = (self._file.tell() + self.ALIGN - 1) // self.ALIGN * self.ALIGN
            self._file.seek(offset)
            self._file.write(data)
            self._stored[key] = (offset, len(data))
        offset, length = self._stored[key]
        del tensor.external_data[:]
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=k, value=v)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        return tensor

    def close(self) -> None:
        self._file.close()


def attach_weights(model: onnx.ModelProto, stage: str, weights: dict[str, Tensor], file: WeightFile) -> None:
    """Turn every weight input of `model` (see export_backbone_graph) into an initializer in `file`."""
    inputs = STAGE_IO[stage].inputs
    unknown = [i.name for i in model.graph.input if i.name not in weights and i.name not in inputs]
    if unknown:
        raise RuntimeError(f"graph inputs that are neither stage inputs nor backbone weights: {unknown[:5]}")
    for value in [i for i in model.graph.input if i.name in weights]:
        elem_type = value.type.tensor_type.elem_type
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        array = np.ascontiguousarray(_numpy(weights[value.name].detach()), dtype=dtype)
        tensor = onnx.TensorProto(name=value.name, data_type=elem_type, dims=array.shape)
        model.graph.initializer.append(file.add(tensor, memoryview(array.view(np.uint8)).cast("B")))
        del array
        model.graph.input.remove(value)


def _numpy(t: Tensor) -> np.ndarray:
    """A tensor's values as numpy without a copy where possible (numpy has no bf16: ml_dtypes' view)."""
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write a graph whose weights are already in a WeightFile (the proto itself is small)."""
    path.write_bytes(model.SerializeToString())
