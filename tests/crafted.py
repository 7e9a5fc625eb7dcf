"""Crafted weights that make a tiny backbone emit well-formed action blocks.

The next token's CLASS follows the block structure from the current token alone (embeddings live in
the first half of the hidden dims along orthonormal class directions), while the value picked inside a
class depends only on attention output (attention writes to the second half; MLPs are off), so on the
action mask and on RoPE positions.
"""

from __future__ import annotations

import numpy as np
import torch

from rynn_edge.runtime.tokens import vocab as V

A = 3  # values per block
IMG = [V.IMAGE_START_ID, 8812, 8812, 5, 6, V.ROW_END_ID, V.IMAGE_END_ID]
VALUES = [
    s.tolist() for s in np.array_split(np.arange(V.ACTION_VALUE_OFFSET + 1, V.ACTION_VALUE_OFFSET + 241), A)
]


def craft(backbone, classes: list[tuple[list[int], list[int]]], seed: int = 7) -> None:
    """classes: (members, follows): a token in `members` predicts one of `follows` (in place)."""
    h = backbone.cfg.hidden_size
    half = h // 2
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(half, len(classes), generator=gen))[0].T
    with torch.no_grad():
        emb, head = backbone.embed_tokens.weight, backbone.lm_head.weight
        emb.normal_(generator=gen)
        emb[:, half:] = 0
        head.zero_()
        for direction, (members, follows) in zip(directions, classes, strict=True):
            emb[members, :half] = 0.3 * emb[members, :half] + 12.0 * direction
            head[follows, :half] = 4.0 * direction
        for subset in VALUES:
            head[subset, half:] = torch.randn(len(subset), h - half, generator=gen)
        for layer in backbone.layers:
            layer.self_attn.o_proj.weight[:half] = 0
            layer.mlp.down_proj.weight.zero_()
        backbone.norm.weight.fill_(1.0)


def blocks(after_prompt: int, after_end: int, last: list[int] | None = None) -> list:
    """8710 -> after_prompt; 10004 -> values 1 -> ... -> values A -> `last` (15004); 15004 -> after_end."""
    if after_prompt == after_end:
        classes = [([V.TURN_SEP_ID, V.ACTION_END_ID], [after_prompt])]
    else:
        classes = [([V.TURN_SEP_ID], [after_prompt]), ([V.ACTION_END_ID], [after_end])]
    classes.append(([V.ACTION_START_ID], VALUES[0]))
    classes += [(VALUES[k - 1], VALUES[k]) for k in range(1, A)]
    classes.append((VALUES[-1], last or [V.ACTION_END_ID]))
    return classes
