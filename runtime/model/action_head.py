"""RynnVLA-002 continuous action head ("Action Transformer") with plain, export-friendly ops.

Upstream: T*A learned queries appended after the prompt hidden states, Linear H->d, 2 post-LN encoder
layers (4 heads, FFN 4d, ReLU) + LayerNorm, last T*A rows regrouped to [T, A*d], MLP-ResNet -> [T, A].
Module and parameter names mirror upstream's state-dict keys (prefix `action_head.`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (packed in_proj, rows q, k, v), computed with separate matmuls."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        b, n, d = x.shape
        w, bias = self.in_proj_weight, self.in_proj_bias
        q, k, v = (
            F.linear(x, w[i * d : (i + 1) * d], bias[i * d : (i + 1) * d])
            .view(b, n, self.n_heads, d // self.n_heads)
            .transpose(1, 2)
            for i in range(3)
        )
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :])
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Post-LN nn.TransformerEncoderLayer (ReLU, eps 1e-5), eval mode."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.self_attn = SelfAttention(d, n_heads)
        self.linear1 = nn.Linear(d, 4 * d)
        self.linear2 = nn.Linear(4 * d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        x = self.norm1(x + self.self_attn(x, key_valid))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class Encoder(nn.Module):
    def __init__(self, d: int, n_heads: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, key_valid)
        return self.norm(x)


class ResBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, d_in: int, d: int, d_out: int, n_blocks: int = 2):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(d_in)
        self.fc1 = nn.Linear(d_in, d)
        self.mlp_resnet_blocks = nn.ModuleList(ResBlock(d) for _ in range(n_blocks))
        self.layer_norm2 = nn.LayerNorm(d)
        self.fc2 = nn.Linear(d, d_out)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class OutputProjection(nn.Module):
    def __init__(self, d: int, action_dim: int):
        super().__init__()
        self.model = MLPResNet(action_dim * d, d, action_dim)


class ActionHead(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        width: int,
        time_horizon: int,
        action_dim: int,
        n_heads: int = 4,
        n_layers: int = 2,
    ):
        super().__init__()
        self.hidden_size, self.width = hidden_size, width
        self.time_horizon, self.action_dim = time_horizon, action_dim
        self.action_token_embeddings = nn.Embedding(1, time_horizon * action_dim * hidden_size)
        self.hidden_projection = nn.Linear(hidden_size, width)
        self.transformer_encoder = Encoder(width, n_heads, n_layers)
        self.output_projection = OutputProjection(width, action_dim)

    def forward(self, hidden: Tensor, valid: Tensor) -> Tensor:
        """hidden [B, L, H] (backbone final-norm states), valid [B, L] bool (False = padding) -> [B, T, A].

        The encoder is bidirectional without positional encoding, so masking padding keys anywhere in
        the sequence equals upstream's per-sample [context, queries, zero padding] layout."""
        b = hidden.shape[0]
        n_q = self.time_horizon * self.action_dim
        queries = self.action_token_embeddings.weight.view(1, n_q, self.hidden_size).expand(b, -1, -1)
        context = torch.where(
            valid[..., None], hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        )
        x = self.hidden_projection(torch.cat([context, queries.to(hidden.dtype)], dim=1))
        key_valid = torch.cat([valid, valid.new_ones(b, n_q)], dim=1)
        x = self.transformer_encoder(x, key_valid)[:, -n_q:]
        # query q = t * A + a  ->  step t, features [a*d, (a+1)*d)
        x = x.reshape(b, self.time_horizon, self.action_dim * self.width)
        return self.output_projection.model(x)
