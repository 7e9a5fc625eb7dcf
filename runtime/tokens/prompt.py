"""Prompt ids for the VLA and world-model queries, and discrete action tokens back to values.

Follows upstream's ``FlexARItemProcessor_Action_State`` / ``MMConvItemProcessor``: the human turn is
tokenised once (see ``text.py``), then each placeholder is replaced by the next media of its own type in
order of appearance: ``<|state|>`` by a state block, ``<|image|>`` by an image block, ``<|action|>`` by an
action block. Normalisation and binning run in float64 like upstream's numpy code, so the bins are
identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tokens.image_layout import ImageLayout
from rynn_edge.runtime.tokens.stats import Range, Stats
from rynn_edge.runtime.tokens.text import (
    ACTION,
    IMAGE,
    STATE,
    WORLD_MODEL_EVAL_SENTENCE,
    Piece,
    TextTokenizer,
    vla_question,
)
from rynn_edge.runtime.tokens.vocab import (
    ACTION_END_ID,
    ACTION_START_ID,
    N_BINS,
    STATE_END_ID,
    STATE_START_ID,
    ImageVocab,
)

BIN_EDGES = np.linspace(-1.0, 1.0, N_BINS)
BIN_CENTERS = (BIN_EDGES[:-1] + BIN_EDGES[1:]) / 2.0
_EPS = 1e-8  # upstream adds it to (max - min) both ways


def _check_vector(x: np.ndarray, r: Range, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1:] != (r.dim,):
        raise UserError(f"{what} has shape {x.shape}; the statistics expect {r.dim} values per step")
    if not np.isfinite(x).all():
        raise UserError(f"{what} contains NaN or infinity: {x.tolist()}")
    return x


def normalize(x: np.ndarray, r: Range, what: str = "value") -> np.ndarray:
    """Min/max to [-1, 1], clipped: ``clip(2 (x - min) / (max - min + 1e-8) - 1, -1, 1)``."""
    x = _check_vector(x, r, what)
    return np.clip(2 * (x - r.min) / (r.max - r.min + _EPS) - 1, -1, 1)


def denormalize(v: np.ndarray, r: Range) -> np.ndarray:
    """Inverse of ``normalize`` on [-1, 1]: ``(v + 1) / 2 * (max - min + 1e-8) + min``.

    Upstream feeds float32 (the head output, or torch bin centres) so ``(v + 1) / 2`` runs in float32 and
    the rest in float64; numpy does the same here for a float32 ``v``.
    """
    return (v + 1) / 2 * (r.max - r.min + _EPS) + r.min


def to_bins(n: np.ndarray) -> np.ndarray:
    """Bin index 1..256 of normalised values (``np.digitize`` on 256 edges; 256 only for exactly 1.0)."""
    n = np.asarray(n, dtype=np.float64)
    if not np.isfinite(n).all():
        raise UserError(f"cannot bin NaN or infinite values: {n.tolist()}")
    return np.digitize(n, BIN_EDGES)


def _value_block(x: np.ndarray, r: Range, start: int, end: int, what: str) -> list[int]:
    values = to_bins(normalize(x, r, what)) + start + 1
    return [start, *values.tolist(), end]


def state_block(state: np.ndarray, stats: Stats) -> list[int]:
    """``[15504, 15505 + d_1, ..., 16004]`` for one state vector."""
    if stats.state is None:
        raise UserError("these statistics have no 'state' range; the model needs one for its state input")
    return _value_block(state, stats.state, STATE_START_ID, STATE_END_ID, "state")


def action_block(action: np.ndarray, stats: Stats) -> list[int]:
    """``[10004, 10005 + d_1, ..., 15004]`` for one action step."""
    return _value_block(action, stats.action, ACTION_START_ID, ACTION_END_ID, "action")


def image_block(codes: np.ndarray, vocab: ImageVocab) -> list[int]:
    """The image's tokens (`image_layout`) for VQ codes ``[h*w]`` (square) or ``[h, w]``."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        layout = ImageLayout.square(len(codes))
    elif codes.ndim == 2:
        layout = ImageLayout(*codes.shape)
    else:
        raise UserError(f"VQ codes of shape {codes.shape}: expected [h, w] with even h and w")
    return layout.tokens(vocab.ids_from_codes(codes.reshape(layout.grid_h, layout.grid_w)))


def _fill(pieces: Sequence[Piece], media: dict[str, list[list[int]]]) -> list[int]:
    used = dict.fromkeys(media, 0)
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, str):
            ids += media[piece][used[piece]]
            used[piece] += 1
        else:
            ids += piece
    for name, blocks in media.items():
        if used[name] != len(blocks):
            raise UserError(f"prompt has {used[name]} {name} placeholders but {len(blocks)} were given")
    return ids


def vla_prompt(
    text_tok: TextTokenizer,
    instruction: str,
    state: np.ndarray | None,
    images_codes: Sequence[np.ndarray],
    stats: Stats,
    vocab: ImageVocab,
) -> list[int]:
    """``[BOS] text [state block] image blocks... 8710`` (images in the order given).

    SO100: images = [front, wrist]. LIBERO: [third, wrist] on the first query, then
    [third_prev, wrist_prev, third, wrist]. ``state=None`` builds the upstream variants without state.
    """
    if not images_codes:
        raise UserError("a VLA prompt needs at least one image")
    media = {IMAGE: [image_block(c, vocab) for c in images_codes]}
    human = vla_question(instruction)
    if state is not None:
        human += STATE
        media[STATE] = [state_block(state, stats)]
    return _fill(text_tok.turn_pieces(human + IMAGE * len(images_codes)), media)


def world_model_prompt(
    text_tok: TextTokenizer,
    images_codes: Sequence[np.ndarray],
    action: np.ndarray,
    stats: Stats,
    vocab: ImageVocab,
    *,
    sentence: str = WORLD_MODEL_EVAL_SENTENCE,
) -> list[int]:
    """``[BOS] sentence image blocks... action block 8710`` for "imagine the next frame(s)".

    Use the ``libero_world`` statistics for LIBERO world models (not the VLA ones). ``sentence`` defaults to
    the LIBERO eval sentence; the models were trained with ``WORLD_MODEL_TRAIN_SENTENCE`` (the LeRobot
    world model only ever saw that one).
    """
    if not images_codes:
        raise UserError("a world-model prompt needs at least one image")
    media = {IMAGE: [image_block(c, vocab) for c in images_codes], ACTION: [action_block(action, stats)]}
    return _fill(text_tok.turn_pieces(sentence + IMAGE * len(images_codes) + ACTION), media)


def action_tokens_to_normalized(tokens: Sequence[int], action_dim: int) -> np.ndarray:
    """Generated ids -> normalised actions ``[T, action_dim]`` (bin centres in [-1, 1], float64).

    Like upstream: a block is the ids between a 10004 and the next 15004 (a later 10004 restarts it, a
    15004 without an open block is ignored, a block left open is dropped). Every id in a block decodes to
    the centre of bin ``clip(id - 10006, 0, 254)``, even a non-value id. Blocks are kept in order up to the
    first one that does not have exactly ``action_dim`` values.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    centres = BIN_CENTERS[np.clip(tokens - ACTION_START_ID - 2, 0, N_BINS - 2)]
    steps: list[np.ndarray] = []
    start: int | None = None
    for i, t in enumerate(tokens.tolist()):
        if t == ACTION_START_ID:
            start = i
        elif t == ACTION_END_ID:
            if start is not None:
                block = centres[start + 1 : i]
                if len(block) != action_dim:
                    break
                steps.append(block)
            start = None
    if not steps:
        return np.zeros((0, action_dim), dtype=np.float64)
    return np.stack(steps)


def decode_action_tokens(tokens: Sequence[int], stats: Stats, action_dim: int) -> np.ndarray:
    """Generated ids -> de-normalised actions ``[T, action_dim]`` (float64)."""
    return denormalize(action_tokens_to_normalized(tokens, action_dim), stats.action)
