"""Randomized Hadamard rotation of the backbone's residual stream, folded into the weights (QuaRot,
Ashkboos et al. 2024; SpinQuant). The network computes the same function; its activations lose their
outlier channels, which is what lets static per-tensor int8/fp8 scales and int4 weights work.

With Q orthogonal (Q Q^T = I) and the residual carried as x Q:
- the embedding becomes E Q; every linear that writes the residual (o_proj, down_proj) W^T -> W^T Q;
- RMSNorm commutes with Q once its gain is folded into the linears that read it (||x Q|| = ||x||), so
  q/k/v read `W diag(g) Q` and gate/up likewise, and the norms keep unit gains;
- per head, v_proj's outputs are rotated by a head_dim Hadamard and o_proj's inputs undo it (attention
  mixes tokens, not features, so this is exact too) to spread o_proj's input outliers;
- the final norm, which the action head and lm_head read, undoes the rotation exactly: it normalizes,
  multiplies by Q^T in fp32 and applies its gain, so both heads see the unrotated hidden states.
Everything is computed per tensor in fp32 and stored back in the tensor's own dtype.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from rynn_edge.runtime.model.backbone import ChameleonBackbone, RMSNorm

SEED = 0


def hadamard(n: int, seed: int = SEED) -> Tensor:
    """Orthogonal fp32 [n, n]: random signs times a (block-diagonal, for non powers of two) Sylvester
    Hadamard matrix, normalized. Blocks are the largest power of two dividing n."""
    block = n & -n
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], n)
    full = np.kron(np.eye(n // block), h) / np.sqrt(block)
    return torch.from_numpy(signs[:, None] * full).float()


class UnrotatingNorm(nn.Module):
    """RMSNorm of a rotated residual that returns the *unrotated* normalized states: gain * (n(x) Q^T)."""

    def __init__(self, norm: RMSNorm, q: Tensor):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps
        self.unrotate = nn.Parameter(q.t().contiguous(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (h @ self.unrotate).to(x.dtype)


def _set(param: Tensor, value: Tensor) -> None:
    param.data = value.to(param.dtype)


@torch.no_grad()
def rotate(backbone: ChameleonBackbone, seed: int = SEED) -> ChameleonBackbone:
    """Fold the rotation into `backbone` in place (see the module docstring); returns it."""
    if isinstance(backbone.norm, UnrotatingNorm):
        return backbone
    device = backbone.embed_tokens.weight.device
    q = hadamard(backbone.cfg.hidden_size, seed).to(device)
    head = hadamard(backbone.cfg.head_dim, seed + 1).to(device)
    heads = torch.block_diag(*[head] * backbone.cfg.num_attention_heads)
    emb = backbone.embed_tokens.weight
    for start in range(0, emb.shape[0], 8192):  # in slices: the 7B embedding is 1 GB in fp32
        emb.data[start : start + 8192] = (emb[start : start + 8192].float() @ q).to(emb.dtype)
    for layer in backbone.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for norm, readers in (
            (layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
            (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
        ):
            gain = norm.weight.float()
            for linear in readers:
                _set(linear.weight, (linear.weight.float() * gain) @ q)
            _set(norm.weight, torch.ones_like(gain))
        _set(attn.v_proj.weight, heads.t() @ attn.v_proj.weight.float())
        _set(attn.o_proj.weight, q.t() @ (attn.o_proj.weight.float() @ heads))
        _set(mlp.down_proj.weight, q.t() @ mlp.down_proj.weight.float())
    backbone.norm = UnrotatingNorm(backbone.norm, q)
    return backbone
