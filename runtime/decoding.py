"""Greedy decoding loops, independent of the backend.

A backend supplies a `StepModel`: `begin` runs the prefill and returns the logits of the last
prompt position, `step` feeds one token at an absolute position with an explicit key mask over
every slot written so far. All attention rules (the action-block mask of the VLA, plain causal for
the world model) and all structure forcing live here, so every backend decodes identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from rynn_edge.runtime import vocab as V


class StepModel(Protocol):
    def begin(self, prompt_ids: Sequence[int], capacity: int) -> np.ndarray:
        """Prefill the prompt into a cache of `capacity` slots; return fp32 logits of its last position."""

    def step(self, token: int, position: int, key_mask: np.ndarray) -> np.ndarray:
        """Write `token` at slot `position`; attend to slots where key_mask[:position + 1] is True."""


def _pair_blocks(tokens: np.ndarray, start_id: int, end_id: int) -> list[tuple[int, int]]:
    """Start/end positions matched in order; an open last block ends at the last position.

    Mirrors the reference mask builder, including its handling of a surplus end token (the last
    end is dropped); any other mismatch is malformed output the reference also refuses.
    """
    starts = np.flatnonzero(tokens == start_id).tolist()
    ends = np.flatnonzero(tokens == end_id).tolist()
    if len(starts) > len(ends):
        ends.append(len(tokens) - 1)
    elif len(starts) < len(ends):
        ends = ends[:-1]
    if len(starts) != len(ends):
        raise ValueError(
            f"malformed sequence: {len(starts)} block starts ({start_id}) vs {len(ends)} ends ({end_id})"
        )
    return list(zip(starts, ends, strict=True))


def action_mask_row(tokens: Sequence[int]) -> np.ndarray:
    """Keys the LAST token of `tokens` may attend to under the VLA action-block mask.

    Causal, except that a query inside an action block that starts after the last image block
    may not see any earlier action block (research §4.3).
    """
    seq = np.asarray(tokens, dtype=np.int64)
    row = np.ones(len(seq), dtype=bool)
    image_blocks = _pair_blocks(seq, V.IMAGE_START_ID, V.IMAGE_END_ID)
    last_image_end = image_blocks[-1][1] if image_blocks else -1
    action_blocks = _pair_blocks(seq, V.ACTION_START_ID, V.ACTION_END_ID)
    query = len(seq) - 1
    for start, end in action_blocks:
        if start <= query <= end and start > last_image_end:
            for prev_start, prev_end in action_blocks:
                if prev_end < start:
                    row[prev_start : prev_end + 1] = False
    return row


def _run_greedy(
    model: StepModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    choose,
    key_mask_for,
) -> list[int]:
    """Shared loop: `choose(logits, generated) -> token`; `key_mask_for(sequence) -> bool row`.

    Stops after 8710 or `max_new_tokens` tokens, like the reference's generate.
    """
    sequence = list(prompt_ids)
    capacity = len(sequence) + max_new_tokens
    logits = model.begin(sequence, capacity)
    generated: list[int] = []
    mask = np.zeros(capacity, dtype=bool)
    while True:
        token = choose(logits, generated)
        generated.append(token)
        sequence.append(token)
        if token == V.TURN_SEP_ID or len(generated) >= max_new_tokens:
            return generated
        position = len(sequence) - 1
        mask[: position + 1] = key_mask_for(sequence)
        mask[position + 1 :] = False
        logits = model.step(token, position, mask)


def greedy_actions(model: StepModel, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Discrete action chunk: plain greedy under the action-block mask, stopping at 8710."""
    return _run_greedy(
        model, prompt_ids, max_new_tokens, lambda logits, _: int(np.argmax(logits)), action_mask_row
    )


def greedy_causal(model: StepModel, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Plain greedy with a causal mask, stopping at 8710: the reference world-model decode."""
    return _run_greedy(
        model,
        prompt_ids,
        max_new_tokens,
        lambda logits, _: int(np.argmax(logits)),
        lambda seq: np.ones(len(seq), dtype=bool),
    )


def image_structure(grid_h: int, grid_w: int) -> list[int | None]:
    """Token template of one image: fixed ids, or None where an image code is chosen.

    Size tokens count 32-px patches, i.e. half the latent grid (16x16 latent -> 8812).
    """
    size_h, size_w = V.size_token_id(grid_h // 2), V.size_token_id(grid_w // 2)
    row = [None] * grid_w + [V.ROW_END_ID]
    return [V.IMAGE_START_ID, size_h, size_w, *(row * grid_h), V.IMAGE_END_ID]


def greedy_images(
    model: StepModel,
    prompt_ids: Sequence[int],
    image_ids: np.ndarray,
    grid_h: int,
    grid_w: int,
    num_images: int,
) -> list[int]:
    """Structure-forced world-model decode: every output is `num_images` well-formed images + 8710.

    Fixed tokens (image start, size tokens, row ends, image end, final separator) are forced; at
    every code slot the argmax is taken over the 8192 image ids only. Plain causal attention.
    """
    template = image_structure(grid_h, grid_w) * num_images + [V.TURN_SEP_ID]
    allowed = np.asarray(image_ids, dtype=np.int64)

    def choose(logits: np.ndarray, generated: list[int]) -> int:
        fixed = template[len(generated)]
        if fixed is not None:
            return fixed
        return int(allowed[int(np.argmax(logits[allowed]))])

    return _run_greedy(model, prompt_ids, len(template), choose, lambda seq: np.ones(len(seq), dtype=bool))


def image_spans(tokens: Sequence[int]) -> list[list[int]]:
    """Each 8197 ... 8196 span of generated tokens, in order (an unclosed last span runs to the end)."""
    spans, current = [], None
    for token in tokens:
        if token == V.IMAGE_START_ID:
            current = [token]
            spans.append(current)
        elif current is not None:
            current.append(token)
            if token == V.IMAGE_END_ID:
                current = None
    return spans
