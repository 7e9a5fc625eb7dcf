"""TensorRT backend parts that run without a GPU: the refusal before any TensorRT object exists, and the
binding/shape planning from a real manifest stage table (ONNX-time and engine-time profiles)."""

from __future__ import annotations

import sys

import pytest
import torch

from rynn_edge.export.manifest import profiles, stage_entries, trt_profile
from rynn_edge.runtime.backends.artifact import Artifact
from rynn_edge.runtime.backends.tensorrt import TensorRTBackend, bucket, dim_ranges, max_dims, plan_shapes
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.config import ModelConfig

CFG = ModelConfig(65536, 256, 512, 2, 2, 2, 1e-5, 10000.0, 6, 20)
PRECISIONS = {
    s: "fp16" for s in ("vq_encoder", "backbone_prefill", "action_head", "backbone_decode", "vq_decoder")
}


@pytest.fixture(scope="module")
def stages():
    dims = profiles(CFG, [590, 600])
    entries = stage_entries(CFG, PRECISIONS, dims, {})
    built = {name: dict(entry) for name, entry in entries.items()}
    for name, entry in built.items():  # what build_engines records: per-input min/opt/max shapes
        stage = "vq_encoder" if name.startswith("vq_encoder") else name
        size = int(name.rsplit("_", 1)[1]) if stage == "vq_encoder" else 256
        entry["profile"] = {
            k: [list(s) for s in v] for k, v in trt_profile(CFG, stage, dims[stage], size).items()
        }
    return entries, built


def test_refuses_without_cuda_before_importing_tensorrt(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    artifact = Artifact(tmp_path, {"model": {"time_horizon": 20, "action_dim": 6}, "stages": {}})
    before = "tensorrt" in sys.modules
    with pytest.raises(UserError, match="needs a working NVIDIA GPU"):
        TensorRTBackend(artifact)
    assert ("tensorrt" in sys.modules) == before


def test_dim_ranges_read_both_profile_forms(stages) -> None:
    onnx_time, engine_time = stages
    for name in onnx_time:
        assert dim_ranges(onnx_time[name]) == dim_ranges(engine_time[name]), name
    low, high = dim_ranges(onnx_time["backbone_prefill"])["L"]
    assert low <= 590 and high >= 600 + 128


def test_plan_shapes_for_the_continuous_and_decode_stages(stages) -> None:
    _, built = stages
    shapes = plan_shapes(built["backbone_prefill"], {"L": 640})
    assert shapes["ids"] == ((1, 640), "int64") and shapes["hidden"] == ((1, 640, 256), "float32")
    decode = plan_shapes(built["backbone_decode"], {"S": 900, "N": 1})
    assert decode["past_k"] == ((2, 1, 2, 900, 128), "float16")
    assert decode["attn_mask"] == ((1, 1, 901), "bool")
    assert plan_shapes(built["vq_decoder"], {"B": 2, "h": 16, "w": 16})["images"][0] == (2, 256, 256, 3)
    assert max_dims(built["vq_encoder_256"]) == {"B": 4}


def test_profile_limits_are_enforced_with_a_clear_message(stages) -> None:
    _, built = stages
    entry = built["backbone_prefill"]
    high = dim_ranges(entry)["L"][1]
    with pytest.raises(UserError, match="outside the engine's optimization profile"):
        plan_shapes(entry, {"L": high + 1})
    assert bucket(590, entry) == 640 and bucket(high - 1, entry) == high
    with pytest.raises(UserError, match="exceeds the engine profile"):
        bucket(high + 1, entry)
