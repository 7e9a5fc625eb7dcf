"""Write small random RynnVLA-002 checkpoints in the exact upstream `save_pretrained` layout.

Same file names, config fields, key names, [1, head_dim] q/k-norm rows and bf16 storage as a real
checkpoint, so tests and demos go through the same loader. Deterministic for a given seed.

`outliers=True` (make-tiny-checkpoint --outliers) plants the activation statistics that break naive
quantization of real LLMs and that random weights never have (see `plant_outliers`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

PRESETS = {"so100": {"action_dim": 6, "time_horizon": 20}, "libero": {"action_dim": 7, "time_horizon": 5}}
HEAD_DIM = 128
TRANSFORMERS_VERSION = "4.43.0"
VQ_CONFIG = {  # ChameleonVQVAEConfig defaults, as upstream serializes them
    "embed_dim": 256,
    "num_embeddings": 8192,
    "double_latent": False,
    "latent_channels": 256,
    "resolution": 512,
    "in_channels": 3,
    "base_channels": 128,
    "channel_multiplier": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": None,
    "dropout": 0.0,
    "attn_type": "vanilla",
    "initializer_range": 0.02,
    "model_type": "chameleon_vqgan",
}


def tiny_config(
    preset: str,
    *,
    hidden_size: int,
    num_layers: int,
    intermediate_size: int,
    vocabulary_map: dict[str, int] | None = None,
    time_horizon: int | None = None,
) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size must be a multiple of {HEAD_DIM} (head_dim of the real model)")
    action = dict(PRESETS[preset])
    if time_horizon is not None:
        action["time_horizon"] = time_horizon
    return {
        "architectures": ["ChameleonXLLMXForConditionalGeneration_ck_action_head"],
        "model_type": "chameleon",
        "vocab_size": 65536,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": hidden_size // HEAD_DIM,
        "num_key_value_heads": hidden_size // HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-05,
        "use_cache": True,
        "pad_token_id": None,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "model_parallel_size": 1,
        "swin_norm": False,
        "mask_image_logits": False,
        "dropout": 0.05,
        "z_loss_weight": 1e-05,
        **action,
        "vq_config": dict(VQ_CONFIG),
        "vocabulary_map": vocabulary_map,
        "torch_dtype": "bfloat16",
        "transformers_version": TRANSFORMERS_VERSION,
    }


def tiny_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """bf16 tensors, keys in upstream state-dict order. Linear weights ~ N(0, 1/fan_in) so activations
    stay O(1); norm weights near 1 with small biases, so nothing is degenerate."""
    g = torch.Generator().manual_seed(seed)
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    a, t = cfg["action_dim"], cfg["time_horizon"]
    d = h // 4  # upstream: hidden_size_factor 0.25 (4096 -> 1024)

    def normal(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(shape, generator=g) * std + mean).to(torch.bfloat16)

    def linear(out: int, inp: int) -> torch.Tensor:
        return normal(out, inp, std=inp**-0.5)

    def norm(*shape: int) -> torch.Tensor:
        return normal(*shape, std=0.1, mean=1.0)

    def small(*shape: int) -> torch.Tensor:
        return normal(*shape, std=0.02)

    sd = {"model.embed_tokens.weight": normal(v, h, std=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{p}self_attn.{name}.weight"] = linear(h, h)
        for name in ("q_norm", "k_norm"):
            sd[f"{p}self_attn.{name}.weight"] = norm(1, HEAD_DIM)
            sd[f"{p}self_attn.{name}.bias"] = small(1, HEAD_DIM)
        sd[f"{p}mlp.gate_proj.weight"] = linear(inter, h)
        sd[f"{p}mlp.up_proj.weight"] = linear(inter, h)
        sd[f"{p}mlp.down_proj.weight"] = linear(h, inter)
        sd[f"{p}input_layernorm.weight"] = norm(h)
        sd[f"{p}post_attention_layernorm.weight"] = norm(h)
    sd["model.norm.weight"] = norm(h)
    sd["lm_head.weight"] = linear(v, h)

    p = "action_head."
    sd[f"{p}action_token_embeddings.weight"] = normal(1, t * a * h, std=1.0)
    sd[f"{p}hidden_projection.weight"] = linear(d, h)
    sd[f"{p}hidden_projection.bias"] = small(d)
    for i in range(2):
        q = f"{p}transformer_encoder.layers.{i}."
        sd[f"{q}self_attn.in_proj_weight"] = linear(3 * d, d)
        sd[f"{q}self_attn.in_proj_bias"] = small(3 * d)
        sd[f"{q}self_attn.out_proj.weight"] = linear(d, d)
        sd[f"{q}self_attn.out_proj.bias"] = small(d)
        sd[f"{q}linear1.weight"] = linear(4 * d, d)
        sd[f"{q}linear1.bias"] = small(4 * d)
        sd[f"{q}linear2.weight"] = linear(d, 4 * d)
        sd[f"{q}linear2.bias"] = small(d)
        for n in ("norm1", "norm2"):
            sd[f"{q}{n}.weight"] = norm(d)
            sd[f"{q}{n}.bias"] = small(d)
    sd[f"{p}transformer_encoder.norm.weight"] = norm(d)
    sd[f"{p}transformer_encoder.norm.bias"] = small(d)
    m = f"{p}output_projection.model."
    sd[f"{m}layer_norm1.weight"] = norm(a * d)
    sd[f"{m}layer_norm1.bias"] = small(a * d)
    sd[f"{m}fc1.weight"] = linear(d, a * d)
    sd[f"{m}fc1.bias"] = small(d)
    for i in range(2):
        sd[f"{m}mlp_resnet_blocks.{i}.ffn.0.weight"] = norm(d)
        sd[f"{m}mlp_resnet_blocks.{i}.ffn.0.bias"] = small(d)
        sd[f"{m}mlp_resnet_blocks.{i}.ffn.1.weight"] = linear(d, d)
        sd[f"{m}mlp_resnet_blocks.{i}.ffn.1.bias"] = small(d)
    sd[f"{m}layer_norm2.weight"] = norm(d)
    sd[f"{m}layer_norm2.bias"] = small(d)
    sd[f"{m}fc2.weight"] = linear(a, d)
    sd[f"{m}fc2.bias"] = small(a)
    return sd


OUTLIER_CHANNELS = 4  # systematic outlier features (LLM.int8): a handful of the hidden channels
OUTLIER_SCALE = 20.0  # their residual magnitude, every token
OUTLIER_NORM_GAIN = 8.0  # and the RMSNorm gain on them (as in trained LLaMA-family norms)
# Chameleon ids of the tokens that carry massive activations: BOS, image start/end, end of turn
MASSIVE_TOKENS = (0, 8196, 8197, 8710)
MASSIVE_GATE = 1.2  # layer-0 FFN trigger weight: ~(16 g)^2 d on a trigger token's marker channel
MASSIVE_DOWN = 8.0  # -> a residual of ~3e3 on one channel (median |x| ~ 1)
OVERFLOW_GATE = 2.0  # last-layer FFN: ~(16 g)^2 d > 65504 on the massive tokens
OVERFLOW_DOWN = 100.0


def plant_outliers(sd: dict[str, torch.Tensor], cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Make a random state dict's activations look like a trained LLM's (in place; returns `sd`):

    1. Systematic outlier features (Dettmers et al. 2022, LLM.int8()): OUTLIER_CHANNELS residual
       channels ~20x the rest for every token, with an 8x RMSNorm gain on them, so every q/k/v/gate/up
       input has a few channels ~100-300x the median. Per-tensor int8 scales then round the other
       channels to a couple of levels.
    2. Massive activations (Sun et al. 2024): BOS and delimiter tokens (MASSIVE_TOKENS) carry a marker
       channel; a layer-0 FFN unit fires only on it (down_proj input ~500x the median, on 4 tokens) and
       writes ~3e3 into one residual channel that stays there through every later layer (the
       attention-sink tokens of Llama/Chameleon). Per-tensor scales sized for those tokens starve the rest.
    3. fp16 overflow: the last layer's FFN amplifies that channel on the same tokens to ~1e5 > 65504, as
       Chameleon-7B's layer-31 FFN does (a public Jetson runtime clamps it to run fp16 at all).
    The hidden size must be >= 64 (the channels are distinct). Everything stays finite in fp32/bf16.
    """
    g = torch.Generator().manual_seed(seed + 1000)
    h = cfg["hidden_size"]
    inter = cfg["intermediate_size"]
    picks = torch.randperm(h, generator=g)[: OUTLIER_CHANNELS + 3].tolist()
    outlier, (marker, massive, overflow) = picks[:OUTLIER_CHANNELS], picks[OUTLIER_CHANNELS:]
    units = torch.randperm(inter, generator=g)[:2].tolist()
    last = cfg["num_hidden_layers"] - 1

    def edit(key: str, fn) -> None:
        t = sd[key].float()
        fn(t)
        sd[key] = t.to(torch.bfloat16)

    def embed(t: torch.Tensor) -> None:
        t[:, outlier] *= OUTLIER_SCALE
        t[:, marker] = 0.0
        rows = [i for i in MASSIVE_TOKENS if i < t.shape[0]]
        t[rows] *= 0.05
        t[rows, marker] = 40.0

    edit("model.embed_tokens.weight", embed)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            edit(f"{p}{norm}.weight", lambda t: t.__setitem__(outlier, t[outlier] * OUTLIER_NORM_GAIN))
    for layer, source, target, unit, gate, down in (
        (0, marker, massive, units[0], MASSIVE_GATE, MASSIVE_DOWN),
        (last, massive, overflow, units[1], OVERFLOW_GATE, OVERFLOW_DOWN),
    ):
        p = f"model.layers.{layer}.mlp."
        for name in ("gate_proj", "up_proj"):
            edit(f"{p}{name}.weight", lambda t, s=source, u=unit, w=gate: t.__setitem__((u, s), w))
        edit(f"{p}down_proj.weight", lambda t, o=target, u=unit, w=down: t.__setitem__((o, u), w))
    return sd


def _shards(sd: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy in key order, like transformers' shard_checkpoint: a new shard when the next tensor
    would overflow the current one."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in sd.items():
        n = tensor.numel() * tensor.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += n
    return shards


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_tiny_model(
    out_dir: str | Path,
    preset: str,
    *,
    hidden_size: int,
    num_layers: int,
    intermediate_size: int,
    vocabulary_map: dict[str, int] | None,
    seed: int = 0,
    max_shard_bytes: int | None = None,
    time_horizon: int | None = None,
    outliers: bool = False,
) -> Path:
    """Write config.json, generation_config.json and bf16 safetensors (sharded with an index when
    max_shard_bytes is set) into out_dir; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(
        preset,
        hidden_size=hidden_size,
        num_layers=num_layers,
        intermediate_size=intermediate_size,
        vocabulary_map=vocabulary_map,
        time_horizon=time_horizon,
    )
    _write_json(out / "config.json", cfg)
    _write_json(
        out / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "transformers_version": TRANSFORMERS_VERSION,
        },
    )
    sd = tiny_state_dict(cfg, seed)
    if outliers:
        plant_outliers(sd, cfg, seed)
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(sd, str(out / "model.safetensors"), metadata=meta)
        return out
    shards = _shards(sd, max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata=meta)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    _write_json(
        out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return out
