"""Memory of a deployed artifact, from stated formulas, and straight-line fits of measured peaks.

Runtime memory of one artifact on the TensorRT backend (unified memory on a Jetson: one pool):

    weights     = sum over the engines the backend loads (every engine in the artifact) of each
                  parameter x its bytes: decoder-layer linears at the precision (int8/fp8 1 byte, int4
                  0.5 byte + one fp16 scale per 32-weight block, int8 + one fp32 scale per output
                  channel), embeddings / lm_head / norms at the float base (2 bytes), the outlier-safe
                  rotation's fp32 H x H un-rotation, the action head fp32, the VQGAN fp16.
                  backbone_prefill and backbone_decode are separate engines: each holds the weights.
    kv cache    = 2 (k, v) x layers x heads x head_dim x slots x 2 bytes, slots = prompt + T (A + 2)
                  (the decode path's cache; the continuous path has none).
    activations = the I/O buffers the backend allocates once per engine at its profile maximum
                  (`plan_shapes(entry, max_dims(entry))`), plus one decoder layer's working set at the
                  longest profile length: L (5 H + 3 I) x 2 bytes (residual, norm, q, k, v; gate, up,
                  product) + heads x L x keys x 4 bytes (fp32 scores, as if attention were unfused: an
                  upper bound; TensorRT reuses one layer's activation memory for the next).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rynn_edge.runtime.backends.tensorrt import max_dims, plan_shapes
from rynn_edge.runtime.bench.roofline import WEIGHT_BYTES
from rynn_edge.runtime.model.action_head import ActionHead
from rynn_edge.runtime.model.backbone import ChameleonBackbone
from rynn_edge.runtime.model.config import ModelConfig
from rynn_edge.runtime.model.vqgan import VQGAN

GIB = 2**30
INT4_BLOCK = 32  # export.quantize.INT4_BLOCK (the runtime does not import export)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}
QUANTIZED = ("int8", "int4", "fp8")


@dataclass(frozen=True)
class Line:
    """peak = a + b * layers, least squares over the measured points."""

    a: float
    b: float
    max_residual: float

    def at(self, layers: int) -> float:
        return self.a + self.b * layers


def fit_line(points: Sequence[tuple[int, float]]) -> Line:
    """Least-squares a + b n through (n, value) points with at least two distinct n."""
    ns = [n for n, _ in points]
    if len(set(ns)) < 2:
        raise ValueError(f"a per-layer fit needs two or more layer counts, got {sorted(set(ns))}")
    mean_n = sum(ns) / len(ns)
    mean_v = sum(v for _, v in points) / len(points)
    b = sum((n - mean_n) * (v - mean_v) for n, v in points) / sum((n - mean_n) ** 2 for n in ns)
    a = mean_v - b * mean_n
    return Line(a, b, max(abs(v - (a + b * n)) for n, v in points))


def linear_bytes(out_features: int, in_features: int, precision: str) -> float:
    """One decoder-layer linear as the export stores it, scales included."""
    n = out_features * in_features
    if precision == "int4":
        return n * WEIGHT_BYTES["int4"] + math.ceil(in_features / INT4_BLOCK) * out_features * 2
    if precision == "int8":
        return n + out_features * 4
    return n * WEIGHT_BYTES[precision]


def backbone_bytes(cfg: ModelConfig, precision: str, *, lm_head: bool) -> float:
    """A backbone engine's weights: layer linears at `precision`, the rest at 2 bytes (fp32: 4); a
    quantized one (outlier-safe, the default method) adds the fp32 un-rotation."""
    with torch.device("meta"):
        backbone = ChameleonBackbone(cfg)
    float_bytes = 4 if precision == "fp32" else 2
    total = 0.0
    for name, module in backbone.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("layers."):
            total += linear_bytes(module.out_features, module.in_features, precision)
    for name, param in backbone.named_parameters():
        in_linear = name.startswith("layers.") and name.endswith("_proj.weight")
        if not in_linear and (lm_head or not name.startswith("lm_head")):
            total += param.numel() * float_bytes
    if precision in QUANTIZED:
        total += cfg.hidden_size**2 * 4
    return total


def stage_weight_bytes(cfg: ModelConfig, vq_params: dict, precision: str, stages: Sequence[str]) -> dict:
    """Weights per engine (graph name -> bytes) of an artifact with `stages` at `precision`."""
    with torch.device("meta"):
        head = ActionHead(cfg.hidden_size, cfg.hidden_size // 4, cfg.time_horizon, cfg.action_dim)
        vq = VQGAN(**vq_params)
    vq_bytes = 4 if precision == "fp32" else 2

    def params(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    encoder = params(vq.encoder, vq.quant_conv, vq.quantize) * vq_bytes
    out: dict[str, float] = {}
    if "vq_encoder" in stages:
        out |= {"vq_encoder_256": encoder, "vq_encoder_512": encoder}
    if "backbone_prefill" in stages:
        out["backbone_prefill"] = backbone_bytes(cfg, precision, lm_head=False)
    if "action_head" in stages:
        out["action_head"] = params(head) * 4
    if "backbone_decode" in stages:
        out["backbone_decode"] = backbone_bytes(cfg, precision, lm_head=True)
    if "vq_decoder" in stages:
        out["vq_decoder"] = params(vq.decoder, vq.post_quant_conv, vq.quantize) * vq_bytes
    return out


def io_buffer_bytes(entry: dict) -> int:
    """What the TensorRT backend allocates for one engine: every I/O tensor at the profile maximum."""
    shapes = plan_shapes(entry, max_dims(entry))
    return sum(math.prod(shape) * DTYPE_BYTES[dtype] for shape, dtype in shapes.values())


def layer_working_set(cfg: ModelConfig, tokens: int, keys: int) -> int:
    """One decoder layer's live activations for `tokens` queries over `keys` keys (see the docstring)."""
    dense = tokens * (5 * cfg.hidden_size + 3 * cfg.intermediate_size) * 2
    return dense + cfg.num_attention_heads * tokens * keys * 4


def kv_cache_bytes(cfg: ModelConfig, slots: int) -> int:
    return 2 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * slots * 2


def runtime_memory(
    cfg: ModelConfig, vq_params: dict, precision: str, entries: dict[str, dict], prompt_len: int
) -> dict[str, float]:
    """GiB of weights, KV cache and activations of an artifact whose stage entries are `entries` (the
    manifest's `stages`, as `export.manifest.stage_entries` writes them), at one prompt length."""
    stages = {name.removesuffix("_256").removesuffix("_512") for name in entries}
    weights = stage_weight_bytes(cfg, vq_params, precision, sorted(stages))
    decode = "backbone_decode" in entries
    kv = kv_cache_bytes(cfg, prompt_len + cfg.time_horizon * (cfg.action_dim + 2)) if decode else 0
    longest = max_dims(entries["backbone_prefill"])["L"]
    working = layer_working_set(cfg, longest, longest)
    if decode:
        dims = max_dims(entries["backbone_decode"])
        working = max(working, layer_working_set(cfg, dims["N"], dims["S"] + dims["N"]))
    activations = sum(io_buffer_bytes(e) for e in entries.values()) + working
    total = sum(weights.values()) + kv + activations
    return {
        "weights_gib": sum(weights.values()) / GIB,
        "kv_cache_gib": kv / GIB,
        "activations_gib": activations / GIB,
        "total_gib": total / GIB,
    }


# Unified memory: the OS, CUDA and the robot process share the pool with the model.
RESERVE_GIB = 3.0
RESERVE_REASON = (
    "3 GiB reserved on every device: ~1 GiB for a headless JetPack (kernel carve-outs, Ubuntu services), "
    "~1 GiB for the CUDA context and the TensorRT / cuBLAS kernels it loads, ~1 GiB for the robot process "
    "(Python, torch, camera frames, episode log)"
)
JETSONS = {  # name -> (memory GiB, FP8 tensor cores)
    "Orin Nano 8 GB": (8, False),
    "Orin NX 16 GB": (16, False),
    "AGX Orin 32 GB": (32, False),
    "AGX Orin 64 GB": (64, False),
    "Thor 128 GB": (128, True),
}


def usable_gib(memory_gib: float) -> float:
    return memory_gib - RESERVE_GIB


def verdict(need_gib: float, memory_gib: float, fp8: bool = True, precision: str = "") -> str:
    """A fit-table cell: "fits (x.x GiB)" with what is needed, or why not."""
    if precision == "fp8" and not fp8:
        return "no FP8 (SM87)"
    return f"fits ({need_gib:.1f} GiB)" if need_gib <= usable_gib(memory_gib) else f"no ({need_gib:.1f} GiB)"
