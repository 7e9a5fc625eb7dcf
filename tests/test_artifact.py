"""Artifact verification: hashes, missing files, engines for another GPU or TensorRT version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rynn_edge.runtime.backends.artifact import (
    MANIFEST,
    Artifact,
    LocalGPU,
    _verify_engine_target,
    write_manifest,
)
from rynn_edge.runtime.errors import UserError


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    (tmp_path / "backbone_prefill.onnx").write_bytes(b"graph bytes " * 100)
    (tmp_path / "vq").mkdir()
    (tmp_path / "vq" / "text_tokenizer.json").write_text("{}")
    write_manifest(
        tmp_path,
        {
            "model": {"time_horizon": 20, "action_dim": 6},
            "stages": {"backbone_prefill": {"onnx": "backbone_prefill.onnx"}},
            "assets": {"image_vocab": "vq/text_tokenizer.json"},
            "target": {"kind": "onnxruntime"},
        },
    )
    return tmp_path


def test_intact_artifact_opens_and_lists_every_file(artifact: Path):
    opened = Artifact.open(artifact)
    assert set(opened.manifest["files"]) == {"backbone_prefill.onnx", "vq/text_tokenizer.json"}
    assert opened.stage_file("backbone_prefill") == artifact / "backbone_prefill.onnx"


def test_flipped_byte_is_refused(artifact: Path):
    path = artifact / "backbone_prefill.onnx"
    data = bytearray(path.read_bytes())
    data[7] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"backbone_prefill.onnx: sha256 differs.*\n.*Re-export"):
        Artifact.open(artifact)


def test_missing_file_is_refused(artifact: Path):
    (artifact / "vq" / "text_tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"vq/text_tokenizer.json: missing"):
        Artifact.open(artifact)


def test_file_used_but_not_hashed_is_refused(artifact: Path):
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["stages"]["action_head"] = {"onnx": "action_head.onnx"}
    (artifact / "action_head.onnx").write_bytes(b"x")
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="action_head.onnx: used by the manifest but not listed"):
        Artifact.open(artifact)


def test_not_an_artifact(tmp_path: Path):
    with pytest.raises(UserError, match="not a rynn-edge artifact folder"):
        Artifact.open(tmp_path)


ORIN = {"name": "Orin", "compute_capability": "8.7"}


def _engine_target(**extra) -> dict:
    return {"kind": "tensorrt", "gpu": ORIN, "tensorrt_version": "10.3.0", **extra}


def test_engines_for_another_gpu_are_refused(artifact: Path):
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["target"] = _engine_target()
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    # This machine (CI: no GPU) is never the Orin the engines were built for.
    with pytest.raises(UserError, match=r"built for Orin \(compute capability 8.7\)"):
        Artifact.open(artifact)
    assert Artifact.open(artifact, check_device=False).target["kind"] == "tensorrt"


def test_engine_target_checks():
    here = Path("art")
    h100 = LocalGPU("NVIDIA H100", "9.0")
    with pytest.raises(UserError, match="this GPU is NVIDIA H100 .*9.0.*Re-export"):
        _verify_engine_target(here, _engine_target(), h100, "10.3.0")
    _verify_engine_target(here, _engine_target(hardware_compatible=True), h100, "10.3.0")
    orin = LocalGPU("Orin", "8.7")
    with pytest.raises(UserError, match="built with TensorRT 10.3.0; this machine has 10.16.2"):
        _verify_engine_target(here, _engine_target(), orin, "10.16.2")
    with pytest.raises(UserError, match="TensorRT 10.3.0, which is not installed"):
        _verify_engine_target(here, _engine_target(), orin, None)
    _verify_engine_target(here, _engine_target(version_compatible=True), orin, "10.16.2")
