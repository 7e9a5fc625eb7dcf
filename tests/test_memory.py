"""The memory formulas and the per-layer extrapolation behind the memory tables of
docs/engines-and-memory.md."""

from __future__ import annotations

import pytest
import torch

from rynn_edge.runtime.bench import memory as M
from rynn_edge.runtime.model.backbone import ChameleonBackbone
from rynn_edge.runtime.model.config import ModelConfig
from rynn_edge.runtime.tiny.model import tiny_config


def config(hidden: int, layers: int, inter: int) -> ModelConfig:
    return ModelConfig.from_dict(
        tiny_config("so100", hidden_size=hidden, num_layers=layers, intermediate_size=inter)
    )


def test_fit_line_recovers_a_line_and_extrapolates():
    line = M.fit_line([(1, 2.5), (2, 3.0), (3, 3.5)])
    assert line.a == pytest.approx(2.0) and line.b == pytest.approx(0.5)
    assert line.at(32) == pytest.approx(18.0) and line.max_residual == pytest.approx(0.0)
    noisy = M.fit_line([(1, 1.0), (2, 3.0), (3, 3.0)])
    assert noisy.b == pytest.approx(1.0) and noisy.max_residual == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="two or more layer counts"):
        M.fit_line([(2, 1.0), (2, 1.1)])


def test_backbone_bytes_count_every_parameter_at_its_precision():
    cfg = config(256, 2, 512)
    with torch.device("meta"):
        backbone = ChameleonBackbone(cfg)
    params = {n: p.numel() for n, p in backbone.named_parameters()}
    total = sum(params.values())
    linears = sum(v for n, v in params.items() if n.startswith("layers.") and n.endswith("_proj.weight"))
    head = params["lm_head.weight"]
    assert M.backbone_bytes(cfg, "fp16", lm_head=True) == 2 * total
    assert M.backbone_bytes(cfg, "fp32", lm_head=False) == 4 * (total - head)
    shapes = [(256, 256)] * 4 + [(512, 256)] * 2 + [(256, 512)]  # (out, in) of q k v o gate up down
    outputs = 2 * sum(n for n, _ in shapes)  # two layers
    int4_scales = 2 * sum(k // 32 * n * 2 for n, k in shapes)  # one fp16 scale per 32-weight block
    rotation = 256 * 256 * 4  # the fp32 un-rotation of the outlier-safe schemes
    floats = 2 * (total - linears)
    assert M.backbone_bytes(cfg, "int8", lm_head=True) == floats + linears + 4 * outputs + rotation
    assert M.backbone_bytes(cfg, "int4", lm_head=True) == floats + linears / 2 + int4_scales + rotation


def test_7b_kv_cache_and_deployments():
    from rynn_edge.export.manifest import profiles, stage_entries
    from rynn_edge.runtime.bench.roofline import CHAMELEON_VQ

    cfg = config(4096, 32, 11008)
    assert M.kv_cache_bytes(cfg, 1) == 512 * 1024  # 2 x 32 layers x 4096 x 2 bytes per token
    dims = profiles(cfg, [600])
    continuous = {"vq_encoder": "fp16", "backbone_prefill": "int8", "action_head": "fp32"}
    lean = M.runtime_memory(cfg, CHAMELEON_VQ, "int8", stage_entries(cfg, continuous, dims, {}), 600)
    everything = continuous | {"backbone_decode": "int8", "vq_decoder": "fp16"}
    full = M.runtime_memory(cfg, CHAMELEON_VQ, "int8", stage_entries(cfg, everything, dims, {}), 600)
    assert lean["kv_cache_gib"] == 0 and full["kv_cache_gib"] == pytest.approx(
        (600 + 20 * 8) * 512 * 1024 / M.GIB
    )
    assert 6 < lean["weights_gib"] < 7.5  # ~6.5e9 int8 layer weights + 2 x 0.5 GiB float embeddings
    assert full["weights_gib"] > 2 * lean["weights_gib"] - 1  # prefill and decode engines each hold weights
    assert lean["total_gib"] == pytest.approx(
        lean["weights_gib"] + lean["kv_cache_gib"] + lean["activations_gib"]
    )


def test_verdicts_use_the_reserve_and_fp8_support():
    assert M.usable_gib(16) == 16 - M.RESERVE_GIB
    assert M.verdict(12.9, 16) == "fits (12.9 GiB)"
    assert M.verdict(13.1, 16) == "no (13.1 GiB)"
    assert M.verdict(4.0, 64, fp8=False, precision="fp8") == "no FP8 (SM87)"
