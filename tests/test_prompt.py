"""Prompt layout, binning and discrete action decoding, checked against upstream's rules."""

from __future__ import annotations

import numpy as np
import pytest

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tiny.tokenizer import write_tiny_tokenizer
from rynn_edge.runtime.tokens import prompt as p
from rynn_edge.runtime.tokens.stats import load_stats
from rynn_edge.runtime.tokens.text import (
    IMAGE,
    STATE,
    WORLD_MODEL_EVAL_SENTENCE,
    WORLD_MODEL_TRAIN_SENTENCE,
    TextTokenizer,
)
from rynn_edge.runtime.tokens.vocab import ImageVocab

SO100, LIBERO, WORLD = load_stats("so100"), load_stats("libero"), load_stats("libero_world")
INSTRUCTION = "Place the strawberries from the table into the cup."


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextTokenizer, ImageVocab]:
    root = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(root / "tokenizer", root / "vq", seed=1)
    return TextTokenizer.from_dir(root / "tokenizer"), ImageVocab.from_file(
        root / "vq" / "text_tokenizer.json"
    )


def _codes(seed: int, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 8192, side * side)


def test_binning_edges():
    edges = p.BIN_EDGES
    assert p.to_bins(np.array([-1.0, 1.0])).tolist() == [1, 256]
    assert p.to_bins(np.nextafter(1.0, 0.0)) == 255
    assert p.to_bins(edges[10]) == 11 and p.to_bins(np.nextafter(edges[10], -2)) == 10
    with pytest.raises(UserError, match="NaN"):
        p.to_bins(np.array([0.0, np.nan]))


def test_normalize_clips_and_matches_upstream_float64():
    r = SO100.state
    x32 = np.array([-200.0, 24.16992188, 0.1, 30.5, 500.0, 68.23027802], dtype=np.float32)
    n = p.normalize(x32, r)
    # upstream: float32 state minus float64 constants -> the whole expression in float64
    expected = np.clip(2 * (x32 - r.min) / (r.max - r.min + 1e-8) - 1, -1, 1)
    np.testing.assert_array_equal(n, expected)
    assert n[0] == -1 and n[4] == 1
    with pytest.raises(UserError, match="NaN"):
        p.normalize(np.array([0, 0, 0, np.nan, 0, 0]), r)
    with pytest.raises(UserError, match="expect 6 values"):
        p.normalize(np.zeros(7), r)


def test_state_block_and_round_trip_to_bin_centres():
    rng = np.random.default_rng(0)
    r = LIBERO.state
    state = r.min + rng.random(8) * (r.max - r.min)
    block = p.state_block(state, LIBERO)
    assert len(block) == 10 and block[0] == 15504 and block[-1] == 16004
    d = np.array(block[1:-1]) - 15505
    assert d.min() >= 1 and d.max() <= 256
    back = p.denormalize(p.BIN_CENTERS[d - 1], r)
    assert np.all(np.abs(back - state) <= (r.max - r.min) / 255 / 2 + 1e-9)
    with pytest.raises(UserError, match="no 'state' range"):
        p.state_block(np.zeros(7), WORLD)


def test_action_tokens_round_trip():
    rng = np.random.default_rng(1)
    r = SO100.action
    actions = r.min + rng.random((20, 6)) * (r.max - r.min)
    tokens = [t for a in actions for t in p.action_block(a, SO100)] + [8710]
    assert len(tokens) == 161 and tokens[:1] == [10004] and tokens[7] == 15004
    decoded = p.decode_action_tokens(tokens, SO100, 6)
    assert decoded.shape == (20, 6) and decoded.dtype == np.float64
    assert np.all(np.abs(decoded - actions) <= (r.max - r.min) / 255 / 2 + 1e-9)
    # clipped extremes decode to the outermost bin centres
    ext = p.decode_action_tokens(
        p.action_block(r.max + 100, SO100) + p.action_block(r.min - 100, SO100), SO100, 6
    )
    np.testing.assert_allclose(ext[0], p.denormalize(np.full(6, p.BIN_CENTERS[-1]), r))
    np.testing.assert_allclose(ext[1], p.denormalize(np.full(6, p.BIN_CENTERS[0]), r))


def test_malformed_action_blocks_are_parsed_like_upstream():
    ok = [10004, 10100, 10101, 15004]
    centres = p.action_tokens_to_normalized
    # a 15004 with no open block is ignored; a later 10004 restarts the block; an open block is dropped
    got = centres([15004, 10004, 10050, 10004, *ok[1:], *ok, 10004, 10100], 2)
    np.testing.assert_array_equal(got, p.BIN_CENTERS[[[94, 95], [94, 95]]])
    # stop at the first block with the wrong number of values, even if good blocks follow
    assert centres([*ok, 10004, 10100, 15004, *ok], 2).shape == (1, 2)
    # ids that are not value tokens are clipped into the bin range, as upstream does
    np.testing.assert_array_equal(centres([10004, 8710, 20000, 15004], 2), [p.BIN_CENTERS[[0, 254]]])
    assert centres([8710], 7).shape == (0, 7)


def test_denormalize_float32_matches_upstream_promotion():
    v = np.array([[-1.0, -0.5, 0.0, 0.25, 0.9, 1.0]], dtype=np.float32)
    out = p.denormalize(v, SO100.action)
    half = ((v + 1) / 2).astype(np.float64)  # float32 arithmetic first, like upstream's numpy code
    np.testing.assert_array_equal(out, half * (SO100.action.max - SO100.action.min + 1e-8) + SO100.action.min)


@pytest.mark.parametrize(("side", "total", "size_id"), [(16, 276, 8812), (32, 1060, 8820)])
def test_image_block_layout(tok, side, total, size_id):
    _, vocab = tok
    codes = _codes(side, side)
    block = p.image_block(codes, vocab)
    assert len(block) == total
    assert block[:3] == [8197, size_id, size_id] and block[-1] == 8196
    rows = np.array(block[3:-1]).reshape(side, side + 1)
    assert (rows[:, -1] == 8803).all()
    np.testing.assert_array_equal(rows[:, :-1].ravel(), vocab.code_to_id[codes])
    assert not np.array_equal(rows[:, :-1].ravel(), codes + 4)
    assert p.image_block(codes.reshape(side, side), vocab) == block


def test_image_block_rectangular_and_errors(tok):
    _, vocab = tok
    codes = np.random.default_rng(0).integers(0, 8192, (14, 18))
    block = p.image_block(codes, vocab)
    assert len(block) == 270 and block[:3] == [8197, 8811, 8813]
    assert block[3 + 18] == 8803
    with pytest.raises(UserError, match="square"):
        p.image_block(np.zeros(200, dtype=int), vocab)
    with pytest.raises(UserError, match="even"):
        p.image_block(np.zeros((15, 15), dtype=int), vocab)


def test_so100_prompt_layout(tok):
    text, vocab = tok
    front, wrist = _codes(1), _codes(2)
    state = np.array([0.0, 100.0, 90.0, 20.0, 0.0, 30.0])
    ids = p.vla_prompt(text, INSTRUCTION, state, [front, wrist], SO100, vocab)
    head = text.instruction_ids(INSTRUCTION)
    n_text = len(head) - 1
    assert len(ids) == n_text + 562
    assert ids[: len(head)] == head and ids[0] == 0
    k = len(head)
    assert ids[k : k + 8] == p.state_block(state, SO100)
    assert ids[k + 8 : k + 284] == p.image_block(front, vocab)
    assert ids[k + 284 : k + 560] == p.image_block(wrist, vocab)
    assert ids[-1] == 8710


@pytest.mark.parametrize("n_images", [2, 4])
def test_libero_prompt_with_history(tok, n_images):
    text, vocab = tok
    images = [_codes(10 + i) for i in range(n_images)]
    state = (LIBERO.state.min + LIBERO.state.max) / 2
    ids = p.vla_prompt(text, "put the bowl on the plate", state, images, LIBERO, vocab)
    head = text.instruction_ids("put the bowl on the plate")
    assert len(ids) == len(head) + 10 + 276 * n_images + 1
    start = len(head) + 10
    for i, codes in enumerate(images):  # images stay in the order given
        assert ids[start + 276 * i : start + 276 * (i + 1)] == p.image_block(codes, vocab)
    without_state = p.vla_prompt(text, "put the bowl on the plate", None, images, LIBERO, vocab)
    assert without_state == ids[: len(head)] + ids[len(head) + 10 :]


def test_world_model_prompt_uses_its_own_action_range(tok):
    text, vocab = tok
    images = [_codes(20, 32), _codes(21, 32)]
    action = np.array([0.0, 0.0, 0.0, 0.36, 0.0, -0.37, 1.0])
    ids = p.world_model_prompt(text, images, action, WORLD, vocab)
    head = text.prefix_ids(WORLD_MODEL_EVAL_SENTENCE + IMAGE)
    assert len(ids) == len(head) + 2 * 1060 + 9 + 1
    assert ids[len(head) : len(head) + 1060] == p.image_block(images[0], vocab)
    block = ids[-10:-1]
    assert block == p.action_block(action, WORLD) and block[0] == 10004 and block[-1] == 15004
    assert block[4] != 10005 + 256  # 0.36 fits the world-model range; the VLA range clips it to the top bin
    assert p.action_block(action, LIBERO)[4] == 10005 + 256
    trained = p.world_model_prompt(
        text, images[:1], action, WORLD, vocab, sentence=WORLD_MODEL_TRAIN_SENTENCE
    )
    assert trained[: len(head)] != head and trained[-10:] == ids[-10:]


def test_placeholders_are_filled_per_type_in_order_of_appearance(tok):
    text, _ = tok
    pieces = text.turn_pieces("x" + IMAGE + STATE + IMAGE)
    ids = p._fill(pieces, {IMAGE: [[1], [2]], STATE: [[3]]})
    assert ids[-4:] == [1, 3, 2, 8710]
    with pytest.raises(UserError, match="2 <\\|image\\|> placeholders but 3 were given"):
        p._fill(pieces, {IMAGE: [[1], [2], [4]], STATE: [[3]]})
