"""Roofline: FLOPs and bytes per op, device peaks (measured here, published for Jetson), predicted latency.

Costs are counted, not guessed: the stage runs once on the `meta` device (no memory, no compute) under a
dispatch mode that adds torch's own FLOP formulas (`torch.utils.flop_counter`) and the bytes every op
reads and writes (views move nothing). The same counter attributes cost to the innermost module, which
gives the profiler its per-layer FLOPs/bytes. A stage's roofline time is max(FLOPs / peak FLOP/s,
bytes / peak bandwidth): a lower bound, reached only by a perfect kernel.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from rynn_edge.runtime.model.action_head import ActionHead
from rynn_edge.runtime.model.backbone import ChameleonBackbone, KVCache
from rynn_edge.runtime.model.vqgan import VQGAN

GIGA, TERA = 1e9, 1e12
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Bytes per weight element by precision (int4 = weight-only W4A16, activations stay 16-bit).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
ACTIVATION_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 2.0, "int8": 2.0, "int4": 2.0}


@dataclass(frozen=True)
class Cost:
    """FLOPs; bytes every op reads + writes as run (eager, unfused); fused_bytes: only the ops that do
    FLOPs (matmul, conv, attention), i.e. what an engine that fuses elementwise work into them moves."""

    flops: float = 0.0
    bytes: float = 0.0
    fused_bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.fused_bytes + other.fused_bytes)

    def times(self, n: float) -> Cost:
        return Cost(self.flops * n, self.bytes * n, self.fused_bytes * n)


_VIEWS = {torch.ops.aten._unsafe_view, torch.ops.aten.alias}
# Chameleon's VQGAN, as its vqgan.yaml configures it: tiny test bundles shrink it; the real-model roofline
# uses this.
CHAMELEON_VQ = {
    "embed_dim": 256,
    "n_embed": 8192,
    "ddconfig": {
        "double_z": False,
        "z_channels": 256,
        "resolution": 512,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}


class CostCounter(TorchDispatchMode):
    """Adds FLOPs and bytes moved per aten op to `self.by_scope[current scope]`."""

    def __init__(self) -> None:
        super().__init__()
        self.by_scope: dict[str, Cost] = defaultdict(Cost)
        self.scope = [""]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        is_view = packet in _VIEWS or any(
            r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns
        )
        moved = 0
        if packet is torch.ops.aten.embedding:  # reads only the looked-up rows, not the whole table
            moved = 2 * out.numel() * out.element_size()
        elif not is_view:
            seen = set()
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    moved += t.numel() * t.element_size()
        self.by_scope[self.scope[-1]] += Cost(float(flops), float(moved), float(moved) if flops else 0.0)
        return out

    @contextmanager
    def module_scopes(self, root: torch.nn.Module, prefix: str = "") -> Iterator[None]:
        """Attribute costs to the innermost running submodule of `root` (name as in named_modules)."""

        def leave(*_) -> None:  # a forward hook's return value would replace the module's output
            self.scope.pop()

        handles = []
        for name, module in root.named_modules():
            full = f"{prefix}.{name}".strip(".") if name else prefix
            handles.append(module.register_forward_pre_hook(lambda *_, n=full: self.scope.append(n)))
            handles.append(module.register_forward_hook(leave))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @property
    def total(self) -> Cost:
        return sum(self.by_scope.values(), Cost())


def count_cost(fn: Callable[[], object]) -> Cost:
    counter = CostCounter()
    with counter:
        fn()
    return counter.total


@dataclass(frozen=True)
class Peak:
    """Peak rates of one device for one precision: FLOP/s (or OP/s) and bytes/s."""

    name: str
    precision: str
    flops: float
    bandwidth: float
    source: str

    def seconds(self, cost: Cost, *, fused: bool = False) -> float:
        """Roofline time: max(FLOPs / peak FLOP/s, bytes / peak bandwidth)."""
        return max(cost.flops / self.flops, (cost.fused_bytes if fused else cost.bytes) / self.bandwidth)

    def bound(self, cost: Cost) -> str:
        """'compute' or 'memory': which roof the op sits under (arithmetic intensity vs the ridge)."""
        return "compute" if cost.flops * self.bandwidth >= cost.bytes * self.flops else "memory"


ORIN_SPECS = "https://www.nvidia.com/en-us/autonomous-machines/embedded-systems/jetson-orin/"
ORIN_BRIEF = (
    "https://www.nvidia.com/content/dam/en-zz/Solutions/gtcf21/jetson-orin/"
    "nvidia-jetson-agx-orin-technical-brief.pdf"
)
THOR_SPECS = "https://www.nvidia.com/en-us/autonomous-machines/embedded-systems/jetson-thor/"

# Published: AGX Orin 64GB GPU 170 sparse INT8 TOPS (of 275 with the DLAs), 204.8 GB/s LPDDR5 (technical
# brief + spec table); Orin NX 16GB 100 TOPS of which the GPU gives 60 sparse INT8 (32 tensor cores at
# 918 MHz, same per-core rate as AGX), 102.4 GB/s; AGX Thor T5000 2070 sparse FP4 TFLOPS, 273 GB/s.
# Derived (not quoted by NVIDIA): dense = sparse / 2; Ampere FP16 = INT8 / 2; Blackwell FP8 = FP4 / 2,
# FP16 = FP8 / 2. INT4 here is weight-only (W4A16): FP16 math with a quarter of the weight bytes.
# Orin (SM87) has no FP8/FP4 tensor cores, so those rows are absent.
JETSON: dict[str, dict[str, float | str]] = {
    "jetson-agx-orin-64gb": {
        "fp16": 42.5,
        "int8": 85.0,
        "int4": 42.5,
        "bandwidth_gbs": 204.8,
        "source": f"{ORIN_SPECS} ; {ORIN_BRIEF}",
    },
    "jetson-orin-nx-16gb": {
        "fp16": 15.0,
        "int8": 30.0,
        "int4": 15.0,
        "bandwidth_gbs": 102.4,
        "source": ORIN_SPECS,
    },
    "jetson-agx-thor-t5000": {
        "fp16": 258.75,
        "fp8": 517.5,
        "int8": 517.5,
        "int4": 258.75,
        "bandwidth_gbs": 273.0,
        "source": THOR_SPECS,
    },
}


def jetson_peak(device: str, precision: str) -> Peak | None:
    spec = JETSON[device]
    key = "fp16" if precision in ("bf16", "fp32") else precision
    if key not in spec:
        return None
    return Peak(
        device, precision, float(spec[key]) * TERA, float(spec["bandwidth_gbs"]) * GIGA, str(spec["source"])
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(fn: Callable[[], object], work: float, device: torch.device, seconds: float) -> float:
    """Best of repeated timed calls (after one warm-up): work per second at the fastest observed call."""
    fn()
    _sync(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return work / best


def measure_peak(
    device: str = "cpu", dtype: torch.dtype = torch.float32, *, seconds: float = 0.5, size: int | None = None
) -> Peak:
    """Measured peak matmul rate (n x n @ n x n) and copy bandwidth (read + write of a large buffer)."""
    dev = torch.device(device)
    n = size or (8192 if dev.type == "cuda" else 1024)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    flops = _best_rate(lambda: a @ b, 2.0 * n**3, dev, seconds)
    src = torch.empty(64 << 20 if dev.type == "cpu" else 256 << 20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    bandwidth = _best_rate(lambda: dst.copy_(src), 2.0 * src.numel(), dev, seconds)
    name = (
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    )
    return Peak(name, DTYPE_NAMES[dtype], flops, bandwidth, "measured")


# --- whole-model costs (any config, counted on the meta device) ----------------------------------------
MODES = ("continuous", "discrete-sequential", "discrete-parallel")


def decode_steps(mode: str, time_horizon: int, action_dim: int) -> int:
    """Backbone decode passes per chunk: T(A+2) one-token steps, or A+2 steps of T tokens each."""
    return {"continuous": 0, "discrete-sequential": time_horizon * (action_dim + 2)}.get(mode, action_dim + 2)


def _scaled(cost: Cost, weight_bytes: float, precision: str) -> Cost:
    """A cost counted in bf16 (2-byte weights and activations) re-priced for `precision`."""
    activations = max(cost.bytes - weight_bytes, 0.0)
    fused_activations = max(cost.fused_bytes - weight_bytes, 0.0)
    weights = weight_bytes * WEIGHT_BYTES[precision] / 2
    scale = ACTIVATION_BYTES[precision] / 2
    return Cost(cost.flops, weights + activations * scale, weights + fused_activations * scale)


def stage_costs(
    cfg,
    vq_params: dict,
    *,
    prompt_len: int,
    time_horizon: int,
    n_images: int,
    image_size: int,
    mode: str,
    precision: str,
) -> dict[str, Cost]:
    """Per-stage cost of one chunk. Weight bytes are read once per pass (one prefill, one per decode step);
    the VQ encoder keeps fp32 weights only for an fp32 run (16-bit activations otherwise)."""

    meta, bf16 = torch.device("meta"), torch.bfloat16
    with meta:
        backbone = ChameleonBackbone(cfg).to(bf16)
        head = ActionHead(cfg.hidden_size, cfg.hidden_size // 4, time_horizon, cfg.action_dim).to(bf16)
        vq = VQGAN(**vq_params).to(bf16)

    def weights(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> float:
        return float(sum(p.numel() * 2 for n, p in module.named_parameters() if not n.startswith(skip)))

    ids = torch.zeros(1, prompt_len, dtype=torch.long, device=meta)
    valid = torch.ones(1, prompt_len, dtype=torch.bool, device=meta)
    pixels = torch.zeros(n_images, 3, image_size, image_size, device=meta, dtype=bf16)
    w_backbone = weights(backbone, ("lm_head", "embed_tokens"))
    w_vq = weights(vq.encoder) + weights(vq.quant_conv) + weights(vq.quantize)
    vq_precision = "fp32" if precision == "fp32" else "fp16"
    costs = {"vq_encoder": _scaled(count_cost(lambda: vq.encode(pixels)), w_vq, vq_precision)}
    hidden = torch.zeros(1, prompt_len, cfg.hidden_size, dtype=bf16, device=meta)
    costs["backbone_prefill"] = _scaled(
        count_cost(lambda: backbone.prefill(ids, ids, valid)), w_backbone, precision
    )
    if mode == "continuous":
        costs["action_head"] = _scaled(count_cost(lambda: head(hidden, valid)), weights(head), precision)
        return costs
    steps = decode_steps(mode, time_horizon, cfg.action_dim)
    capacity = prompt_len + time_horizon * (cfg.action_dim + 2)
    cache = KVCache.allocate(cfg, 1, capacity, bf16, meta)
    # Parallel blocks: T tokens per step over the ONE shared prompt cache; sequential: one token.
    n = time_horizon if mode == "discrete-parallel" else 1
    tokens = torch.zeros(1, n, dtype=torch.long, device=meta)
    slots = torch.arange(prompt_len, prompt_len + n, device=meta)
    mask = torch.ones(n, capacity, dtype=torch.bool, device=meta)
    step = count_cost(lambda: backbone.decode_tokens(tokens, tokens, cache, slots, mask))
    w_step = w_backbone + weights(backbone.lm_head)
    per_step = _scaled(step, w_step, precision)
    costs["backbone_decode"] = per_step.times(steps)
    return costs
