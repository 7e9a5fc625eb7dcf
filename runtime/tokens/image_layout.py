"""The one definition of how an image sits in the token stream.

    8197 (image start), size_h, size_w, then h rows of [w code ids, 8803 (row end)], 8196 (image end)

Size tokens count 32-px patches, i.e. two latent rows/columns each (a 16x16 latent -> 8812, 8812).
The prompt builder, the structure-forced world-model decode, the GPU backend's in-graph code
scatter and the image-token parser all read it from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tokens.vocab import (
    IMAGE_END_ID,
    IMAGE_START_ID,
    ROW_END_ID,
    SIZE_TOKEN_BASE,
    ImageVocab,
    size_token_id,
)

HEADER = 3  # image start + two size tokens


@dataclass(frozen=True)
class ImageLayout:
    grid_h: int
    grid_w: int

    def __post_init__(self) -> None:
        if self.grid_h <= 0 or self.grid_w <= 0 or self.grid_h % 2 or self.grid_w % 2:
            raise UserError(f"latent grid {self.grid_h}x{self.grid_w}: expected positive, even sides")

    @classmethod
    def square(cls, n_codes: int) -> ImageLayout:
        side = round(n_codes**0.5)
        if side * side != n_codes:
            raise UserError(f"{n_codes} VQ codes do not form a square latent; pass them as [h, w]")
        return cls(side, side)

    @property
    def length(self) -> int:
        return HEADER + self.grid_h * (self.grid_w + 1) + 1

    def head(self) -> list[int]:
        return [IMAGE_START_ID, size_token_id(self.grid_h // 2), size_token_id(self.grid_w // 2)]

    def template(self) -> list[int | None]:
        """Fixed ids, or None where an image code goes."""
        row: list[int | None] = [None] * self.grid_w + [ROW_END_ID]
        return [*self.head(), *(row * self.grid_h), IMAGE_END_ID]

    def code_offsets(self) -> np.ndarray:
        """Offsets of the h*w code slots from the image start token, in raster order."""
        rows, cols = np.mgrid[0 : self.grid_h, 0 : self.grid_w]
        return (HEADER + rows * (self.grid_w + 1) + cols).reshape(-1)

    def code_positions(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Prompt positions of every image code, image after image, each in raster order."""
        starts = np.flatnonzero(np.asarray(prompt_ids) == IMAGE_START_ID)
        return (starts[:, None] + self.code_offsets()[None]).reshape(-1)

    def tokens(self, code_ids: np.ndarray) -> list[int]:
        """The block for a grid [h, w] of image token ids."""
        rows = np.empty((self.grid_h, self.grid_w + 1), dtype=np.int64)
        rows[:, : self.grid_w] = np.asarray(code_ids).reshape(self.grid_h, self.grid_w)
        rows[:, self.grid_w] = ROW_END_ID
        return [*self.head(), *rows.ravel().tolist(), IMAGE_END_ID]

    @classmethod
    def parse(cls, tokens: np.ndarray, source: str = "tokens") -> tuple[ImageLayout, np.ndarray]:
        """Image tokens as the model writes them (start/end optional) -> layout and the [h, w] code ids."""
        tokens = np.asarray(tokens)
        if len(tokens) and tokens[0] == IMAGE_START_ID:
            tokens = tokens[1:]
        if len(tokens) and tokens[-1] == IMAGE_END_ID:
            tokens = tokens[:-1]
        if len(tokens) < 2:
            raise UserError(f"{source}: image tokens need two size tokens and the rows")
        h, w = 2 * (int(tokens[0]) - SIZE_TOKEN_BASE), 2 * (int(tokens[1]) - SIZE_TOKEN_BASE)
        if h <= 0 or w <= 0:
            raise UserError(
                f"{source}: size tokens {int(tokens[0])}, {int(tokens[1])} are not image size ids"
            )
        rows = tokens[2:]
        if rows.size != h * (w + 1):
            raise UserError(
                f"{source}: {rows.size} row tokens, expected {h}x({w}+1) for a {h}x{w} latent grid"
            )
        rows = rows.reshape(h, w + 1)
        if (rows[:, -1] != ROW_END_ID).any():
            raise UserError(f"{source}: every row of {w} image tokens must end with {ROW_END_ID}")
        return cls(h, w), rows[:, :-1]


def codes_from_image_tokens(tokens: np.ndarray, vocab: ImageVocab, source: str = "tokens") -> np.ndarray:
    """Image token ids as the model writes them -> [h, w] codes (upstream's decode_image, validated)."""
    return vocab.codes_from_ids(ImageLayout.parse(tokens, source)[1])
