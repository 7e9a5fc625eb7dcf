"""NVIDIA's ONNX parser and builder accept every exported graph: TensorRT-RTX builds engines on a CPU.

TensorRT-RTX stands in for TensorRT in CI (the full TensorRT libraries are not on PyPI and need a
GPU to build); it targets RTX GPUs (SM86 here), so this is a parse + ahead-of-time build gate,
not a deployment test. Install: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rynn_edge.export import quantize
from rynn_edge.export.tensorrt_build import build_engine
from rynn_edge.runtime.artifact import MANIFEST
from rynn_edge.runtime.checkpoint import ModelConfig, load_model
from rynn_edge.runtime.cli import main

try:
    import tensorrt_rtx_bindings as trt_rtx
except (ImportError, OSError) as err:  # no wheel, or its libraries failed to load
    trt_rtx = None
    SKIP_REASON = (
        f"TensorRT-RTX not importable ({err}); pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"
    )

pytestmark = pytest.mark.skipif(trt_rtx is None, reason=SKIP_REASON if trt_rtx is None else "")


def _small_profile(cfg: ModelConfig, stage: str, entry: dict) -> dict:
    """Shapes small enough for a quick build: the manifest's I/O with every dynamic dim near its minimum."""
    from rynn_edge.export.onnx_graphs import STAGE_IO, Dim
    from rynn_edge.export.pipeline import trt_profile

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


def _export(bundle: dict, out: Path, calib: Path, precision: str, stages: list[str]) -> Path:
    code = main(
        [
            "export",
            str(bundle["model"]),
            "--tokenizer",
            str(bundle["tokenizer"]),
            "--vq",
            str(bundle["vq"]),
            "-o",
            str(out),
            "--precision",
            precision,
            "--calibration-data",
            str(calib),
            "--stages",
            *stages,
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def calib(tmp_path_factory, frames) -> Path:
    folder = tmp_path_factory.mktemp("rtx_calib")
    row = {
        "images": [str(frames[0]), str(frames[1])],
        "state": [10, 80, 90, 20, 5, 30],
        "instruction": "pick",
    }
    (folder / "samples.jsonl").write_text(json.dumps(row) + "\n")
    return folder


@pytest.fixture(scope="module")
def fp16_artifact(tmp_path_factory, so100_bundle, calib) -> Path:
    stages = ["vq_encoder", "backbone_prefill", "action_head", "backbone_decode", "vq_decoder"]
    return _export(so100_bundle, tmp_path_factory.mktemp("rtx") / "fp16", calib, "fp16", stages)


def test_fp16_and_vq_graphs_build(tmp_path, fp16_artifact):
    assert len(_build(fp16_artifact, tmp_path)) == 6


def test_fp32_graphs_build(tmp_path, so100_bundle, calib):
    out = _export(so100_bundle, tmp_path / "fp32", calib, "fp32", ["backbone_prefill", "backbone_decode"])
    assert _build(out, tmp_path) == ["backbone_prefill", "backbone_decode"]


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_quantized_graphs_build(tmp_path, fp16_artifact, so100_bundle, scheme):
    """The export's quantization applied to its fp16 graphs (as `export --precision` does), then built.
    FP8 needs Ada or newer, so it builds for SM89."""
    cfg, backbone, _ = load_model(so100_bundle["model"], dtype=torch.float16)
    rng = np.random.default_rng(0)
    absmax = {
        name: rng.uniform(0.5, 4.0, m.in_features) for name, m in quantize.backbone_linears(backbone).items()
    }
    out = tmp_path / "art"
    shutil.copytree(fp16_artifact, out)
    for stage in ("backbone_prefill", "backbone_decode"):
        model = onnx.load(str(out / f"{stage}.onnx"))
        quantize.quantize_backbone(model, backbone, scheme, quantize.Calibration(absmax))
        quantize.check_quantized(model, scheme, cfg.num_hidden_layers, cfg.vocab_size)
        onnx.save(model, str(out / f"{stage}.onnx"))
    capability = "SM89" if scheme == "fp8" else "SM86"
    assert _build(out, tmp_path, ["backbone_prefill", "backbone_decode"], capability) == [
        "backbone_prefill",
        "backbone_decode",
    ]
