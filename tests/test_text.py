"""Text tokenizer: same ids as upstream's AutoTokenizer path; pieces split at the media placeholders."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tiny.tokenizer import write_tiny_tokenizer
from rynn_edge.runtime.tokens.text import (
    ACTION,
    IMAGE,
    PLACEHOLDERS,
    STATE,
    WORLD_MODEL_EVAL_SENTENCE,
    WORLD_MODEL_TRAIN_SENTENCE,
    TextTokenizer,
    vla_question,
)

INSTRUCTIONS = (
    "Place the block inside the circle.",
    "Place the strawberries from the table into the cup.",
    "Pick up the holder and place it straight then pick up the pen and place it in the holder",
    "put both the alphabet soup and the tomato sauce in the basket",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines, émigré café 123",
    "",
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(root / "tokenizer", root / "vq")
    return root / "tokenizer"


@pytest.fixture(scope="module")
def text(tokenizer_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_dir(tokenizer_dir)


@pytest.fixture(scope="module")
def hf(tokenizer_dir: Path):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.add_tokens(list(PLACEHOLDERS))  # as upstream's MMConvItemProcessor does
    return tok


def _flatten(text: TextTokenizer, human: str) -> list[int]:
    out: list[int] = []
    for piece in text.turn_pieces(human):
        out += [text.placeholder_ids[piece]] if isinstance(piece, str) else list(piece)
    return out


def _human_turns(instruction: str) -> list[str]:
    q = vla_question(instruction)
    return [
        q + STATE + IMAGE + IMAGE,
        q + STATE + IMAGE * 4,
        q + IMAGE,
        WORLD_MODEL_EVAL_SENTENCE + IMAGE + IMAGE + ACTION,
        WORLD_MODEL_TRAIN_SENTENCE + IMAGE + ACTION,
    ]


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_same_ids_as_transformers_autotokenizer(hf, text, instruction):
    assert hf.bos_token_id == text.bos_id == 0
    assert hf.convert_tokens_to_ids("<reserved08706>") == 8710
    for human in _human_turns(instruction):
        # upstream: Conversation appends the separator; encode(bos=True) = [bos] + add_special_tokens=False
        expected = [
            hf.bos_token_id,
            *hf.encode(human + "<reserved08706>", truncation=False, add_special_tokens=False),
        ]
        placeholder_map = {text.placeholder_ids[n]: hf.convert_tokens_to_ids(n) for n in PLACEHOLDERS}
        assert [placeholder_map.get(i, i) for i in _flatten(text, human)] == expected


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_pieces_structure_and_lossless_text(tokenizer_dir, text, instruction):
    """Tokenizer-independent invariants: BOS once, placeholders in order, text pieces decode to the text."""
    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    pieces = text.turn_pieces(vla_question(instruction) + STATE + IMAGE * 4)
    assert [p for p in pieces if isinstance(p, str)] == [STATE] + [IMAGE] * 4
    assert pieces[-1] == (8710,)
    first = pieces[0]
    assert first[0] == text.bos_id and text.bos_id not in first[1:]
    assert raw.decode(list(first[1:]), skip_special_tokens=False) == vla_question(instruction)
    assert list(first) == text.instruction_ids(instruction)
    # The text before a placeholder is tokenised on its own: what follows never changes it.
    for human in _human_turns(instruction)[:3]:
        assert text.prefix_ids(human) == text.instruction_ids(instruction)


def test_post_processor_bos_is_not_added(text):
    assert text.encode("pick up the bowl")[0] != text.bos_id
    assert text.encode("<reserved08706>") == [8710]


def test_pieces_are_cached_per_string(text):
    human = vla_question("open the top drawer") + STATE + IMAGE
    assert text.turn_pieces(human) is text.turn_pieces(human)


def test_leading_placeholder_leaves_bos_alone(text):
    assert text.turn_pieces(IMAGE)[:2] == ((text.bos_id,), IMAGE)


def test_errors(tmp_path, tokenizer_dir):
    with pytest.raises(UserError, match="tokenizer.json: not found"):
        TextTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be loaded"):
        TextTokenizer.from_dir(tmp_path)
    with pytest.raises(UserError, match=r"contains the reserved marker <\|image\|>"):
        vla_question("put <|image|> here")
