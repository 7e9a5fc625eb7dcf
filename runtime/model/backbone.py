"""Chameleon-7B decoder (the RynnVLA-002 LLM) as an export-friendly module with explicit tensors.

Numerics follow the upstream HF Chameleon implementation op for op: RMSNorm statistics in fp32,
QK-LayerNorm (shared [1, head_dim] affine) *before* rotate-half RoPE, RoPE tables computed in fp32 and
cast to the compute dtype, SDPA with scale 1/sqrt(head_dim), logits cast to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rynn_edge.runtime.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class HeadNorm(nn.Module):
    """LayerNorm over head_dim, then one [1, head_dim] affine row shared by every head."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, head_dim))
        self.bias = nn.Parameter(torch.zeros(1, head_dim))

    def forward(self, x: Tensor) -> Tensor:  # x: [..., heads, head_dim]
        # head_dim from the weight, a Python int under tracing (x.shape[-1] would be a traced value the
        # TorchScript ONNX exporter cannot take as normalized_shape)
        x = F.layer_norm(x, (self.weight.shape[-1],), None, None, eps=1e-5)
        return x * self.weight + self.bias


def rope_tables(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin [B, L, head_dim] for rotate-half RoPE, computed in fp32 and cast like upstream."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = positions.float()[..., None] * inv_freq  # one fp32 product, same as upstream's K=1 matmul
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, heads, L, head_dim]; cos/sin: [B, L, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, self.n_heads, self.head_dim = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.q_norm = HeadNorm(self.head_dim)
        self.k_norm = HeadNorm(self.head_dim)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected, normed and rotated q, k, v as [B, heads, L, head_dim]."""
        b, n = x.shape[:2]
        shape = (b, n, self.n_heads, self.head_dim)
        q = self.q_norm(self.q_proj(x).view(shape)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(shape)).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """mask: bool, broadcastable to [B, heads, Lq, Lk], True = may attend."""
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, n, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        past: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (x, k, v) with k/v of this call's tokens. `past` = (cache_k, cache_v, slot [S] bool):
        attend over the cache as if the new token's k/v sat in `slot` (the cache itself is not modified)."""
        q, k, v = self.self_attn.qkv(self.input_layernorm(x), cos, sin)
        keys, values = k, v
        if past is not None:
            cache_k, cache_v, slot = past
            keys = torch.where(slot[:, None], k, cache_k)
            values = torch.where(slot[:, None], v, cache_v)
        x = x + self.self_attn.out(q, keys, values, mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


@dataclass
class KVCache:
    """Preallocated keys/values, each [layers, B, heads, S_max, head_dim]. Slot s holds the token the
    caller wrote there; which slots a step sees is decided only by the caller's key mask."""

    k: Tensor
    v: Tensor

    @classmethod
    def allocate(
        cls,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (cfg.num_hidden_layers, batch, cfg.num_attention_heads, max_len, cfg.head_dim)
        # zeros, not empty: masked slots still enter the matmul and must not hold NaN/inf
        return cls(
            torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        )

    @classmethod
    def from_prompt(cls, k: Tensor, v: Tensor, max_len: int) -> KVCache:
        """Cache of length max_len whose first slots hold a prefill's k/v ([layers, B, heads, L, hd])."""
        shape = (*k.shape[:3], max_len, k.shape[-1])
        cache = cls(k.new_zeros(shape), v.new_zeros(shape))
        cache.k[:, :, :, : k.shape[3]] = k
        cache.v[:, :, :, : v.shape[3]] = v
        return cache


class ChameleonBackbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def _rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta, dtype)

    def _prefill(self, ids: Tensor, positions: Tensor, key_mask: Tensor) -> tuple[Tensor, list, list]:
        x = self.embed_tokens(ids)
        n = ids.shape[1]
        idx = torch.arange(n, device=ids.device)
        causal = idx[None, :] <= idx[:, None]
        # A query always sees itself, so a padding query never has an all-masked row (SDPA would give NaN,
        # and NaN * 0 attention weight would leak into valid rows downstream).
        mask = causal & (key_mask[:, None, :] | (idx[None, :] == idx[:, None]))
        cos, sin = self._rope(positions, x.dtype)
        ks, vs = [], []
        for layer in self.layers:
            x, k, v = layer(x, cos, sin, mask[:, None])
            ks.append(k)
            vs.append(v)
        return self.norm(x), ks, vs

    def prefill(self, ids: Tensor, positions: Tensor, key_mask: Tensor) -> Tensor:
        """ids/positions [B, L] long, key_mask [B, L] bool (False = padding) -> final-norm hidden [B, L, H].
        Attention is causal (by sequence index) AND key_mask; positions only drive RoPE."""
        return self._prefill(ids, positions, key_mask)[0]

    def prefill_with_kv(
        self, ids: Tensor, positions: Tensor, key_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """As prefill, plus k, v [layers, B, heads, L, head_dim] to continue decoding (see
        KVCache.from_prompt)."""
        hidden, ks, vs = self._prefill(ids, positions, key_mask)
        return hidden, torch.stack(ks), torch.stack(vs)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden).float()

    def decode_step_kv(
        self,
        ids: Tensor,
        positions: Tensor,
        cache_k: Tensor,
        cache_v: Tensor,
        write_index: Tensor | int,
        key_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pure form of decode_step for export: reads the cache ([layers, B, heads, S_max, hd]) without
        writing it and returns (fp32 logits [B, V], k, v [layers, B, heads, 1, hd]) for slot write_index."""
        x = self.embed_tokens(ids)
        slot = torch.arange(cache_k.shape[3], device=ids.device) == write_index
        cos, sin = self._rope(positions, x.dtype)
        mask = key_mask[:, None, None, :]
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, mask, past=(cache_k[i], cache_v[i], slot))
            ks.append(k)
            vs.append(v)
        return self.logits(self.norm(x))[:, -1], torch.stack(ks), torch.stack(vs)

    def decode_step(
        self, ids: Tensor, positions: Tensor, cache: KVCache, write_index: Tensor | int, key_mask: Tensor
    ) -> Tensor:
        """One token per row: ids/positions [B, 1]. Writes its k/v into cache slot `write_index` (in place)
        and attends to exactly the slots where key_mask [B, S_max] is True (include the new slot).
        Returns fp32 logits [B, V]."""
        logits, k, v = self.decode_step_kv(ids, positions, cache.k, cache.v, write_index, key_mask)
        index = torch.as_tensor(write_index, device=ids.device).reshape(1)
        cache.k.index_copy_(3, index, k)
        cache.v.index_copy_(3, index, v)
        return logits

    def decode_tokens(
        self,
        ids: Tensor,
        positions: Tensor,
        cache: KVCache,
        slots: Tensor,
        key_mask: Tensor,
    ) -> Tensor:
        """N tokens in one pass over a batch-1 cache: ids/positions [1, N], slots [N] (where their k/v go, in
        place), key_mask [N, S_max] bool (row i: the slots token i attends to, its own included).
        Returns fp32 logits [N, V]. With N = 1 this computes what `self.decode_step` does."""
        x = self.embed_tokens(ids)
        cos, sin = self._rope(positions, x.dtype)
        mask = key_mask[None, None]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = attn.qkv(layer.input_layernorm(x), cos, sin)
            cache.k[i].index_copy_(2, slots, k)
            cache.v[i].index_copy_(2, slots, v)
            x = x + attn.out(q, cache.k[i], cache.v[i], mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.logits(self.norm(x))[0]
