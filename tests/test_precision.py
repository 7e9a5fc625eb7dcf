"""Precision on a checkpoint built to break it (make-tiny-checkpoint --outliers): plain int8 fails its gate,
each shipped outlier-safe scheme passes (with the fallback it reports), fp16 is refused with the overflow
message, bf16 passes and TensorRT-RTX builds it. Then `build` and `verify` on an ONNX artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from exporting import export_bundle
from test_export import _build, needs_rtx

from rynn_edge.export import emulate, quantize
from rynn_edge.export.accuracy import RELATIVE_MULTIPLE
from rynn_edge.runtime.backends.artifact import MANIFEST, Artifact
from rynn_edge.runtime.cli import main
from rynn_edge.runtime.tiny.bundle import write_tiny_bundle

HEAD = ["--stages", "backbone_prefill", "action_head"]


@pytest.fixture(scope="session")
def outlier_bundle(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_bundle(tmp_path_factory.mktemp("outliers"), "so100", layers=3, seed=0, outliers=True)


@pytest.fixture(scope="session")
def outlier_calib(tmp_path_factory, frames) -> Path:
    """Five recorded-style queries: three calibrate, two are held out for the gate."""
    folder = tmp_path_factory.mktemp("outlier_calib")
    instructions = ["pick up the cube", "open the drawer", "put the cup on the plate", "push the block left"]
    pairs = [(0, 1), (2, 3), (1, 2), (3, 0), (0, 2)]
    rows = [
        {
            "images": [str(frames[a]), str(frames[b])],
            "state": [10 + 7 * i, 80, 90 - 4 * i, 20, 5, 30],
            "instruction": instructions[i % 4],
        }
        for i, (a, b) in enumerate(pairs)
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _export(capsys, bundle, calib, out: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = export_bundle(bundle, out, calib, *extra)
    return code, capsys.readouterr().err


def test_outlier_checkpoint_has_llm_like_activations(outlier_bundle):
    import torch

    from rynn_edge.export.search import Ranges
    from rynn_edge.runtime.model.checkpoint import load_model

    cfg, backbone, _ = load_model(outlier_bundle["model"], dtype=torch.float32)
    ids = torch.tensor([[0, *range(100, 160), 8197, *range(20000, 20200), 8196, 8710]])

    def run():
        return backbone.prefill(ids, torch.arange(ids.shape[1])[None], torch.ones_like(ids, dtype=torch.bool))

    ranges = Ranges.collect(backbone, run)
    hidden = run()
    assert torch.isfinite(hidden).all()
    last = cfg.num_hidden_layers - 1
    assert (
        ranges.values[f"layers.{last}.mlp.down_proj"] > 65504 > ranges.values["layers.0.mlp.down_proj"] > 1000
    )
    assert ranges.fp16_overflows()[0][0] == f"layers.{last}.mlp.down_proj"


def test_plain_int8_fails_on_outliers(capsys, tmp_path, outlier_bundle, outlier_calib):
    code, err = _export(
        capsys, outlier_bundle, outlier_calib, tmp_path / "plain", "--precision", "int8",
        "--quantization", "plain", "--max-fallback", "0", *HEAD,
    )  # fmt: skip
    assert (
        code == 2
        and "accuracy below threshold" in err
        and "backbone_prefill (int8): hidden_cosine_min" in err
    )
    manifest = json.loads((tmp_path / "plain" / MANIFEST).read_text())
    assert not manifest["accuracy"]["passed"] and manifest["accuracy"]["samples"] == 2
    assert manifest["quantization"]["fallback"]["kept"] == []


@pytest.mark.parametrize("scheme", ["int8", "fp8", "int4"])
def test_outlier_safe_schemes_pass(capsys, tmp_path, outlier_bundle, outlier_calib, scheme):
    out = tmp_path / scheme
    stages = HEAD + (["backbone_decode"] if scheme == "int8" else [])
    code, err = _export(capsys, outlier_bundle, outlier_calib, out, "--precision", scheme, *stages)
    assert code == 0, err
    manifest = Artifact.open(out).manifest
    accuracy = manifest["accuracy"]
    assert accuracy["passed"] and accuracy["samples"] == 2
    assert manifest["calibration"]["calibration_queries"] == 3
    assert len(accuracy["metrics"]["hidden_cosine_min"]["per_query"]) == 2
    for metric in ("hidden_cosine_min", "action_max_abs_error"):  # judged against torch bf16 too
        entry = accuracy["metrics"][metric]
        assert entry["multiple"] == RELATIVE_MULTIPLE[metric][scheme] and "relative_threshold" in entry
        assert entry["passed"] == (entry["passed_absolute"] or entry["passed_relative"])
    assert 0 < accuracy["metrics"]["action_max_abs_error"]["bf16_reference"] < 0.04
    quant = manifest["quantization"]
    assert quant["method"] == "outlier-safe" and quant["float_base"] == "bf16"  # fp16 would overflow
    kept = quant["fallback"]["kept"]
    assert len(kept) <= quant["fallback"]["budget"] and set(quant["sensitivity"]) >= set(kept)
    rounding = {s["rounding"] for s in quant["sensitivity"].values()}
    assert "gptq" in rounding, "the search never chose GPTQ rounding"
    layers = manifest["model"]["num_hidden_layers"]
    for stage in [s for s in manifest["stages"] if s.startswith("backbone")]:
        counts = manifest["stages"][stage]["quantization"]
        assert counts["kept"] == len(kept) and counts["quantized"] == 7 * layers - len(kept)
        model = onnx.load(str(out / f"{stage}.onnx"))
        quantize.check_quantized(model, scheme, layers, manifest["model"]["vocab_size"], frozenset(kept))
        assert emulate.has_bf16(model)
    print(
        f"{scheme}: kept {kept}; "
        + "; ".join(f"{m} {e['value']:.4g}" for m, e in accuracy["metrics"].items())
    )


def test_fp16_refused_with_the_overflow_message(capsys, tmp_path, outlier_bundle, outlier_calib):
    code, err = _export(
        capsys, outlier_bundle, outlier_calib, tmp_path / "fp16", "--precision", "fp16", *HEAD
    )
    assert code == 2
    assert (
        "fp16 would overflow" in err and "layers.2.mlp.down_proj reaches" in err and "--precision bf16" in err
    )


@pytest.fixture(scope="session")
def outlier_bf16(tmp_path_factory, outlier_bundle, outlier_calib) -> Path:
    out = tmp_path_factory.mktemp("bf16") / "art"
    stages = ["--stages", "backbone_prefill", "action_head", "backbone_decode"]
    assert export_bundle(outlier_bundle, out, outlier_calib, "--precision", "bf16", *stages) == 0
    return out


def test_bf16_passes_its_gate_measured_on_the_bf16_graph(outlier_bf16):
    manifest = Artifact.open(outlier_bf16).manifest
    assert manifest["accuracy"]["passed"] and "bf16 graph emulated" in manifest["accuracy"]["measured_with"]
    assert manifest["stages"]["backbone_decode"]["io"]["past_k"]["dtype"] == "bfloat16"
    assert manifest["accuracy"]["metrics"]["hidden_cosine_mean"]["threshold"] == 0.999
    action = manifest["accuracy"]["metrics"]["action_max_abs_error"]
    assert action["bf16_reference"] > 0 and "relative_threshold" not in action  # bf16: absolute only


@needs_rtx
def test_tensorrt_rtx_builds_bf16_graphs(tmp_path, outlier_bf16):
    stages = ["backbone_prefill", "backbone_decode"]
    assert _build(outlier_bf16, tmp_path, stages) == stages


def test_emulation_rounds_like_torch_bf16():
    import torch
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4])],
    )
    model = emulate.emulate_bf16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    import onnxruntime as ort

    x = np.array([1.01, 3.3, -7.77, 100.5], np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    t = torch.from_numpy(x).bfloat16()
    assert np.array_equal(y, (t * t).float().numpy())


# --- build and verify an ONNX artifact -------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory, so100_fp32) -> Path:
    art = tmp_path_factory.mktemp("build") / "art"
    shutil.copytree(so100_fp32[0], art)
    return art


def test_verify_onnxruntime_replays_golden_vectors(capsys, onnx_artifact):
    capsys.readouterr()
    assert main(["verify", str(onnx_artifact), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["metrics"]["action_max_abs_error"]["value"] < 1e-4
    assert report["metrics"]["token_agreement_pct"]["value"] == 100.0


def test_verify_tensorrt_refuses_without_cuda(capsys, onnx_artifact):
    assert main(["verify", str(onnx_artifact), "--backend", "tensorrt"]) == 2
    assert "needs a working NVIDIA GPU" in capsys.readouterr().err


@needs_rtx
def test_build_writes_engines_and_keeps_the_report(capsys, tmp_path, onnx_artifact):
    out = tmp_path / "built"
    args = [
        "build",
        str(onnx_artifact),
        "-o",
        str(out),
        "--builder",
        "tensorrt-rtx",
        "--compute-capability",
        "SM86",
    ]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    target = json.loads(capsys.readouterr().out)
    assert target["kind"] == "tensorrt" and target["gpu"]["compute_capability"] == "8.6"
    manifest = Artifact.open(out, check_device=False).manifest
    before = json.loads((onnx_artifact / MANIFEST).read_text())
    assert manifest["accuracy"] == before["accuracy"] and manifest["build"]["peak_rss_mb"] > 0
    for name, entry in manifest["stages"].items():
        assert entry["engine"] in manifest["files"], name
    # the built copy still verifies through onnxruntime; a changed engine or golden file is refused
    assert main(["verify", str(out)]) == 0
    for victim in ("backbone_prefill.engine", manifest["golden"][0]):
        bad = tmp_path / f"bad_{Path(victim).stem}"
        shutil.copytree(out, bad)
        data = bytearray((bad / victim).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / victim).write_bytes(bytes(data))
        capsys.readouterr()
        assert main(["verify", str(bad)]) == 2
        assert f"{victim}: sha256 differs" in capsys.readouterr().err


def test_build_without_a_builder_says_what_to_install(capsys, monkeypatch, onnx_artifact):
    from rynn_edge.export import tensorrt_build

    monkeypatch.setattr(tensorrt_build, "load_builder", lambda kind="auto": None)
    assert main(["build", str(onnx_artifact)]) == 2
    assert "pip install tensorrt-cu13" in capsys.readouterr().err
