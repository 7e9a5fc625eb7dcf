import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.model.config import ModelConfig
from rynn_edge.runtime.tiny.model import write_tiny_model

TINY = {"hidden_size": 256, "num_layers": 2, "intermediate_size": 688, "vocabulary_map": None}
Q_PROJ = "model.layers.1.self_attn.q_proj.weight"
QUERIES = "action_head.action_token_embeddings.weight"
FC2 = "action_head.output_projection.model.fc2.weight"


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("single"), "so100", **TINY)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("sharded"), "so100", **TINY, max_shard_bytes=10_000_000)


@pytest.fixture
def copy(single, tmp_path) -> Path:
    return Path(shutil.copytree(single, tmp_path / "ckpt"))


def edit_tensors(model_dir: Path, edit) -> None:
    path = model_dir / "model.safetensors"
    sd = load_file(path)
    edit(sd)
    save_file(sd, path, metadata={"format": "pt"})


def edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def load_error(model_dir: Path) -> str:
    with pytest.raises(UserError) as e:
        load_model(model_dir)
    return str(e.value)


def test_config_fields(single):
    cfg = ModelConfig.from_dir(single)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim) == (256, 2, 2, 128)
    assert (cfg.vocab_size, cfg.action_dim, cfg.time_horizon, cfg.rope_theta) == (65536, 6, 20, 10000.0)


def test_upstream_layout(single, sharded):
    cfg = json.loads((single / "config.json").read_text())
    assert cfg["architectures"] == ["ChameleonXLLMXForConditionalGeneration_ck_action_head"]
    assert cfg["torch_dtype"] == "bfloat16" and cfg["model_parallel_size"] == 1 and cfg["swin_norm"] is False
    assert (single / "generation_config.json").is_file()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    sd = load_file(single / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert sd["model.layers.0.self_attn.q_norm.weight"].shape == (1, 128)
    assert sd[QUERIES].shape == (1, 20 * 6 * 256)
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in sd.values())


def test_writer_is_deterministic(single, tmp_path):
    again = write_tiny_model(tmp_path / "again", "so100", **TINY)
    other = write_tiny_model(tmp_path / "other", "so100", **TINY, seed=1)
    data = (single / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == data
    assert (other / "model.safetensors").read_bytes() != data


def test_libero_preset_with_horizon_override(tmp_path):
    d = write_tiny_model(tmp_path / "lib", "libero", **TINY, time_horizon=10)
    cfg, _, head = load_model(d)
    assert (cfg.action_dim, cfg.time_horizon) == (7, 10)
    assert head(torch.randn(1, 5, 256), torch.ones(1, 5, dtype=torch.bool)).shape == (1, 10, 7)


def test_sharded_equals_single_and_bf16_becomes_fp32(single, sharded):
    _, bb1, head1 = load_model(single)
    _, bb2, head2 = load_model(sharded)
    stored = load_file(single / "model.safetensors")
    for prefix, a, b in (("", bb1, bb2), ("action_head.", head1, head2)):
        pb = dict(b.named_parameters())
        for name, p in a.named_parameters():
            key = prefix + name if prefix or name.startswith("lm_head") else "model." + name
            assert p.dtype == torch.float32 and not p.requires_grad
            assert torch.equal(p, pb[name]), name
            assert torch.equal(p, stored[key].float()), key


def test_load_in_bf16(single):
    _, bb, head = load_model(single, dtype=torch.bfloat16)
    assert {p.dtype for p in [*bb.parameters(), *head.parameters()]} == {torch.bfloat16}


def test_missing_config(tmp_path):
    assert "config.json: not found" in load_error(tmp_path)


def test_missing_config_key(copy):
    cfg = json.loads((copy / "config.json").read_text())
    del cfg["time_horizon"]
    (copy / "config.json").write_text(json.dumps(cfg))
    assert "missing key(s) time_horizon" in load_error(copy)


def test_unsupported_architecture(copy):
    edit_config(copy, swin_norm=True, model_parallel_size=2)
    msg = load_error(copy)
    assert "swin_norm=True" in msg and "model_parallel_size=2" in msg


def test_no_weights(copy):
    (copy / "model.safetensors").unlink()
    assert "no model.safetensors and no model.safetensors.index.json" in load_error(copy)


def test_missing_shard(sharded, tmp_path):
    d = Path(shutil.copytree(sharded, tmp_path / "c"))
    victim = sorted(d.glob("model-*.safetensors"))[1]
    victim.unlink()
    msg = load_error(d)
    assert victim.name in msg and "Download the missing shard" in msg


def test_index_disagrees_with_shard(sharded, tmp_path):
    d = Path(shutil.copytree(sharded, tmp_path / "c"))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["lm_head.weight"] = (
        shards[0] if index["weight_map"]["lm_head.weight"] != shards[0] else shards[-1]
    )
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    msg = load_error(d)
    assert "lm_head.weight" in msg and "does not hold it" in msg


def test_missing_tensor(copy):
    edit_tensors(copy, lambda sd: sd.pop(Q_PROJ))
    msg = load_error(copy)
    assert f"{Q_PROJ}: missing (expected shape [256, 256])" in msg


def test_unexpected_tensor_and_ignored_vqmodel(copy):
    def edit(sd):
        sd["model.vqmodel.encoder.conv_in.weight"] = torch.zeros(4, dtype=torch.bfloat16)
        sd["model.extra.weight"] = torch.zeros(3, dtype=torch.bfloat16)

    edit_tensors(copy, edit)
    msg = load_error(copy)
    assert "model.extra.weight in model.safetensors: unexpected tensor [3]" in msg
    assert "vqmodel" not in msg


def test_vqmodel_tensors_are_ignored(copy):
    edit_tensors(copy, lambda sd: sd.update({"model.vqmodel.quantize.embedding.weight": torch.zeros(2, 2)}))
    load_model(copy)


def test_misshaped_tensor(copy):
    edit_tensors(copy, lambda sd: sd.update({Q_PROJ: torch.zeros(256, 128, dtype=torch.bfloat16)}))
    assert f"{Q_PROJ} in model.safetensors: shape [256, 128], expected [256, 256]" in load_error(copy)


def test_head_horizon_disagrees_with_config(copy):
    edit_config(copy, time_horizon=10)
    msg = load_error(copy)
    assert f"{QUERIES} in model.safetensors: shape [1, {20 * 6 * 256}], expected [1, {10 * 6 * 256}]" in msg
    assert "imply action_dim=6, time_horizon=20" in msg


def test_head_action_dim_disagrees_with_config(copy):
    edit_config(copy, action_dim=7)
    msg = load_error(copy)
    assert f"{FC2} in model.safetensors: shape [6, 64], expected [7, 64]" in msg
    assert "imply action_dim=6, time_horizon=20" in msg and "config.json says action_dim=7" in msg


def test_not_an_action_head_checkpoint(copy):
    edit_tensors(copy, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("action_head.")])
    assert "not a RynnVLA-002 checkpoint with a continuous action head" in load_error(copy)
