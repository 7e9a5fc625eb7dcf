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

from rynn_edge.runtime.tokens import vocab as V
from rynn_edge.runtime.tokens.image_layout import ImageLayout


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
    may not see any earlier action block: upstream builds the training mask this way so that each
    predicted action block depends on the observation alone, not on the blocks decoded before it.
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
    template = ImageLayout(grid_h, grid_w).template() * num_images + [V.TURN_SEP_ID]
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


# --- parallel discrete decoding -------------------------------------------------------------------------
class BatchStepModel(StepModel, Protocol):
    def step_many(self, tokens: Sequence[int], positions: Sequence[int], key_mask: np.ndarray) -> np.ndarray:
        """Write tokens[i] at slot positions[i] (all of them first), then token i attends to the slots
        where key_mask[i] is True (its own slot included). Returns fp32 logits [N, V]."""


# Tokens that change the mask's block pairing or stop decoding: a block value must be none of these.
_STRUCTURE_IDS = (V.ACTION_START_ID, V.ACTION_END_ID, V.TURN_SEP_ID, V.IMAGE_START_ID, V.IMAGE_END_ID)


def _prompt_is_balanced(prompt: np.ndarray) -> bool:
    """Every image and action block of the prompt is closed, so generated blocks pair with themselves."""
    return all(
        (prompt == start).sum() == (prompt == end).sum()
        for start, end in ((V.IMAGE_START_ID, V.IMAGE_END_ID), (V.ACTION_START_ID, V.ACTION_END_ID))
    )


def _well_formed(block: list[int], action_dim: int) -> bool:
    values = np.asarray(block[1 : 1 + action_dim])
    return block[-1] == V.ACTION_END_ID and not np.isin(values, _STRUCTURE_IDS).any()


def _decode_blocks(
    model: BatchStepModel, first: int, count: int, prompt_row: np.ndarray, action_dim: int, capacity: int
) -> tuple[list[list[int]], list[int]]:
    """Blocks first..first+count-1 in A+2 batched steps: block k starts with 10004 at slot L + k(A+2).

    Returns each block's A+2 tokens and the token its closing 15004 predicts (the next block's start).
    """
    width = action_dim + 2
    length = len(prompt_row)
    starts = length + width * np.arange(first, first + count)
    mask = np.zeros((count, capacity), dtype=bool)
    mask[:, :length] = prompt_row
    tokens = np.full(count, V.ACTION_START_ID, dtype=np.int64)
    blocks: list[list[int]] = [[] for _ in range(count)]
    for j in range(width):
        mask[np.arange(count), starts + j] = True
        logits = model.step_many(tokens.tolist(), (starts + j).tolist(), mask)
        for block, token in zip(blocks, tokens.tolist(), strict=True):
            block.append(token)
        tokens = np.argmax(logits, axis=-1)
    return blocks, tokens.tolist()


def greedy_actions_parallel(
    model: BatchStepModel, prompt_ids: Sequence[int], time_horizon: int, action_dim: int, max_new_tokens: int
) -> list[int]:
    """Exactly `greedy_actions(model, prompt_ids, max_new_tokens)`, with the T blocks decoded as one batch.

    Why it is the same: under the action mask a query in generated block k attends to the prompt (minus
    any action block inside the prompt) and to block k so far, never to earlier blocks, and RoPE uses the
    same absolute positions L + k(A+2) + j that sequential decoding gives it. So once block k starts with
    10004, its tokens and the token predicted at its closing 15004 are a function of (prompt, k) alone,
    and all blocks can be decoded together over the shared prompt cache: A+2 batched steps instead of
    T(A+2) single ones, each block in the slots sequential decoding would use.

    The shortcut holds only for what sequential decoding would really see; everything else decodes
    sequentially (re-running the prefill), so the output is always identical:
    - the prompt has an unclosed image or action block (the pairing of later blocks would shift);
    - the token after the prompt, or after a block's 15004, is neither 10004 nor the final 8710;
    - a block is malformed: a value is 10004/15004/8710/8197/8196 (they change the mask or stop), or
      its last token is not 15004.
    When the model asks for more than T blocks, further waves of T blocks follow, still in parallel.
    Floating point: batched matmuls may round differently from single-token ones, so a top-2 tie within
    rounding could in principle flip a token; the parity tests check the tokens themselves.
    """
    prompt = np.asarray(prompt_ids, dtype=np.int64)
    n_blocks = -(-max_new_tokens // (action_dim + 2))
    capacity = len(prompt) + n_blocks * (action_dim + 2)
    first = int(np.argmax(model.begin(prompt.tolist(), capacity)))
    tokens = None
    if first == V.ACTION_START_ID and _prompt_is_balanced(prompt):
        tokens = _parallel_waves(model, prompt, time_horizon, action_dim, max_new_tokens, capacity)
    return tokens if tokens is not None else greedy_actions(model, prompt_ids, max_new_tokens)


def _parallel_waves(
    model: BatchStepModel,
    prompt: np.ndarray,
    time_horizon: int,
    action_dim: int,
    max_new_tokens: int,
    capacity: int,
) -> list[int] | None:
    """Waves of up to T parallel blocks, assembled as sequential decoding emits them; None = fall back."""
    width = action_dim + 2
    n_blocks = (capacity - len(prompt)) // width
    prompt_row = action_mask_row([*prompt.tolist(), V.ACTION_START_ID])[:-1]
    generated: list[int] = []
    done = 0
    while True:
        count = min(time_horizon, n_blocks - done)
        blocks, follows = _decode_blocks(model, done, count, prompt_row, action_dim, capacity)
        for block, after in zip(blocks, follows, strict=True):
            if not _well_formed(block, action_dim):
                return None
            room = max_new_tokens - len(generated)
            generated += block[:room]
            if room <= width:  # the budget ends inside or right after this block
                return generated
            if after == V.TURN_SEP_ID:
                return [*generated, after]
            if after != V.ACTION_START_ID:
                return None
            done += 1


def discrete_actions(
    model: StepModel,
    prompt_ids: Sequence[int],
    time_horizon: int,
    action_dim: int,
    max_new_tokens: int,
    *,
    parallel: bool = True,
) -> list[int]:
    """Greedy discrete chunk: parallel blocks where the model can batch (`step_many`), else sequential."""
    if parallel and hasattr(model, "step_many"):
        return greedy_actions_parallel(model, prompt_ids, time_horizon, action_dim, max_new_tokens)
    return greedy_actions(model, prompt_ids, max_new_tokens)
