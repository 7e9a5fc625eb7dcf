"""Special ids and the IMGIMG code <-> id table, on the synthetic Chameleon vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tiny.tokenizer import image_token_name, write_tiny_tokenizer
from rynn_edge.runtime.tokens import vocab as v


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("tok")
    vocabulary = write_tiny_tokenizer(root / "tokenizer", root / "vq", seed=3)
    return root / "vq" / "text_tokenizer.json", vocabulary


def test_table_is_the_written_permutation_not_an_offset(tiny):
    path, vocabulary = tiny
    table = v.ImageVocab.from_file(path)
    written = np.array([vocabulary[image_token_name(c)] for c in range(v.N_IMAGE_CODES)])
    assert table.code_to_id.dtype == np.int64 and table.code_to_id.shape == (8192,)
    np.testing.assert_array_equal(table.code_to_id, written)
    assert sorted(written.tolist()) == list(range(4, 8196))
    assert (written != np.arange(8192) + 4).mean() > 0.99


def test_special_ids_follow_the_reserved_rule(tiny):
    _, vocabulary = tiny
    assert [vocabulary[n] for n in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocabulary["<eoss>"] == v.IMAGE_END_ID == 8196
    assert vocabulary["<racm3:break>"] == v.IMAGE_START_ID == 8197
    named = {
        "<reserved08706>": v.TURN_SEP_ID,
        "<reserved08799>": v.ROW_END_ID,
        "<reserved08808>": v.size_token_id(8),
        "<reserved10000>": v.ACTION_START_ID,
        "<reserved15000>": v.ACTION_END_ID,
        "<reserved15500>": v.STATE_START_ID,
        "<reserved16000>": v.STATE_END_ID,
    }
    for name, token_id in named.items():
        assert vocabulary[name] == token_id == v.reserved_id(int(name[9:14]))
    assert (v.TURN_SEP_ID, v.ROW_END_ID, v.size_token_id(8), v.size_token_id(16)) == (8710, 8803, 8812, 8820)
    block_ids = (v.ACTION_START_ID, v.ACTION_END_ID, v.STATE_START_ID, v.STATE_END_ID)
    assert block_ids == (10004, 15004, 15504, 16004)
    # Value tokens (bins 1..256) are reserved tokens too.
    assert vocabulary["<reserved10002>"] == v.ACTION_VALUE_OFFSET + 1
    assert vocabulary["<reserved15757>"] == v.STATE_VALUE_OFFSET + 256


def test_code_names_parse_like_upstream():
    assert v.image_code_from_name("IMGIMGBCDZ") == 123
    assert v.image_code_from_name("IMGIMGAZ") == 0
    assert v.image_code_from_name(image_token_name(8191)) == 8191


def test_codes_ids_round_trip_keeps_shape(tiny):
    table = v.ImageVocab.from_file(tiny[0])
    codes = np.random.default_rng(0).integers(0, 8192, (2, 16, 16))
    ids = table.ids_from_codes(codes)
    assert ids.shape == codes.shape
    np.testing.assert_array_equal(table.codes_from_ids(ids), codes)


@pytest.mark.parametrize("bad", [8710, 8196, 0, 60000, -1])
def test_non_image_id_is_named(tiny, bad):
    table = v.ImageVocab.from_file(tiny[0])
    ok = int(table.code_to_id[5])
    with pytest.raises(UserError, match=f"token id {bad} is not an image token"):
        table.codes_from_ids([ok, bad, ok])


def test_code_out_of_range(tiny):
    table = v.ImageVocab.from_file(tiny[0])
    with pytest.raises(UserError, match="8192"):
        table.ids_from_codes([0, 8192])


def _write_vocab(path: Path, vocabulary: dict[str, int]) -> Path:
    path.write_text(json.dumps({"model": {"vocab": vocabulary}}))
    return path


def test_file_errors(tmp_path, tiny):
    _, vocabulary = tiny
    with pytest.raises(UserError, match="not found"):
        v.ImageVocab.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        v.ImageVocab.from_file(tmp_path / "bad.json")
    (tmp_path / "flat.json").write_text(json.dumps({"vocab": {}}))
    with pytest.raises(UserError, match=r"flat.json: no 'model.vocab'"):
        v.ImageVocab.from_file(tmp_path / "flat.json")
    short = {k: i for k, i in vocabulary.items() if k != image_token_name(17)}
    with pytest.raises(UserError, match="expected 8192 IMGIMG\\* entries, found 8191"):
        v.ImageVocab.from_file(_write_vocab(tmp_path / "short.json", short))
    with pytest.raises(UserError, match="found 0"):
        v.ImageVocab.from_file(_write_vocab(tmp_path / "none.json", {"<s>": 0}))
    dup = dict(vocabulary, IMGIMGBY=99999)  # code 1 a second time, other trailing char
    with pytest.raises(UserError, match="code 1 appears twice"):
        v.ImageVocab.from_file(_write_vocab(tmp_path / "dup.json", dup))
