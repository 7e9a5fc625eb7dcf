"""rynn-edge profile end to end on a tiny checkpoint (torch) and artifact (onnxruntime): per-layer tables
cover the profiled stage calls (profiling.COVERAGE), every layer kind is in the table;
FLOPs/bytes where computable; CSV, JSON, PNG."""

from __future__ import annotations

import json

import pytest

from rynn_edge.runtime.bench.profiling import COVERAGE, OTHER
from rynn_edge.runtime.bench.roofline import CHAMELEON_VQ, MODES, decode_steps, jetson_peak, stage_costs
from rynn_edge.runtime.cli import main

STAGES = ("backbone_prefill", "action_head", "backbone_decode")


def _profile(out, *args, runs: int = 10) -> dict:
    assert main(["profile", *args, "--runs", str(runs), "--threads", "1", "--out", str(out)]) == 0
    return json.loads((out / "profile.json").read_text())


def _accounts_for_the_stage(stage: dict) -> None:
    """Layers cover the profiled calls (COVERAGE); the (other) row closes the table; timings are sane."""
    assert stage["coverage"] == pytest.approx(1.0, abs=0.15), stage["stage"]
    assert stage["rows"][-1]["layer"] == OTHER and stage["rows"][-1]["mean_ms"] >= 0
    assert sum(r["share"] for r in stage["rows"]) == pytest.approx(1.0)
    assert 0 < stage["layers_ms"] <= stage["profiled_ms"] * 1.001
    assert 0.3 < stage["profiler_overhead"] < 5  # same units, same stage: plain and profiled agree roughly


def test_torch_layers_sum_to_the_stage(tmp_path, so100_bundle):
    b = so100_bundle
    raw = [str(b["model"]), "--tokenizer", str(b["tokenizer"]), "--vq", str(b["vq"])]
    stages = {}
    for name in STAGES:  # the fast stages, each with enough runs for a stable median on a busy machine
        result = _profile(tmp_path / name, *raw, "--stage", name)
        assert result["coverage_definition"] == COVERAGE
        (stage,) = result["stages"]
        stages[name] = stage
        _accounts_for_the_stage(stage)
    kinds = {r["kind"] for r in stages["backbone_prefill"]["rows"]}
    called = {"DecoderLayer", "MLP", "RMSNorm", "Linear", "Embedding"}  # the module kinds prefill calls
    assert called <= kinds
    linear = next(r for r in stages["backbone_prefill"]["rows"] if r["layer"].endswith("mlp.up_proj"))
    assert linear["flops"] > 0 and linear["tflops"] > 0 and linear["bound"] in ("compute", "memory")
    out = tmp_path / "action_head"
    assert json.loads((out / "profile.json").read_text())["peak"]["gbs"] > 0
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "profile.csv").read_text().startswith("stage,layer,kind,calls,mean_ms,share")


def test_onnxruntime_node_profiler(tmp_path, so100_fp32, capsys):
    art, _ = so100_fp32
    result = _profile(tmp_path / "out", str(art), "--stage", "backbone_prefill")
    (stage,) = result["stages"]
    assert result["backend"] == "onnxruntime"
    _accounts_for_the_stage(stage)
    matmuls = [r for r in stage["rows"] if r["kind"] == "MatMul"]
    assert matmuls and all(r["flops"] > 0 for r in matmuls if r["layer"].endswith("proj/MatMul"))
    capsys.readouterr()
    assert main(["profile", str(art), "--backend", "tensorrt", "--out", str(tmp_path / "trt")]) == 2
    assert "needs a working NVIDIA GPU" in capsys.readouterr().err  # no TensorRT object without CUDA


def test_tensorrt_profile_needs_an_artifact(tmp_path, so100_bundle, capsys):
    args = ["profile", str(so100_bundle["model"]), "--backend", "tensorrt", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "is not an exported artifact, which backend 'tensorrt' needs" in capsys.readouterr().err


def test_roofline_costs_of_the_7b_model():
    from rynn_edge.runtime.model.config import ModelConfig

    cfg = ModelConfig(65536, 4096, 11008, 32, 32, 32, 1e-5, 10000.0, 6, 20)
    costs = {
        m: stage_costs(
            cfg,
            CHAMELEON_VQ,
            prompt_len=580,
            time_horizon=20,
            n_images=2,
            image_size=256,
            mode=m,
            precision="fp16",
        )
        for m in MODES
    }
    # research §7: ~7.5 TFLOP of matmuls + ~0.09 attention for a 580-token prefill; 2 x 137 GFLOP VQ encode
    assert costs["continuous"]["backbone_prefill"].flops == pytest.approx(7.6e12, rel=0.05)
    assert costs["continuous"]["vq_encoder"].flops == pytest.approx(2 * 138e9, rel=0.05)
    orin = jetson_peak("jetson-agx-orin-64gb", "fp16")
    seq = orin.seconds(costs["discrete-sequential"]["backbone_decode"], fused=True)
    assert seq > 10.0  # research §7: >= 11 s for a discrete SO100 chunk on AGX Orin in 16-bit
    parallel, sequential = (costs[m]["backbone_decode"].fused_bytes for m in MODES[2:0:-1])
    assert parallel < sequential / 5  # A+2 weight reads instead of T(A+2)
    # A parallel step reads the weights and the ONE shared prompt cache, like a sequential step (plus
    # T tokens' activations), not T copies of the cache.
    per_step = {m: costs[m]["backbone_decode"].fused_bytes / decode_steps(m, 20, 6) for m in MODES[1:]}
    assert per_step["discrete-parallel"] < 1.05 * per_step["discrete-sequential"]
