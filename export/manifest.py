"""What the manifest says about each stage: I/O shapes and dtypes, dynamic-dim profiles, the TensorRT
optimization profile derived from them, and the versions and machine an artifact was made with."""

from __future__ import annotations

import platform
import socket
from importlib.metadata import version
from typing import Any

import numpy as np
import onnx
import torch

from rynn_edge import runtime
from rynn_edge.export import onnx_graphs, tensorrt_build
from rynn_edge.export.onnx_graphs import Dim
from rynn_edge.runtime.backends.artifact import local_gpu
from rynn_edge.runtime.backends.shapes import concrete, round_up
from rynn_edge.runtime.model.config import ModelConfig

VQ_SIZES = (256, 512)
# Longest generation the decode profile covers: one 512-px image (3 + 32*33 + 1 tokens) + separator.
MAX_NEW_TOKENS = 3 + 32 * 33 + 1 + 1
WEIGHTS = "backbone.data"  # the backbone graphs' shared external data
CACHE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def profiles(cfg: ModelConfig, lengths: list[int]) -> dict[str, dict[str, Dim]]:
    """Dynamic-dim ranges per stage: prompt lengths around the calibration prompts (same robot, same
    image count give near-constant lengths; instructions vary by tens of tokens)."""
    lo = max(64, (min(lengths) - 64) // 64 * 64)
    hi = max(64, round_up(max(lengths) + 192, 64))
    prompt = Dim("L", lo, int(np.median(lengths)), hi)
    slots = Dim("S", 1, hi + 300, hi + MAX_NEW_TOKENS)
    return {
        "vq_encoder": {"B": Dim("B", 1, 2, 4)},
        "backbone_prefill": {"L": prompt},
        "action_head": {"L": prompt},
        "backbone_decode": {"N": Dim("N", 1, 1, hi), "S": slots},
        "vq_decoder": {"B": Dim("B", 1, 1, 2), "h": Dim("h", 16, 16, 32), "w": Dim("w", 16, 16, 32)},
    }


def io_spec(cfg: ModelConfig, stage: str, size: int = 256) -> dict[str, tuple[list, str]]:
    """name -> (shape with dim names for dynamic dims, dtype) of every input and output."""
    layers, heads, hd = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    g = size // onnx_graphs.VQ_FACTOR
    return {
        "vq_encoder": {"images": (["B", 3, size, size], "float32"), "codes": (["B", g * g], "int32")},
        "backbone_prefill": {
            "ids": ([1, "L"], "int64"),
            "positions": ([1, "L"], "int64"),
            "key_mask": ([1, "L"], "bool"),
            "hidden": ([1, "L", cfg.hidden_size], "float32"),
        },
        "action_head": {
            "hidden": ([1, "L", cfg.hidden_size], "float32"),
            "valid": ([1, "L"], "bool"),
            "actions": ([1, cfg.time_horizon, cfg.action_dim], "float32"),
        },
        "backbone_decode": {
            "ids": ([1, "N"], "int64"),
            "positions": ([1, "N"], "int64"),
            "past_k": ([layers, 1, heads, "S", hd], "cache"),
            "past_v": ([layers, 1, heads, "S", hd], "cache"),
            "attn_mask": ([1, "N", "S+N"], "bool"),
            "logits": ([1, cfg.vocab_size], "float32"),
            "present_k": ([layers, 1, heads, "N", hd], "cache"),
            "present_v": ([layers, 1, heads, "N", hd], "cache"),
        },
        "vq_decoder": {"codes": (["B", "h", "w"], "int32"), "images": (["B", "16h", "16w", 3], "uint8")},
    }[stage]


def dynamic_axes(spec: dict[str, tuple[list, str]]) -> dict[str, dict[int, str]]:
    return {
        name: {i: d for i, d in enumerate(shape) if isinstance(d, str)} for name, (shape, _) in spec.items()
    }


def stage_dims(entry: dict[str, Any]) -> dict[str, Dim]:
    """The dynamic-dim ranges a manifest stage entry records ({dim: [min, opt, max]}) as Dims."""
    return {name: Dim(name, *values) for name, values in entry["profile"].items()}


def trt_profile(
    cfg: ModelConfig, stage: str, dims: dict[str, Dim], size: int = 256
) -> tensorrt_build.Profile:
    spec = io_spec(cfg, stage, size)
    inputs = onnx_graphs.STAGE_IO[stage].inputs
    points = [{name: getattr(d, which) for name, d in dims.items()} for which in ("min", "opt", "max")]
    return {name: tuple(concrete(spec[name][0], p) for p in points) for name in inputs}  # type: ignore[misc]


def versions() -> dict[str, str]:
    import onnxruntime

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:
        versions["rynn_edge"] = version("rynn-edge")
    except Exception:  # an uninstalled source tree still exports
        versions["rynn_edge"] = getattr(runtime, "__version__", "unknown")
    return versions


def machine() -> dict[str, Any]:
    gpu = local_gpu()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": None if gpu is None else {"name": gpu.name, "compute_capability": gpu.compute_capability},
    }


def stage_entries(
    cfg: ModelConfig,
    precisions: dict[str, str],
    dims: dict[str, dict[str, Dim]],
    counts: dict[str, dict[str, int]],
    floats: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per graph: file, precision, float type of its unquantized ops, I/O (the decode cache in that float
    type), dynamic-dim profile, external data and Q/DQ counts."""
    entries = {}
    for stage, precision in precisions.items():
        float_type = (floats or {}).get(stage, precision if precision in CACHE_DTYPES else "fp16")
        for name in [f"vq_encoder_{s}" for s in VQ_SIZES] if stage == "vq_encoder" else [stage]:
            size = int(name.rsplit("_", 1)[1]) if stage == "vq_encoder" else 256
            spec = io_spec(cfg, stage, size)
            cache = CACHE_DTYPES[float_type]
            entries[name] = {
                "onnx": f"{name}.onnx",
                "precision": precision,
                "float_type": float_type,
                "io": {
                    n: {"shape": shape, "dtype": cache if dt == "cache" else dt}
                    for n, (shape, dt) in spec.items()
                },
                "profile": {d.name: [d.min, d.opt, d.max] for d in dims[stage].values()},
                **({"external_data": WEIGHTS} if stage.startswith("backbone") else {}),
                **({"quantization": counts[stage]} if stage in counts else {}),
            }
    return entries
