"""Parallel discrete decoding gives exactly the sequential greedy tokens, and falls back where it must.

Crafted weights (tests/crafted.py): the next token's CLASS follows the block structure from
the current token alone, while the value picked inside a class depends on attention output, so on the
mask and on RoPE positions. Any error in the parallel path's masks, positions or cache slots changes
values; a parallel path that silently always fell back is caught by counting the model's calls.
"""

from __future__ import annotations

import numpy as np
import pytest
from crafted import IMG, VALUES, A, blocks, craft

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.torch import TorchStepModel
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.tokens import vocab as V


class Counting(TorchStepModel):
    def __init__(self, backbone):
        super().__init__(backbone)
        self.calls = {"begin": 0, "step": 0, "step_many": 0}

    def begin(self, prompt_ids, capacity):
        self.calls["begin"] += 1
        return super().begin(prompt_ids, capacity)

    def step(self, token, position, key_mask):
        self.calls["step"] += 1
        return super().step(token, position, key_mask)

    def step_many(self, tokens, positions, key_mask):
        self.calls["step_many"] += 1
        return super().step_many(tokens, positions, key_mask)


@pytest.fixture(scope="module")
def model_dir(so100_bundle):
    return so100_bundle["model"]


def crafted(model_dir, classes):
    _, backbone, _ = load_model(model_dir)
    craft(backbone, classes)
    return backbone


def prompt_ids(seed: int = 3) -> list[int]:
    rng = np.random.default_rng(seed)
    return [0, *rng.integers(16200, 16300, 12).tolist(), *IMG, *IMG, V.TURN_SEP_ID]


def both(backbone, prompt, horizon, budget):
    sequential = decoding.greedy_actions(TorchStepModel(backbone), prompt, budget)
    model = Counting(backbone)
    parallel = decoding.greedy_actions_parallel(model, prompt, horizon, A, budget)
    return sequential, parallel, model.calls


@pytest.fixture(scope="module")
def well_formed(model_dir):
    return crafted(model_dir, blocks(V.ACTION_START_ID, V.ACTION_START_ID))


@pytest.mark.parametrize("horizon, budget", [(4, 4 * (A + 2)), (4, 4 * (A + 2) - 2), (3, 7 * (A + 2) + 1)])
def test_parallel_equals_sequential_with_one_step_per_block_token(well_formed, horizon, budget) -> None:
    sequential, parallel, calls = both(well_formed, prompt_ids(), horizon, budget)
    assert parallel == sequential
    assert len(sequential) == budget  # the crafted model never stops: the budget ends the answer
    n_blocks = -(-budget // (A + 2))
    waves = -(-n_blocks // horizon)
    assert calls == {"begin": 1, "step": 0, "step_many": waves * (A + 2)}
    decoded = np.asarray(sequential[: (budget // (A + 2)) * (A + 2)]).reshape(-1, A + 2)
    assert (decoded[:, 0] == V.ACTION_START_ID).all() and (decoded[:, -1] == V.ACTION_END_ID).all()
    assert len({tuple(b) for b in decoded[:, 1:-1].tolist()}) > 1, "blocks must differ (RoPE positions)"


def test_mask_and_positions_matter_for_the_crafted_model(well_formed) -> None:
    """Guard for the test itself: plain causal decoding differs, so parity above is not vacuous."""
    prompt, budget = prompt_ids(), 4 * (A + 2)
    causal = decoding.greedy_causal(TorchStepModel(well_formed), prompt, budget)
    assert causal != decoding.greedy_actions(TorchStepModel(well_formed), prompt, budget)


def test_answer_ending_with_8710_after_a_block(model_dir) -> None:
    backbone = crafted(model_dir, blocks(V.ACTION_START_ID, V.TURN_SEP_ID))
    sequential, parallel, calls = both(backbone, prompt_ids(), 4, 40)
    assert parallel == sequential and sequential[-1] == V.TURN_SEP_ID and len(sequential) == A + 3
    assert calls["step"] == 0


@pytest.mark.parametrize(
    "case",
    ["first token not 10004", "block not closed by 15004", "15004 followed by other", "open image in prompt"],
)
def test_fallback_to_sequential_is_identical(model_dir, case) -> None:
    prompt = prompt_ids()
    classes = blocks(V.ACTION_START_ID, V.ACTION_START_ID)
    if case == "first token not 10004":
        classes = blocks(VALUES[1][0], V.ACTION_START_ID)
    elif case == "block not closed by 15004":
        classes = blocks(V.ACTION_START_ID, V.ACTION_START_ID, last=VALUES[0])
    elif case == "15004 followed by other":
        classes = blocks(V.ACTION_START_ID, VALUES[0][0])  # a third 15004 would be malformed
    else:
        prompt = [*prompt[:-1], V.IMAGE_START_ID, 8812, V.TURN_SEP_ID]
    backbone = crafted(model_dir, classes)
    sequential, parallel, calls = both(backbone, prompt, 4, 2 * (A + 2))
    assert parallel == sequential
    assert calls["step"] == len(sequential) - 1, "sequential decoding must have produced the answer"


def test_discrete_actions_dispatch(well_formed) -> None:
    prompt, budget = prompt_ids(), 2 * (A + 2)
    model = Counting(well_formed)
    tokens = decoding.discrete_actions(model, prompt, 2, A, budget, parallel=False)
    assert model.calls["step_many"] == 0 and model.calls["step"] == budget - 1
    assert decoding.discrete_actions(Counting(well_formed), prompt, 2, A, budget) == tokens
