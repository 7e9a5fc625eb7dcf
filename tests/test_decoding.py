"""Greedy decoding: the action-block mask, structure forcing, and crafted weights that emit real blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from crafted import IMG, VALUES, A, blocks, craft

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.torch import TorchStepModel
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.tokens import vocab as V
from rynn_edge.runtime.tokens.image_layout import ImageLayout


def test_mask_hides_earlier_action_blocks_after_the_last_image() -> None:
    prompt = [0, 100, *IMG, V.TURN_SEP_ID]
    block1 = [V.ACTION_START_ID, 10010, 10011, V.ACTION_END_ID]
    seq = prompt + block1 + [V.ACTION_START_ID, 10020]
    row = decoding.action_mask_row(seq)
    n = len(prompt)
    assert row[:n].all()  # the prompt is always visible
    assert not row[n : n + len(block1)].any()  # the whole previous block, start and end included
    assert row[n + len(block1) :].all()  # its own block so far


def test_mask_is_causal_outside_action_blocks_and_before_images() -> None:
    # World-model layout: images, an action block, then a generated image: plain causal.
    seq = [0, *IMG, V.ACTION_START_ID, 10010, V.ACTION_END_ID, V.IMAGE_START_ID, 8812, 8812, 7]
    assert decoding.action_mask_row(seq).all()
    # A post-image block hides every earlier block, even one before the images (the reference's rule).
    seq = [0, V.ACTION_START_ID, 10010, V.ACTION_END_ID, *IMG, V.ACTION_START_ID, 10011]
    assert decoding.action_mask_row(seq).tolist() == [True] + [False] * 3 + [True] * 9
    # The separator after the last block is outside every block: plain causal.
    seq = [0, *IMG, V.ACTION_START_ID, 10010, V.ACTION_END_ID, V.TURN_SEP_ID]
    assert decoding.action_mask_row(seq).all()


def test_mask_pairs_starts_and_ends_in_order_like_the_reference() -> None:
    # A doubled end token shifts the pairing: starts [8, 12] and ends [10, 11] zip to (8, 10), (12, 11),
    # so the last query sits in no block and sees everything (the reference behaves the same way).
    s, e = V.ACTION_START_ID, V.ACTION_END_ID
    seq = [0, *IMG, s, 10010, e, e, s, 10011]
    assert decoding.action_mask_row(seq).all()
    # Without the doubled end the same query is in block 2 and block 1 is hidden.
    seq = [0, *IMG, s, 10010, e, s, 10011]
    assert decoding.action_mask_row(seq).tolist() == [True] * 8 + [False] * 3 + [True] * 2
    with pytest.raises(ValueError, match="malformed"):
        decoding.action_mask_row([0, e, e, e, s])


def test_image_structure_template() -> None:
    template = ImageLayout(16, 16).template()
    assert len(template) == 276
    assert template[:3] == [V.IMAGE_START_ID, 8812, 8812] and template[-1] == V.IMAGE_END_ID
    assert template.count(V.ROW_END_ID) == 16 and template.count(None) == 256


def test_image_spans_split_generated_images() -> None:
    tokens = [*IMG, *IMG[:4], V.TURN_SEP_ID]
    spans = decoding.image_spans(tokens)
    assert spans[0] == IMG and spans[1] == [*IMG[:4], V.TURN_SEP_ID]


# --- crafted weights (tests/crafted.py) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def crafted(so100_bundle):
    """A backbone that emits 10004, A values, 15004, 10004, ... with values chosen by attention."""
    cfg, backbone, _ = load_model(so100_bundle["model"])
    craft(backbone, blocks(V.ACTION_START_ID, V.ACTION_START_ID))
    return cfg, backbone, VALUES


def _prompt(cfg) -> list[int]:
    rng = np.random.default_rng(3)
    return [0, *rng.integers(16200, 16300, 12).tolist(), *IMG, *IMG, V.TURN_SEP_ID]


def test_crafted_model_emits_well_formed_blocks_and_mask_changes_values(crafted) -> None:
    cfg, backbone, subsets = crafted
    prompt = _prompt(cfg)
    budget = 4 * (A + 2)
    tokens = decoding.greedy_actions(TorchStepModel(backbone), prompt, budget)
    blocks = np.asarray(tokens).reshape(4, A + 2)
    assert (blocks[:, 0] == V.ACTION_START_ID).all() and (blocks[:, -1] == V.ACTION_END_ID).all()
    for k, subset in enumerate(subsets):
        assert set(blocks[:, 1 + k].tolist()) <= set(subset)
    causal = decoding.greedy_causal(TorchStepModel(backbone), prompt, budget)
    assert causal[: A + 2] == tokens[: A + 2]  # nothing is hidden inside the first block
    assert causal != tokens, "the action mask must matter: later blocks see different keys"


def test_masked_decode_equals_prefill_without_the_hidden_blocks(crafted) -> None:
    """Independent check of the mask: block k decoded after blocks 1..k-1 must equal a fresh causal
    prefill of prompt + block k alone, with RoPE positions that still count the hidden blocks."""
    cfg, backbone, _ = crafted
    prompt = _prompt(cfg)
    tokens = decoding.greedy_actions(TorchStepModel(backbone), prompt, 3 * (A + 2))
    last = tokens[2 * (A + 2) :]
    ids = torch.tensor([prompt + last[:-1]])
    n = len(prompt)
    positions = torch.tensor([list(range(n)) + list(range(n + 2 * (A + 2), n + 3 * (A + 2) - 1))])
    with torch.no_grad():
        hidden = backbone.prefill(ids, positions, torch.ones_like(ids, dtype=torch.bool))
        expected = backbone.logits(hidden[0, n - 1 :]).argmax(-1).tolist()
    # position n-1 (the 8710) predicts the first block's 10004, then the block's own tokens follow
    assert expected[1:] == last[1:]


def test_structure_forcing_always_gives_well_formed_images(so100_bundle) -> None:
    cfg, backbone, _ = load_model(so100_bundle["model"])
    image_ids = np.arange(4, 4 + V.N_IMAGE_CODES)
    tokens = decoding.greedy_images(TorchStepModel(backbone), [0, 16201, 16202], image_ids, 4, 6, 2)
    template = ImageLayout(4, 6).template()
    assert len(tokens) == 2 * len(template) + 1 and tokens[-1] == V.TURN_SEP_ID
    for span in decoding.image_spans(tokens):
        for got, want in zip(span, template, strict=True):
            assert got == want if want is not None else 4 <= got < 4 + V.N_IMAGE_CODES
