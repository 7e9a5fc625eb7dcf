"""Stage wrappers around the runtime's torch modules and their ONNX export.

Every graph has fixed ranks, explicit masks and no data-dependent shapes; the only dynamic dims are
the batch of images and the token counts. I/O names and dtypes are the contract with the runtime's
onnxruntime backend and the TensorRT profiles (see `STAGE_IO`).

The decode graph takes N >= 1 new tokens (N = 1 per generated token, N = prompt length once to
fill the cache) and returns only their keys/values: the host owns the cache of `capacity` slots and
writes them at their slots, so the graph never scatters and its cache input keeps one static shape.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rynn_edge.runtime.action_head import ActionHead
from rynn_edge.runtime.backbone import ChameleonBackbone, HeadNorm
from rynn_edge.runtime.vqgan import VQGAN

OPSET = 18
PROTOBUF_LIMIT = 2**31 - 2**24  # stay clear of protobuf's 2 GiB ceiling (headers, graph, names)
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


class StaticHeadNorm(HeadNorm):
    """HeadNorm with head_dim as a Python int: the TorchScript exporter cannot take a traced
    `x.shape[-1]` as LayerNorm's normalized_shape."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x, (self.weight.shape[-1],), None, None, eps=1e-5)
        return x * self.weight + self.bias


def exportable(backbone: ChameleonBackbone) -> ChameleonBackbone:
    """Swap every HeadNorm for StaticHeadNorm in place (same parameters, same ops)."""
    for layer in backbone.layers:
        for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
            norm.__class__ = StaticHeadNorm
    return backbone


class BackbonePrefill(nn.Module):
    """ids, positions int64 [1, L], key_mask bool [1, L] -> final-norm hidden fp32 [1, L, H]."""

    def __init__(self, backbone: ChameleonBackbone):
        super().__init__()
        self.backbone = exportable(backbone)

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
        self.backbone = exportable(backbone)

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


def export_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    stage: str,
    dynamic: dict[str, dict[int, str]],
    path: Path,
) -> Path:
    """torch -> ONNX at `path` (weights in `path.data` when the graph would pass protobuf's limit)."""
    io = STAGE_IO[stage]
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated upstream but needs no onnxscript and keeps plain ops.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=list(io.inputs),
            output_names=list(io.outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save with external data (one `<name>.data` file) when the weights exceed protobuf's limit."""
    external = sum(len(t.raw_data) for t in model.graph.initializer) > PROTOBUF_LIMIT
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )

