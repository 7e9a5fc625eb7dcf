"""Error-compensated rounding of a weight onto its low-bit grid (GPTQ, Frantar et al. 2022).

Round-to-nearest rounds every weight on its own. GPTQ rounds the rows of W [K, N] (one per input
channel) in order and, after each, moves the rows not yet rounded so that the linear's output on the
calibration inputs changes as little as possible: the rounding error e_k of row k is spread over rows
k+1.. through the inverse Hessian H^-1 of the output error, H = X^T X. It is the int4 recipe of QuaRot
(Hadamard rotation, then GPTQ) and cuts the per-token output error of int4 weights ~4x on the outlier
stress checkpoint.

Two choices differ from the paper:
- H is built from unit-norm input rows, so it weighs every token's *relative* error alike (the
  search's metric). With raw rows, the massive-activation tokens (1000x the others) own H and GPTQ
  trades every ordinary token's accuracy for theirs.
- The grid (scales) is fixed before rounding ("static groups"): the Plan's scales are the ones the
  round-to-nearest recipe picks, so both roundings write the same graph.
The rows are the calibration sample (`search.Calibration.rows`); with fewer rows than input channels
H is singular and the damping (DAMP of its mean diagonal) makes it invertible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DAMP = 0.01
BATCH = 128  # rows rounded between two updates of the rest (the paper's lazy batch updates)


def inverse_hessian_factor(rows: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor [K, K] of the damped inverse of H = X^T X over unit-norm rows [M, K]. In fp32,
    as the paper: the damping bounds H's condition number, and fp64 would triple the time at K = 11008."""
    x = rows.float()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    h = x.t() @ x
    dead = h.diagonal() == 0  # channels that are zero on every row: any value is exact there
    h[dead, dead] = 1.0
    h.diagonal().add_(DAMP * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def round_compensated(
    w: torch.Tensor,
    rows: torch.Tensor,
    row_scale: Callable[[int], torch.Tensor],
    levels: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Grid levels [K, N] for weight `w` [K, N] (fp32) read by input rows `rows` [M, K]: row k's value is
    levels(row, row_scale(k)) * row_scale(k)."""
    u = inverse_hessian_factor(rows)
    w = w.clone()
    out = torch.empty_like(w)
    k = w.shape[0]
    for start in range(0, k, BATCH):
        stop = min(start + BATCH, k)
        block = w[start:stop]  # a view: updated in place
        errors = torch.empty_like(block)
        for r in range(stop - start):
            i = start + r
            scale = row_scale(i)
            out[i] = levels(block[r], scale)
            errors[r] = (block[r] - out[i] * scale) / u[i, i]
            block[r + 1 :] -= u[i, i + 1 : stop, None] * errors[r]
        w[stop:] -= u[start:stop, stop:].t() @ errors
    return out
