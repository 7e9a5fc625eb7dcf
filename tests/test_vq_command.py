"""`rynn-edge vq encode/decode`: the round trip through the installed console script, the other cases
through the same CLI entry point in-process (a subprocess pays the torch import each time)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rynn_edge.runtime.cli import main
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.vqgan import VQGAN
from rynn_edge.runtime.tiny.tokenizer import write_tiny_tokenizer
from rynn_edge.runtime.tiny.vq import write_tiny_vq
from rynn_edge.runtime.tokens.image_layout import codes_from_image_tokens
from rynn_edge.runtime.tokens.images import load_image, to_model_input
from rynn_edge.runtime.tokens.vocab import IMAGE_END_ID, IMAGE_START_ID, ROW_END_ID, ImageVocab, size_token_id


def rynn_edge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed console script of THIS environment (not whatever `rynn-edge` is first on PATH)."""
    script = Path(sys.executable).parent / "rynn-edge"
    return subprocess.run([str(script), "vq", *map(str, args)], capture_output=True, text=True, timeout=120)


def in_process(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["vq", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vqcli")
    write_tiny_vq(root / "vq", seed=0)
    write_tiny_tokenizer(root / "tokenizer", root / "vq", seed=0)
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    small.resize((320, 240), Image.Resampling.BILINEAR).save(root / "frame.png")
    return root


@pytest.fixture(scope="module")
def model(work: Path) -> VQGAN:
    return VQGAN.from_dir(work / "vq")


@pytest.fixture(scope="module")
def encoded(work: Path) -> dict:
    result = rynn_edge("encode", "--vq", work / "vq", work / "frame.png", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def expected_pixels(model: VQGAN, grid: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.decode(torch.from_numpy(grid)[None])[0].numpy()


def image_tokens(vocab: ImageVocab, grid: np.ndarray) -> list[int]:
    h, w = grid.shape
    rows = np.concatenate([vocab.ids_from_codes(grid), np.full((h, 1), ROW_END_ID)], axis=1)
    return [
        IMAGE_START_ID,
        size_token_id(h // 2),
        size_token_id(w // 2),
        *rows.flatten().tolist(),
        IMAGE_END_ID,
    ]


def test_encode_json_matches_the_library(work: Path, model: VQGAN, encoded: dict) -> None:
    assert encoded["grid"] == [16, 16] and encoded["size"] == 256
    with torch.no_grad():
        codes = model.encode(to_model_input([load_image(work / "frame.png")], 256))
    assert encoded["codes"] == codes[0].tolist()


def test_encode_text_prints_the_grid(work: Path, encoded: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(capsys, "encode", "--vq", work / "vq", work / "frame.png")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if not line.startswith("#")]
    assert [int(c) for row in rows for c in row] == encoded["codes"]
    assert len(rows) == 16


def test_encode_512(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = in_process(
        capsys, "encode", "--vq", work / "vq", work / "frame.png", "--size", "512", "--json"
    )
    assert code == 0, err
    out = json.loads(stdout)
    assert out["grid"] == [32, 32] and out["size"] == 512 and len(out["codes"]) == 1024


@pytest.mark.parametrize("layout", ["encode-json", "nested", "tokens"])
def test_decode_layouts_give_the_same_image(
    work: Path, model: VQGAN, encoded: dict, tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = np.array(encoded["codes"], dtype=np.int64).reshape(16, 16)
    if layout == "encode-json":
        payload: object = encoded
    elif layout == "nested":
        payload = grid.tolist()
    else:
        payload = image_tokens(ImageVocab.from_file(work / "vq" / "text_tokenizer.json"), grid)
    (tmp_path / "in.json").write_text(json.dumps(payload))
    args = ("decode", "--vq", work / "vq", tmp_path / "in.json", "-o", tmp_path / "out.png")
    if layout == "encode-json":  # the round trip through the console script
        result = rynn_edge(*args)
        assert result.returncode == 0, result.stderr
    else:
        code, _, err = in_process(capsys, *args)
        assert code == 0, err
    assert np.array_equal(np.array(Image.open(tmp_path / "out.png")), expected_pixels(model, grid))


def test_decode_rejects_a_malformed_token_list(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vocab = ImageVocab.from_file(work / "vq" / "text_tokenizer.json")
    tokens = image_tokens(vocab, np.zeros((16, 16), dtype=np.int64))
    tokens[3 + 16] = int(vocab.code_to_id[0])  # first row end replaced by an image token
    (tmp_path / "bad.json").write_text(json.dumps(tokens))
    code, _, err = in_process(
        capsys, "decode", "--vq", work / "vq", tmp_path / "bad.json", "-o", tmp_path / "x.png"
    )
    assert code == 2
    assert f"must end with {ROW_END_ID}" in err
    assert not (tmp_path / "x.png").exists()


def test_pickled_checkpoint_needs_trust_pickle(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = torch.load(work / "vq" / "vqgan.ckpt", weights_only=True)
    (tmp_path / "vqgan.yaml").write_text((work / "vq" / "vqgan.yaml").read_text())
    torch.save({**state, "hyper_parameters": argparse.Namespace(lr=1e-4)}, tmp_path / "vqgan.ckpt")
    refused = rynn_edge("encode", "--vq", tmp_path, work / "frame.png", "--json")
    assert refused.returncode == 2
    assert "not plain weights" in refused.stderr and "--trust-pickle" in refused.stderr
    code, _, err = in_process(
        capsys, "encode", "--vq", tmp_path, work / "frame.png", "--json", "--trust-pickle"
    )
    assert code == 0, err


def test_tokens_without_start_and_end_are_accepted(work: Path) -> None:
    vocab = ImageVocab.from_file(work / "vq" / "text_tokenizer.json")
    grid = np.arange(4 * 6, dtype=np.int64).reshape(4, 6) * 300
    tokens = np.array(image_tokens(vocab, grid)[1:-1])
    assert np.array_equal(codes_from_image_tokens(tokens, vocab), grid)


def test_tokens_with_a_non_image_id_or_wrong_length_are_errors(work: Path) -> None:
    vocab = ImageVocab.from_file(work / "vq" / "text_tokenizer.json")
    tokens = np.array(image_tokens(vocab, np.zeros((2, 2), dtype=np.int64)))
    with pytest.raises(UserError, match="row tokens, expected 2x"):
        codes_from_image_tokens(tokens[:-2], vocab)
    tokens[3] = ROW_END_ID
    with pytest.raises(UserError, match="not an image token"):
        codes_from_image_tokens(tokens, vocab)
