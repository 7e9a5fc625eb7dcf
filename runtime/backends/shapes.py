"""Shapes shared by the exporter and the backends: the manifest's shape expressions and length buckets.

A manifest writes each I/O shape as a list of ints and dim expressions: a dim name ("L"), a sum of
names ("S+N"), or a name times 16 ("16h", the VQ decoder's pixels per latent cell).
"""

from __future__ import annotations

from collections.abc import Sequence

LENGTH_BUCKET = 128  # prompts are padded up to a multiple of this: one graph / engine binding per bucket


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def dim_size(expr: int | str, dims: dict[str, int]) -> int:
    """The size of one shape entry for concrete dims, e.g. dim_size("S+N", {"S": 600, "N": 20}) == 620."""
    if isinstance(expr, int):
        return expr
    if "+" in expr:
        return sum(dims[d] for d in expr.split("+"))
    if expr.startswith("16"):
        return 16 * dims[expr[2:]]
    return dims[expr]


def concrete(shape: Sequence[int | str], dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dim_size(d, dims) for d in shape)
