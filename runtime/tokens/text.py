"""Instruction text -> token ids, exactly as upstream's ``AutoTokenizer`` path produces them.

Upstream builds one string per conversation (each turn is its text followed by ``<reserved08706>``), adds
the media placeholders ``<|image|>``, ``<|action|>``, ``<|state|>`` to the tokenizer as plain added tokens,
tokenises the whole string with ``add_special_tokens=False`` and prepends BOS. The fast tokenizer splits
the string at added tokens before BPE, so every text piece between placeholders is tokenised on its own;
we run that same pipeline with the ``tokenizers`` library and keep the pieces.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tokens.vocab import BOS_TOKEN, TURN_SEP_ID, TURN_SEP_TOKEN

IMAGE = "<|image|>"
ACTION = "<|action|>"
STATE = "<|state|>"
# Registration order as in upstream's FlexARItemProcessor_Action_State.
PLACEHOLDERS = (IMAGE, ACTION, STATE)

VLA_QUESTION = "What action should the robot take to {instruction}?"
# World-model sentences: LIBERO's shipped eval, and training (LIBERO and LeRobot); they differ upstream.
WORLD_MODEL_EVAL_SENTENCE = "Generate the image based on the current image and the action."
WORLD_MODEL_TRAIN_SENTENCE = (
    "Generate the next image based on the provided sequence of historical images and corresponding actions."
)

# One piece of a tokenised turn: text ids, or the placeholder a media token list replaces.
Piece = tuple[int, ...] | str


def _bos_name(tokenizer_dir: Path) -> str:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = tokenizer_dir / name
        if not path.is_file():
            continue
        try:
            bos = json.loads(path.read_text(encoding="utf8")).get("bos_token")
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if isinstance(bos, dict):
            bos = bos.get("content")
        if isinstance(bos, str):
            return bos
    return BOS_TOKEN


def vla_question(instruction: str) -> str:
    for name in (*PLACEHOLDERS, TURN_SEP_TOKEN):
        if name in instruction:
            raise UserError(f"instruction {instruction!r} contains the reserved marker {name}; remove it")
    return VLA_QUESTION.format(instruction=instruction)


class TextTokenizer:
    """The HF text tokenizer of the checkpoint (``tokenizer.json``), with the media placeholders added."""

    def __init__(self, tokenizer: Tokenizer, bos_id: int) -> None:
        self._tok = tokenizer
        self.bos_id = bos_id
        self._tok.add_tokens(list(PLACEHOLDERS))
        self.placeholder_ids = {name: self._tok.token_to_id(name) for name in PLACEHOLDERS}
        self._placeholder_by_id = {i: name for name, i in self.placeholder_ids.items()}
        self.turn_pieces = lru_cache(maxsize=256)(self._turn_pieces)

    @classmethod
    def from_dir(cls, tokenizer_dir: str | Path) -> TextTokenizer:
        tokenizer_dir = Path(tokenizer_dir)
        path = tokenizer_dir / "tokenizer.json"
        if not path.is_file():
            raise UserError(
                f"{path}: not found; pass the checkpoint's text tokenizer folder "
                "(tokenizer.json + tokenizer_config.json, e.g. Lumina-mGPT-7B-768)"
            )
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on malformed files
            raise UserError(f"{path}: cannot be loaded as a tokenizers file ({e})") from None
        bos = _bos_name(tokenizer_dir)
        bos_id = tok.token_to_id(bos)
        if bos_id is None:
            raise UserError(f"{tokenizer_dir}: BOS token {bos!r} is not in tokenizer.json")
        if tok.token_to_id(TURN_SEP_TOKEN) != TURN_SEP_ID:
            raise UserError(
                f"{path}: {TURN_SEP_TOKEN} is not id {TURN_SEP_ID}; this is not a Chameleon tokenizer"
            )
        return cls(tok, bos_id)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens added (upstream ``add_special_tokens=False``)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def _turn_pieces(self, human_text: str) -> tuple[Piece, ...]:
        """``[BOS] + ids(human_text + <reserved08706>)`` split at placeholders (cached: turn_pieces)."""
        ids = [self.bos_id, *self.encode(human_text + TURN_SEP_TOKEN)]
        pieces: list[Piece] = []
        run: list[int] = []
        for i in ids:
            name = self._placeholder_by_id.get(i)
            if name is None:
                run.append(i)
                continue
            if run:
                pieces.append(tuple(run))
                run = []
            pieces.append(name)
        if run:
            pieces.append(tuple(run))
        return tuple(pieces)

    def prefix_ids(self, human_text: str) -> list[int]:
        """``[BOS] + ids`` of the text before the first placeholder of a one-turn prompt."""
        return list(self.turn_pieces(human_text)[0])  # the first piece always holds BOS

    def instruction_ids(self, instruction: str) -> list[int]:
        """``[BOS] + ids`` of the VLA question for ``instruction`` (what precedes the state block)."""
        return self.prefix_ids(vla_question(instruction) + STATE)
