import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rynn_edge.runtime.model.backbone import KVCache
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.tiny.model import write_tiny_model

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny"),
        "so100",
        hidden_size=256,
        num_layers=2,
        intermediate_size=688,
        vocabulary_map=None,
    )


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


def ids_and_positions(b: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 65536, (b, n), generator=g), torch.arange(n).expand(b, n)


def reference_hidden(sd: dict[str, torch.Tensor], ids: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Independent fp64 Chameleon forward for one unpadded sequence [L], written from the spec:
    per-head LayerNorm with the shared [1, hd] row, RoPE pairing feature i with i + hd/2, causal softmax."""
    w = {k: v.double() for k, v in sd.items()}
    x = w["model.embed_tokens.weight"][ids]
    n, hidden = x.shape
    hd = hidden // n_heads
    pos = torch.arange(n, dtype=torch.float64)
    angle = pos[:, None] * 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # [L, hd/2]

    def rms(v, weight):
        return weight * v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5)

    def head_norm(v, p):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-5) * w[p + ".weight"][0] + w[p + ".bias"][0]

    def rope(v):  # v: [L, heads, hd]
        a, b = v[..., : hd // 2], v[..., hd // 2 :]
        c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    layer = 0
    while f"model.layers.{layer}.input_layernorm.weight" in w:
        p = f"model.layers.{layer}."
        a = rms(x, w[p + "input_layernorm.weight"])
        q = rope(
            head_norm((a @ w[p + "self_attn.q_proj.weight"].T).view(n, n_heads, hd), p + "self_attn.q_norm")
        )
        k = rope(
            head_norm((a @ w[p + "self_attn.k_proj.weight"].T).view(n, n_heads, hd), p + "self_attn.k_norm")
        )
        v = (a @ w[p + "self_attn.v_proj.weight"].T).view(n, n_heads, hd)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        o = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, hidden)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        m = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = m @ w[p + "mlp.gate_proj.weight"].T, m @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        layer += 1
    return rms(x, w["model.norm.weight"])


def test_prefill_matches_independent_reference(model_dir, model):
    cfg, bb, _ = model
    ids, pos = ids_and_positions(1, 24)
    hidden = bb.prefill(ids, pos, torch.ones_like(ids, dtype=torch.bool))
    ref = reference_hidden(load_file(model_dir / "model.safetensors"), ids[0], cfg.num_attention_heads)
    torch.testing.assert_close(hidden[0].double(), ref, **TOL)
    assert hidden.std() > 0.5  # the tiny model is not degenerate
    ref_logits = ref @ load_file(model_dir / "model.safetensors")["lm_head.weight"].double().T
    torch.testing.assert_close(bb.logits(hidden)[0].double(), ref_logits, atol=1e-4, rtol=1e-4)


def test_prefill_equals_step_by_step_decode(model):
    cfg, bb, _ = model
    b, n, s_max = 2, 10, 16
    ids, pos = ids_and_positions(b, n, seed=1)
    logits = bb.logits(bb.prefill(ids, pos, torch.ones_like(ids, dtype=torch.bool)))
    assert logits.dtype == torch.float32
    cache = KVCache.allocate(cfg, b, s_max, torch.float32)
    key_mask = torch.zeros(b, s_max, dtype=torch.bool)
    for t in range(n):
        key_mask[:, t] = True
        step = bb.decode_step(ids[:, t : t + 1], pos[:, t : t + 1], cache, torch.tensor(t), key_mask)
        torch.testing.assert_close(step, logits[:, t], **TOL)


def test_decode_continues_from_prefill_kv(model):
    _, bb, _ = model
    ids, pos = ids_and_positions(2, 12, seed=2)
    full = bb.logits(bb.prefill(ids, pos, torch.ones_like(ids, dtype=torch.bool)))
    hidden, k, v = bb.prefill_with_kv(ids[:, :9], pos[:, :9], torch.ones(2, 9, dtype=torch.bool))
    torch.testing.assert_close(bb.logits(hidden), full[:, :9], **TOL)
    cache = KVCache.from_prompt(k, v, max_len=16)
    key_mask = torch.zeros(2, 16, dtype=torch.bool)
    key_mask[:, :9] = True
    for t in range(9, 12):
        key_mask[:, t] = True
        torch.testing.assert_close(
            bb.decode_step(ids[:, t : t + 1], pos[:, t : t + 1], cache, t, key_mask), full[:, t]
        )


def test_decode_key_mask_hides_slots(model):
    """An action block's tokens see the prompt and their own block only; RoPE positions still count the
    hidden block. Reference: a prefill of [prompt, token] with the token at its absolute position."""
    cfg, bb, _ = model
    ids, pos = ids_and_positions(1, 10, seed=3)
    prompt, hidden_block, token = ids[:, :7], ids[:, 7:9], ids[:, 9:]
    _, k, v = bb.prefill_with_kv(prompt, pos[:, :7], torch.ones(1, 7, dtype=torch.bool))
    cache = KVCache.from_prompt(k, v, max_len=12)
    key_mask = torch.zeros(1, 12, dtype=torch.bool)
    key_mask[:, :7] = True
    for t in (7, 8):  # first block, visible to itself
        key_mask[:, t] = True
        bb.decode_step(hidden_block[:, t - 7 : t - 6], torch.tensor([[t]]), cache, t, key_mask)
    key_mask[:, 7:9] = False
    key_mask[:, 9] = True
    got = bb.decode_step(token, torch.tensor([[9]]), cache, 9, key_mask)
    want_ids = torch.cat([prompt, token], dim=1)
    want_pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 9]])
    want = bb.logits(bb.prefill(want_ids, want_pos, torch.ones(1, 8, dtype=torch.bool)))[:, -1]
    torch.testing.assert_close(got, want, **TOL)
    plain = bb.logits(bb.prefill(ids, pos, torch.ones(1, 10, dtype=torch.bool)))[:, -1]
    assert (got - plain).abs().max() > 1e-2  # the mask really changed what the token saw


def test_right_padding_does_not_change_valid_positions(model):
    _, bb, _ = model
    ids, pos = ids_and_positions(2, 16, seed=4)
    lengths = [11, 16]
    key_mask = torch.arange(16)[None, :] < torch.tensor(lengths)[:, None]
    padded = bb.prefill(ids, pos, key_mask)
    for i, n in enumerate(lengths):
        alone = bb.prefill(ids[i : i + 1, :n], pos[i : i + 1, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(padded[i : i + 1, :n], alone, **TOL)


def test_left_padding_is_finite_and_exact(model):
    _, bb, _ = model
    ids, pos = ids_and_positions(1, 12, seed=5)
    key_mask = torch.arange(12)[None, :] >= 4
    shifted = (pos - 4).clamp(min=0)
    out = bb.prefill(ids, shifted, key_mask)
    assert torch.isfinite(out).all()
    alone = bb.prefill(ids[:, 4:], pos[:, :8], torch.ones(1, 8, dtype=torch.bool))
    torch.testing.assert_close(out[:, 4:], alone, **TOL)


def test_rope_is_relative(model):
    _, bb, _ = model
    ids, pos = ids_and_positions(1, 12, seed=6)
    mask = torch.ones(1, 12, dtype=torch.bool)
    torch.testing.assert_close(
        bb.prefill(ids, pos + 37, mask), bb.prefill(ids, pos, mask), atol=1e-4, rtol=1e-4
    )


def test_bf16_close_to_fp32(model_dir, model):
    _, bb32, _ = model
    _, bb16, _ = load_model(model_dir, dtype=torch.bfloat16)
    ids, pos = ids_and_positions(1, 16, seed=7)
    mask = torch.ones(1, 16, dtype=torch.bool)
    h16, h32 = bb16.prefill(ids, pos, mask), bb32.prefill(ids, pos, mask)
    assert h16.dtype == torch.bfloat16 and bb16.logits(h16).dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(h16.float(), h32, dim=-1)
    assert cos.min() > 0.99


def test_decode_step_kv_is_pure_and_equals_decode_step(model):
    cfg, bb, _ = model
    ids, pos = ids_and_positions(2, 6, seed=8)
    _, k, v = bb.prefill_with_kv(ids[:, :5], pos[:, :5], torch.ones(2, 5, dtype=torch.bool))
    cache = KVCache.from_prompt(k, v, max_len=8)
    before_k, before_v = cache.k.clone(), cache.v.clone()
    key_mask = torch.zeros(2, 8, dtype=torch.bool)
    key_mask[:, :6] = True
    logits, k_new, v_new = bb.decode_step_kv(
        ids[:, 5:], pos[:, 5:], cache.k, cache.v, torch.tensor(5), key_mask
    )
    assert torch.equal(cache.k, before_k) and torch.equal(cache.v, before_v)
    assert k_new.shape == (cfg.num_hidden_layers, 2, cfg.num_attention_heads, 1, cfg.head_dim)
    assert torch.equal(bb.decode_step(ids[:, 5:], pos[:, 5:], cache, 5, key_mask), logits)
    assert torch.equal(cache.k[:, :, :, 5:6], k_new) and torch.equal(cache.v[:, :, :, 5:6], v_new)
    assert torch.equal(cache.k[:, :, :, :5], before_k[:, :, :, :5])
