"""rynn-edge export end to end on tiny checkpoints: fp32 parity with the torch backend through
onnxruntime-CPU, quantized graphs with Q/DQ on every backbone linear, manifest, Triton layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from exporting import calibration_folder, export_bundle

from rynn_edge.export import accuracy, quantize, triton
from rynn_edge.export.tensorrt_build import build_engine, load_tensorrt
from rynn_edge.runtime.backends.artifact import MANIFEST, Artifact
from rynn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from rynn_edge.runtime.cli import main
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.model.config import ModelConfig

# TensorRT-RTX stands in for TensorRT in CI: the full TensorRT libraries are not on PyPI and need a GPU
# to build, while TensorRT-RTX parses and builds ahead of time on a CPU for RTX GPUs (SM86/SM89 here).
# So it is a "NVIDIA's parser and builder accept every graph" gate, not a deployment test.
# Install: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings
try:
    import tensorrt_rtx_bindings as trt_rtx

    RTX_MISSING = ""
except (ImportError, OSError) as err:  # no wheel, or its libraries failed to load
    trt_rtx = None
    RTX_MISSING = (
        f"TensorRT-RTX not importable ({err}); pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"
    )
needs_rtx = pytest.mark.skipif(trt_rtx is None, reason=RTX_MISSING)

BACKBONE = ["backbone_prefill", "action_head", "backbone_decode"]
SO100_STATE = "10,80,90,20,5,30"
LIBERO_STATE = "0.1,0.0,0.8,2.0,0.1,0.2,0.01,-0.01"


def _predict(capsys, model: Path, *extra: str, state: str = SO100_STATE, images: list[Path]) -> dict:
    args = ["predict", str(model), "--state", state, "--instruction", "pick up the cube", "--json", *extra]
    for image in images:
        args += ["--image", str(image)]
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def _assert_parity(capsys, artifact: Path, bundle: dict, state: str, images: list[Path]) -> None:
    raw = ["--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"])]
    for mode in ("continuous", "discrete"):
        extra = ["--mode", mode, "--max-new-tokens", "24"]
        ref = _predict(capsys, bundle["model"], *raw, *extra, state=state, images=images)
        got = _predict(capsys, artifact, "--backend", "onnxruntime", *extra, state=state, images=images)
        assert got["prompt_ids"] == ref["prompt_ids"]
        assert got["vq_codes"] == ref["vq_codes"]
        assert got.get("generated_tokens") == ref.get("generated_tokens")
        got_actions, ref_actions = np.array(got["actions_normalized"]), np.array(ref["actions_normalized"])
        assert got_actions.shape == ref_actions.shape
        assert np.abs(got_actions - ref_actions).max(initial=0.0) < 1e-4, mode


def test_fp32_so100_matches_torch_backend(capsys, so100_fp32, so100_bundle, frames):
    _assert_parity(capsys, so100_fp32[0], so100_bundle, SO100_STATE, frames[:2])


def test_fp32_libero_matches_torch_backend(capsys, tmp_path, libero_bundle, frames):
    calib = calibration_folder(tmp_path / "calib", frames, [float(v) for v in LIBERO_STATE.split(",")])
    out = tmp_path / "libero_fp32"
    stages = ["--stages", "vq_encoder", *BACKBONE]
    assert export_bundle(libero_bundle, out, calib, "--precision", "fp32", *stages) == 0
    _assert_parity(capsys, out, libero_bundle, LIBERO_STATE, frames[:2])


def test_manifest_records_stages_hashes_and_accuracy(so100_fp32):
    out, manifest = so100_fp32
    assert set(manifest["stages"]) == {
        "vq_encoder_256",
        "vq_encoder_512",
        "backbone_prefill",
        "action_head",
        "backbone_decode",
        "vq_decoder",
    }
    for entry in manifest["stages"].values():
        assert entry["onnx"] in manifest["files"]
        assert entry["precision"] == "fp32"
    assert (
        manifest["stages"]["backbone_prefill"]["profile"]["L"][0]
        <= manifest["stages"]["backbone_prefill"]["profile"]["L"][1]
        <= manifest["stages"]["backbone_prefill"]["profile"]["L"][2]
    )
    assert {"tokenizer/tokenizer.json", "vq/text_tokenizer.json", "stats.json", "instructions.json"} <= set(
        manifest["files"]
    )
    assert manifest["versions"]["onnxruntime"] and manifest["machine"]["hostname"]
    metrics = manifest["accuracy"]["metrics"]
    assert manifest["accuracy"]["passed"]
    assert metrics["vq_code_agreement_pct"]["value"] == 100.0
    assert metrics["token_agreement_pct"]["value"] == 100.0
    assert metrics["action_max_abs_error"]["value"] < 1e-4
    assert Artifact.open(out).stages() == manifest["stages"]


def test_graphs_are_clean(so100_fp32):
    out, _ = so100_fp32
    codes = onnx.load(str(out / "vq_encoder_256.onnx")).graph.output[0]
    assert codes.type.tensor_type.elem_type == onnx.TensorProto.INT32
    for name in ("vq_encoder_256", "backbone_prefill", "backbone_decode", "action_head"):
        ops = {n.op_type for n in onnx.load(str(out / f"{name}.onnx")).graph.node}
        assert not ops & {"Dropout", "NonZero", "Loop", "If", "ScatterND"}, (name, ops)


def test_triton_repository(so100_fp32, tmp_path):
    """Loading it on the real server: tests/test_serving.py. Here: what a server reads from it."""
    out, manifest = so100_fp32
    for name in manifest["stages"]:
        config = (out / "triton" / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config and 'backend: "python"' in config and "KIND_AUTO" in config
        # No copy of the graph: the model (named after its stage) reads it beside its weights.
        assert [p.name for p in (out / "triton" / name / "1").iterdir()] == ["model.py"]
    assert not [p for p in (out / "triton").rglob("*") if p.is_symlink()]
    assert 'name: "past_k"' in (out / "triton" / "backbone_decode" / "config.pbtxt").read_text()
    step = (out / "triton" / "rynn_step" / "config.pbtxt").read_text()
    assert 'name: "images"' in step and "TYPE_UINT8" in step and 'key: "rynn_edge"' in step
    assert manifest["triton"]["models"][0] == "rynn_step"
    # The native layout (NVIDIA's container): each model folder holds its graph and its own weights.
    copy = tmp_path / "art"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "triton")
    triton.write_repository(copy, manifest, kind="cpu", platform="native")
    prefill = copy / "triton" / "backbone_prefill"
    assert 'platform: "onnxruntime_onnx"' in (prefill / "config.pbtxt").read_text()
    assert "KIND_CPU" in (prefill / "config.pbtxt").read_text()
    assert (prefill / "1" / "model.onnx").is_file() and (prefill / "1" / "backbone.data").stat().st_nlink == 1


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_export_has_qdq_on_every_backbone_linear(
    capsys, tmp_path, so100_bundle, so100_calib, scheme
):
    out = tmp_path / scheme
    extra = ["--target", "tensorrt"] if scheme == "int4" else ["--json"]
    capsys.readouterr()
    code = export_bundle(so100_bundle, out, so100_calib, "--precision", scheme, "--stages", *BACKBONE, *extra)
    printed = capsys.readouterr()
    if scheme == "int8":
        assert code == 0
        report = json.loads(printed.out.strip().splitlines()[-1])  # --json: the accuracy report
        assert report["passed"] and report["metrics"]["hidden_cosine_min"]["precision"] == "int8"
    elif load_tensorrt() is None:  # --target tensorrt without TensorRT: ONNX written, then a clear stop
        assert code == 2 and "pip install tensorrt" in printed.err
    manifest = Artifact.open(out).manifest
    assert manifest["target"]["kind"] == "onnxruntime" or load_tensorrt() is not None
    layers = manifest["model"]["num_hidden_layers"]
    for stage in ("backbone_prefill", "backbone_decode"):
        counts = manifest["stages"][stage]["quantization"]
        kept = frozenset(
            manifest["quantization"]["fallback"]["kept"]
        )  # the accuracy fallback's float linears
        assert counts["linears"] == 7 * layers and counts["quantized"] == 7 * layers - len(kept)
        model = onnx.load(str(out / f"{stage}.onnx"))
        vocab = manifest["model"]["vocab_size"]
        assert quantize.check_quantized(model, scheme, layers, vocab, kept).quantized == 7 * layers - len(
            kept
        )
    assert manifest["accuracy"]["passed"], manifest["accuracy"]
    # The accuracy report ran the graphs in onnxruntime-CPU; run them once more through the backend.
    actions = OnnxRuntimeBackend(Artifact.open(out)).actions(list(range(100, 700)))
    assert actions.shape == (20, 6) and np.isfinite(actions).all()


def test_check_quantized_catches_a_float_linear(so100_fp32):
    out, manifest = so100_fp32
    model = onnx.load(str(out / "backbone_prefill.onnx"))
    with pytest.raises(RuntimeError, match="int8 quantization incomplete: .*float weight"):
        quantize.check_quantized(model, "int8", manifest["model"]["num_hidden_layers"], 65536)


def test_accuracy_failure_names_stage_and_numbers():
    report = accuracy.judge(
        {"hidden_cosine_min": 0.91, "action_max_abs_error": 0.3, "vq_code_agreement_pct": 99.0},
        {"backbone_prefill": "int8", "vq_encoder": "fp16"},
    )
    lines = accuracy.failures(report)
    assert lines == [
        "backbone_prefill (int8): hidden_cosine_min = 0.91, threshold >= 0.99",
        "action_head (int8): action_max_abs_error = 0.3, threshold <= 0.06",
    ]


def test_gate_relative_to_the_models_own_bf16_deviation():
    """The issue's case: bf16 itself moves the actions by 0.082 (its gate: 0.04). int8 is then judged
    against 1.5x that too; the hidden cosine misses both and says so; bf16 gets the absolute verdict."""
    ref = accuracy.REFERENCE_SUFFIX
    per_query = {
        "action_max_abs_error": [0.11, 0.09],
        "action_max_abs_error" + ref: [0.07, 0.082],
        "token_agreement_pct": [70.0, 80.0],
        "token_agreement_pct" + ref: [81.25, 90.0],
        "hidden_cosine_min": [0.985, 0.99],
        "hidden_cosine_min" + ref: [0.9987, 0.9999],
    }
    summary = accuracy.summarize(per_query)
    report = accuracy.judge(summary, {"backbone_prefill": "int8", "backbone_decode": "int8"})
    assert set(report) == {"action_max_abs_error", "token_agreement_pct", "hidden_cosine_min"}
    action, tokens, cosine = (
        report[m] for m in ("action_max_abs_error", "token_agreement_pct", "hidden_cosine_min")
    )
    assert action["threshold"] == 0.06 and action["bf16_reference"] == 0.082 and action["multiple"] == 1.5
    assert action["relative_threshold"] == pytest.approx(0.123)
    assert not action["passed_absolute"] and action["passed_relative"] and action["passed"]
    assert tokens["relative_threshold"] == pytest.approx(100 - 18.75 * 25 / 15, abs=0.01) and tokens["passed"]
    assert not cosine["passed_absolute"] and not cosine["passed_relative"] and not cosine["passed"]
    assert accuracy.failures(report) == [
        "backbone_prefill (int8): hidden_cosine_min = 0.985, threshold >= 0.99, nor >= 0.9987 (1 x the "
        "model's own bf16 deviation, bf16 0.9987)"
    ]
    bf16 = accuracy.judge(
        accuracy.summarize({"action_max_abs_error": [0.082], "action_max_abs_error" + ref: [0.08]}),
        {"backbone_prefill": "bf16"},
    )["action_max_abs_error"]
    assert bf16["bf16_reference"] == 0.08 and "multiple" not in bf16 and bf16["passed"] is False


def test_golden_vectors_keep_the_bf16_reference(tmp_path):
    """verify judges like export: the golden files carry the model's bf16 deviation per query."""
    from rynn_edge.export import golden

    bf16 = {"action_max_abs_error": 0.082, "token_agreement_pct": 81.25}
    ref = accuracy.Reference(
        {}, [1, 2, 3], np.ones((3, 4), np.float32), np.zeros((2, 6), np.float32), [7], bf16
    )
    (loaded,) = golden.load(tmp_path, golden.save(tmp_path, [ref]))
    assert loaded.bf16 == bf16 and loaded.ids == [1, 2, 3] and loaded.tokens == [7]


def test_relative_multiples_are_the_threshold_tables_ratios():
    for metric, multiples in accuracy.RELATIVE_MULTIPLE.items():
        bf16 = accuracy.deviation(metric, accuracy.THRESHOLDS[metric]["bf16"])
        for precision, k in multiples.items():
            assert k * bf16 == pytest.approx(
                accuracy.deviation(metric, accuracy.THRESHOLDS[metric][precision]), rel=1e-3
            )
    assert accuracy.RELATIVE_MULTIPLE["action_max_abs_error"] == {
        "fp16": 0.5,
        "int8": 1.5,
        "fp8": 2.5,
        "int4": 5.0,
    }


def test_corrupted_artifact_is_refused_by_predict(capsys, tmp_path, so100_fp32, frames):
    art = tmp_path / "art"
    shutil.copytree(so100_fp32[0], art)
    (art / "action_head.onnx").write_bytes((art / "action_head.onnx").read_bytes()[:-1] + b"\x00")
    args = ["predict", str(art), "--backend", "onnxruntime", "--state", SO100_STATE, "--instruction", "x"]
    assert main([*args, "--image", str(frames[0]), "--image", str(frames[1])]) == 2
    assert "action_head.onnx: sha256 differs" in capsys.readouterr().err


def _small_profile(cfg: ModelConfig, stage: str, entry: dict) -> dict:
    """Shapes small enough for a quick build: the manifest's I/O with every dynamic dim near its minimum."""
    from rynn_edge.export.manifest import trt_profile
    from rynn_edge.export.onnx_graphs import STAGE_IO, Dim

    dims = {
        "vq_encoder": {"B": Dim("B", 1, 1, 2)},
        "backbone_prefill": {"L": Dim("L", 16, 32, 64)},
        "action_head": {"L": Dim("L", 16, 32, 64)},
        "backbone_decode": {"N": Dim("N", 1, 1, 64), "S": Dim("S", 1, 64, 128)},
        "vq_decoder": {"B": Dim("B", 1, 1, 1), "h": Dim("h", 16, 16, 16), "w": Dim("w", 16, 16, 16)},
    }[stage]
    size = int(entry["onnx"].removesuffix(".onnx").rsplit("_", 1)[1]) if stage == "vq_encoder" else 256
    profile = trt_profile(cfg, stage, dims, size)
    assert set(profile) == set(STAGE_IO[stage].inputs)
    return profile


def _build(folder: Path, tmp: Path, names: list[str] | None = None, capability: str = "SM86") -> list[str]:
    manifest = json.loads((folder / MANIFEST).read_text())
    cfg = ModelConfig.from_dict(manifest["model"])
    built = []
    for name, entry in manifest["stages"].items():
        if names is not None and name not in names:
            continue
        stage = "vq_encoder" if name.startswith("vq_encoder") else name
        info = build_engine(
            trt_rtx,
            folder / entry["onnx"],
            tmp / f"{name}.engine",
            _small_profile(cfg, stage, entry),
            compute_capability=capability,
        )
        assert (tmp / f"{name}.engine").stat().st_size > 0 and info["layers"] > 0
        built.append(name)
    return built


@needs_rtx
def test_tensorrt_rtx_parses_and_builds_every_fp32_graph(tmp_path, so100_fp32):
    assert len(_build(so100_fp32[0], tmp_path)) == 6


@needs_rtx
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_tensorrt_rtx_builds_quantized_graphs(tmp_path, so100_fp32, so100_bundle, scheme):
    """The export's quantization applied to exported backbone graphs, then built (FP8 needs SM89+)."""
    cfg, backbone, _ = load_model(so100_bundle["model"], dtype=torch.float32)
    rng = np.random.default_rng(0)
    absmax = {
        name: rng.uniform(0.5, 4.0, m.in_features) for name, m in quantize.backbone_linears(backbone).items()
    }
    out = tmp_path / "art"
    out.mkdir()
    stages = ["backbone_prefill", "backbone_decode"]
    shutil.copy(so100_fp32[0] / MANIFEST, out / MANIFEST)
    for stage in stages:
        model = onnx.load(str(so100_fp32[0] / f"{stage}.onnx"))
        quantize.quantize_backbone(
            [model], backbone, lambda name, w: quantize.plan_linear(scheme, w, absmax[name], 0.0)
        )
        quantize.check_quantized(model, scheme, cfg.num_hidden_layers, cfg.vocab_size)
        onnx.save(model, str(out / f"{stage}.onnx"))
    assert _build(out, tmp_path, stages, "SM89" if scheme == "fp8" else "SM86") == stages
