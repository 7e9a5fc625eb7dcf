"""Special token ids of the RynnVLA-002 (Chameleon) vocabulary and the VQ-code <-> token-id table.

Every hard-coded id follows Chameleon's rule ``<reservedNNNNN>`` -> id ``NNNNN + 4``. The image codes are
NOT at a fixed offset: their ids come from the ``IMGIMG*`` entries of Meta's ``text_tokenizer.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rynn_edge.runtime.errors import UserError

BOS_TOKEN = "<s>"  # its id is read from the text tokenizer (0 in Chameleon)
TURN_SEP_TOKEN = "<reserved08706>"

IMAGE_END_ID = 8196  # <eoss>
IMAGE_START_ID = 8197  # <racm3:break>
TURN_SEP_ID = 8710  # <reserved08706>: end of every turn, EOS for generation
ROW_END_ID = 8803  # <reserved08799>: after every row of image tokens
SIZE_TOKEN_BASE = 8804  # <reserved0{8800+n}>: image side of n 32-px patches
ACTION_START_ID = 10004  # <reserved10000>
ACTION_END_ID = 15004  # <reserved15000>
STATE_START_ID = 15504  # <reserved15500>
STATE_END_ID = 16004  # <reserved16000>

N_BINS = 256
# A value in bin d (1..256, np.digitize of 256 edges) is the token start + 1 + d.
ACTION_VALUE_OFFSET = ACTION_START_ID + 1
STATE_VALUE_OFFSET = STATE_START_ID + 1

N_IMAGE_CODES = 8192
IMAGE_TOKEN_PREFIX = "IMGIMG"
_LETTER_DIGITS = {chr(ord("A") + i): str(i) for i in range(10)}


def reserved_id(n: int) -> int:
    """Id of ``<reservedNNNNN>``."""
    return n + 4


def size_token_id(n_patches: int) -> int:
    """Id of the image size token for a side of ``n_patches`` 32-px patches (16 latent rows -> 8812)."""
    return SIZE_TOKEN_BASE + n_patches


def image_code_from_name(name: str) -> int:
    """Code carried by an ``IMGIMG`` token name: letters A..J are digits, the last character is dropped."""
    body = name[len(IMAGE_TOKEN_PREFIX) : -1]
    return int("".join(_LETTER_DIGITS.get(c, c) for c in body))


@dataclass(frozen=True)
class ImageVocab:
    """Dense VQ code -> token id table (8192 entries) and its inverse."""

    code_to_id: np.ndarray  # int64 [8192]
    id_to_code: np.ndarray  # int64 [max image id + 1], -1 where the id is not an image token

    @classmethod
    def from_mapping(cls, vocab: dict[str, int], source: str = "vocabulary") -> ImageVocab:
        code_to_id = np.full(N_IMAGE_CODES, -1, dtype=np.int64)
        n_entries = 0
        for name, token_id in vocab.items():
            if not name.startswith(IMAGE_TOKEN_PREFIX):
                continue
            n_entries += 1
            try:
                code = image_code_from_name(name)
            except ValueError:
                raise UserError(f"{source}: image token name {name!r} does not encode a code") from None
            if not 0 <= code < N_IMAGE_CODES:
                raise UserError(f"{source}: image token {name!r} encodes code {code}, outside 0..8191")
            if code_to_id[code] >= 0:
                raise UserError(f"{source}: image code {code} appears twice ({name!r})")
            code_to_id[code] = int(token_id)
        if n_entries != N_IMAGE_CODES:
            raise UserError(
                f"{source}: expected {N_IMAGE_CODES} {IMAGE_TOKEN_PREFIX}* entries, found {n_entries}; "
                "pass Chameleon's tokenizer/text_tokenizer.json"
            )
        if len(np.unique(code_to_id)) != N_IMAGE_CODES:
            raise UserError(f"{source}: two image codes share one token id")
        id_to_code = np.full(int(code_to_id.max()) + 1, -1, dtype=np.int64)
        id_to_code[code_to_id] = np.arange(N_IMAGE_CODES, dtype=np.int64)
        return cls(code_to_id=code_to_id, id_to_code=id_to_code)

    @classmethod
    def from_file(cls, text_tokenizer_json: str | Path) -> ImageVocab:
        """Read Meta's raw Chameleon ``text_tokenizer.json`` (``model.vocab`` maps names to ids)."""
        path = Path(text_tokenizer_json)
        if not path.is_file():
            raise UserError(f"{path}: Chameleon text_tokenizer.json not found (it sits next to vqgan.ckpt)")
        try:
            with path.open(encoding="utf8") as f:
                vocab = json.load(f)["model"]["vocab"]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        except (KeyError, TypeError):
            raise UserError(f"{path}: no 'model.vocab' (not a Chameleon text_tokenizer.json)") from None
        if not isinstance(vocab, dict):
            raise UserError(f"{path}: 'model.vocab' is not an object of name -> id")
        return cls.from_mapping(vocab, source=str(path))

    def ids_from_codes(self, codes: np.ndarray) -> np.ndarray:
        """Token ids for VQ codes (any shape)."""
        codes = np.asarray(codes, dtype=np.int64)
        bad = (codes < 0) | (codes >= N_IMAGE_CODES)
        if bad.any():
            raise UserError(f"VQ code {int(codes[bad].flat[0])} is outside 0..{N_IMAGE_CODES - 1}")
        return self.code_to_id[codes]

    def codes_from_ids(self, ids: np.ndarray) -> np.ndarray:
        """VQ codes for image token ids (any shape); a non-image id is an error that names it."""
        ids = np.asarray(ids, dtype=np.int64)
        in_range = (ids >= 0) & (ids < len(self.id_to_code))
        codes = np.where(in_range, self.id_to_code[np.where(in_range, ids, 0)], -1)
        bad = codes < 0
        if bad.any():
            raise UserError(f"token id {int(ids[bad].flat[0])} is not an image token")
        return codes
