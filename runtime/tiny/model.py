"""Write small random RynnVLA-002 checkpoints in the exact upstream `save_pretrained` layout.

Same file names, config fields, key names, [1, head_dim] q/k-norm rows and bf16 storage as a real
checkpoint, so tests and demos go through the same loader. Deterministic for a given seed.

`outliers="channels"` (or True; make-tiny-checkpoint --outliers) plants the activation statistics that
break naive quantization of real LLMs and that random weights never have (see `plant_outliers`);
`outliers="heads"` (--outliers heads) plants different ones: attention-sink heads, per-layer outlier
channels and near-tied action logits (see `plant_head_outliers`).
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


SINK_TOKENS = (8197, 8803)  # image start, row end: every image brings one and a row end per code row
SINK_MARKER = 30.0  # their marker channel in the embedding (other tokens: 0)
SINK_CONSTANT = 4.0  # a channel every token carries, which the sink heads' queries read
SINK_Q, SINK_K = 5.0, 2.0  # q/k weights that make one head dimension dominate (before the head norm)
SINK_DIM = HEAD_DIM // 2 - 1  # the lowest RoPE frequency: the dot product barely turns with distance
LAYER_CHANNELS = 3  # per-layer outlier channels, a different set in every layer
LAYER_GAIN = 30.0  # their RMSNorm gain in that layer only
ACTION_BINS = range(10005, 10005 + 256)  # vocab.ACTION_VALUE_OFFSET + N_BINS (runtime/tokens imports numpy)
ACTION_LOGIT_GAIN = 4.0  # the action bins' lm_head rows: they win the argmax over the whole vocabulary
ACTION_TIE = 0.015  # odd bins copy the even bin's row up to this relative noise: top-1 margins ~0.05


def plant_head_outliers(sd: dict[str, torch.Tensor], cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """A second stress structure, unlike `plant_outliers` (in place; returns `sd`):

    1. Attention sinks on delimiters: in every layer one head (a different one per layer when there are
       several) puts nearly all its attention on the image-start and row-end tokens (SINK_TOKENS). Its
       q and k rows are zero but one dimension at the lowest RoPE frequency: the query reads a constant
       channel, the key a marker channel that those tokens alone carry. No layer writes either channel
       (their o_proj/down_proj rows are zero), so both reach every layer unchanged, and after the head
       norm a sink token's key is one-hot along the query (score ~11) while the others' keys are the
       norm's bias (score ~0). One large weight in a zero row: a weight outlier, on top of the marker
       (~15x the median, on 8197/8803 tokens only) and constant activation channels.
    2. Outlier channels that differ by layer: LAYER_CHANNELS channels per layer, disjoint across layers,
       get a 30x gain in that layer's two RMSNorms only, so each layer's q/k/v/gate/up inputs have their
       own outlier set (a scale or rotation fitted to one layer does not fit the next).
    3. Narrow top-1 margins in the discrete actions: the action bins' lm_head rows are scaled so they win
       the argmax, and come in near-identical pairs, so the top-1 margin is a few hundredths of a logit
       whose scale is ~10: bf16 rounding alone flips some greedy tokens.
    The hidden size must be >= 128 * 1 and leave room for the channels (>= 2 + 3 * layers).
    """
    g = torch.Generator().manual_seed(seed + 2000)
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads = h // HEAD_DIM
    if h < 2 + LAYER_CHANNELS * layers:
        raise ValueError(f"hidden_size {h} too small for {layers} layers of distinct outlier channels")
    picks = torch.randperm(h, generator=g)[: 2 + LAYER_CHANNELS * layers].tolist()
    constant, marker, per_layer = picks[0], picks[1], picks[2:]
    sink_heads = torch.randint(0, heads, (layers,), generator=g).tolist()

    def edit(key: str, fn) -> None:
        t = sd[key].float()
        fn(t)
        sd[key] = t.to(torch.bfloat16)

    def embed(t: torch.Tensor) -> None:
        t[:, constant] = SINK_CONSTANT
        t[:, marker] = 0.0
        t[list(SINK_TOKENS), marker] = SINK_MARKER

    edit("model.embed_tokens.weight", embed)
    for i in range(layers):
        p = f"model.layers.{i}."
        rows = slice(sink_heads[i] * HEAD_DIM, (sink_heads[i] + 1) * HEAD_DIM)
        for name, channel, weight in (("q_proj", constant, SINK_Q), ("k_proj", marker, SINK_K)):
            edit(f"{p}self_attn.{name}.weight", lambda t, r=rows, c=channel, w=weight: _sink_rows(t, r, c, w))
        for name in ("self_attn.o_proj", "mlp.down_proj"):  # no layer writes the two channels
            edit(f"{p}{name}.weight", lambda t: t.__setitem__([constant, marker], 0.0))
        own = per_layer[i * LAYER_CHANNELS : (i + 1) * LAYER_CHANNELS]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            edit(f"{p}{norm}.weight", lambda t, c=own: t.__setitem__(c, t[c] * LAYER_GAIN))

    def action_rows(t: torch.Tensor) -> None:
        bins = list(ACTION_BINS)
        even = t[bins[0::2]] * ACTION_LOGIT_GAIN
        t[bins[0::2]] = even
        t[bins[1::2]] = even + ACTION_TIE * ACTION_LOGIT_GAIN * torch.randn(even.shape, generator=g) * h**-0.5

    edit("lm_head.weight", action_rows)
    return sd


def _sink_rows(t: torch.Tensor, rows: slice, channel: int, weight: float) -> None:
    """One head's q or k rows: all zero but SINK_DIM, which reads only `channel` (with `weight`)."""
    t[rows] = 0.0
    t[rows.start + SINK_DIM, channel] = weight


STRESS = {"channels": plant_outliers, "heads": plant_head_outliers}  # make-tiny-checkpoint --outliers KIND


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
    outliers: bool | str = False,
) -> Path:
    """Write config.json, generation_config.json and bf16 safetensors (sharded with an index when
    max_shard_bytes is set) into out_dir; returns out_dir. `outliers`: a STRESS kind (True: "channels")."""
    kind = "channels" if outliers is True else outliers
    if kind and kind not in STRESS:
        raise ValueError(f"unknown outliers kind {kind!r}; choose one of {sorted(STRESS)}")
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
    if kind:
        STRESS[kind](sd, cfg, seed)
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
