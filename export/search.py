"""Calibration statistics, the per-linear smoothing search and the sensitivity report.

One pass of the fp32 torch backbone (the rotated one for `outlier-safe`) over the calibration prompts
records, per backbone linear, every input channel's absmax (the static activation scales) and a sample
of input rows: the largest-norm rows of each prompt (the massive-activation tokens, which set the
scales) plus evenly spaced others. On those rows each linear is simulated quantized
(`quantize.fake_quant`) for every candidate smoothing exponent alpha; the one with the smallest output
error wins (SmoothQuant's alpha searched per layer, AWQ's grid search for int4); at that alpha, GPTQ
rounding (`rynn_edge.export.gptq`) replaces round-to-nearest when it lowers the error. Its output error
against fp32 -- RMS of the per-token relative error, worst and mean token cosine -- is its sensitivity,
which orders the accuracy fallback and goes into the manifest.

`Ranges` is the fp16 overflow guard's input: the absmax of every linear's output and every decoder
layer's residual output on the same prompts (unrotated model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rynn_edge.export.quantize import Plan, backbone_linears, fake_quant, plan_linear

ROWS_PER_PROMPT = 96
TOP_ROWS = 8  # of them, the largest-norm rows
ALPHAS = {"outlier-safe": (0.0, 0.25, 0.5, 0.65, 0.8, 0.9), "plain": None}  # plain: fixed per scheme, below
PLAIN_ALPHA = {"int8": 0.5, "fp8": 0.0, "int4": 0.0}
FP16_MAX = 65504.0
FP16_MARGIN = 2.0  # refuse fp16 when calibration comes within 2x of its max (held-out inputs vary)


@dataclass
class Calibration:
    """Per backbone linear (torch module name): input channel absmax [K] and sampled input rows [M, K]."""

    absmax: dict[str, np.ndarray]
    rows: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def collect(cls, backbone: nn.Module, run_samples: Callable[[], Any]) -> Calibration:
        """Hook every backbone linear, call `run_samples()` (which runs prefills), keep the statistics."""
        absmax: dict[str, np.ndarray] = {}
        rows: dict[str, list[torch.Tensor]] = {}
        hooks = []
        for name, module in backbone_linears(backbone).items():

            def hook(_m, args, name=name):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                a = x.abs().amax(0).numpy()
                absmax[name] = np.maximum(absmax[name], a) if name in absmax else a
                rows.setdefault(name, []).append(x[_sample(x)].clone())

            hooks.append(module.register_forward_pre_hook(hook))
        try:
            run_samples()
        finally:
            for h in hooks:
                h.remove()
        return cls(absmax, {name: torch.cat(r) for name, r in rows.items()})


def _sample(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] <= ROWS_PER_PROMPT:
        return torch.arange(x.shape[0])
    top = x.norm(dim=1).topk(TOP_ROWS).indices
    rest = torch.linspace(0, x.shape[0] - 1, ROWS_PER_PROMPT - TOP_ROWS).long()
    return torch.unique(torch.cat([top, rest]))


@dataclass
class Sensitivity:
    """One linear quantized: its own output error on the sampled rows (relative_error, cosine_*) and,
    with only it quantized in the whole fp32 backbone, the final hidden states' cosine against fp32 on
    the calibration prompts (hidden_cosine_*: what quantizing this linear costs end to end)."""

    alpha: float
    relative_error: float
    cosine_min: float
    cosine_mean: float
    hidden_cosine_min: float = 1.0
    hidden_cosine_mean: float = 1.0
    rounding: str = "nearest"  # or "gptq": error-compensated (rynn_edge.export.gptq)

    def as_dict(self) -> dict[str, float | str]:
        return {k: v if isinstance(v, str) else round(float(v), 6) for k, v in self.__dict__.items()}

    def plan(self, name: str, w: np.ndarray, calibration: Calibration, scheme: str, method: str) -> Plan:
        """The quantization this search result stands for, of linear `name` with weight `w` [K, N]."""
        rows = calibration.rows[name] if self.rounding == "gptq" else None
        return plan_linear(scheme, w, calibration.absmax[name], self.alpha, method == "outlier-safe", rows)


def _error(y: torch.Tensor, yq: torch.Tensor) -> tuple[float, float, float]:
    """(RMS over rows of the row's relative error, worst and mean row cosine). Per row, not over the
    whole matrix: a Frobenius error is all massive-activation rows and hides every other token."""
    row = (yq - y).norm(dim=1) / y.norm(dim=1).clamp_min(1e-30)
    rel = float(row.pow(2).mean().sqrt())
    cos = torch.nn.functional.cosine_similarity(yq.double(), y.double(), dim=1, eps=1e-30)
    return rel, float(cos.min()), float(cos.mean())


def search(
    backbone: nn.Module,
    calibration: Calibration,
    scheme: str,
    method: str,
    run_prompts: Callable[[], list[torch.Tensor]],
) -> dict[str, Sensitivity]:
    """Per linear: the smoothing exponent with the least simulated output error and, for outlier-safe,
    whether GPTQ rounding at that exponent beats round-to-nearest; that error is its sensitivity, and
    `_end_to_end` adds what the choice costs the final hidden states. `run_prompts()` returns the final
    hidden states of the calibration prompts."""
    reference = run_prompts()
    results = {}
    for name, linear in backbone_linears(backbone).items():
        w = linear.weight.detach().t().float()  # [K, N]
        y = calibration.rows[name] @ w
        tried = [Sensitivity(a, 0, 0, 0) for a in ALPHAS[method] or (PLAIN_ALPHA[scheme],)]
        best = min((_measured(c, name, w, y, calibration, scheme, method) for c in tried), key=_relative)
        if method == "outlier-safe":
            gptq = Sensitivity(best[0].alpha, 0, 0, 0, rounding="gptq")
            best = min(best, _measured(gptq, name, w, y, calibration, scheme, method), key=_relative)
        sensitivity, plan = best
        sensitivity.hidden_cosine_min, sensitivity.hidden_cosine_mean = _end_to_end(
            linear, plan, run_prompts, reference
        )
        results[name] = sensitivity
    return results


def _measured(
    choice: Sensitivity,
    name: str,
    w: torch.Tensor,
    y: torch.Tensor,
    calibration: Calibration,
    scheme: str,
    method: str,
) -> tuple[Sensitivity, Plan]:
    """`choice` (its alpha and rounding) with its simulated output error on the sampled rows filled in."""
    plan = choice.plan(name, w.numpy(), calibration, scheme, method)
    x = calibration.rows[name]
    choice.relative_error, choice.cosine_min, choice.cosine_mean = _error(
        y, fake_quant(plan, x, torch.from_numpy(plan.dequantized()))
    )
    return choice, plan


def _relative(candidate: tuple[Sensitivity, Plan]) -> float:
    return candidate[0].relative_error


def _end_to_end(
    linear: nn.Linear,
    plan: Plan,
    run_prompts: Callable[[], list[torch.Tensor]],
    reference: list[torch.Tensor],
) -> tuple[float, float]:
    """(worst, mean) cosine of the final hidden states against `reference` with only `linear` simulated
    quantized. The error of one linear is not its cost: a 4% error on the massive-activation token that
    a layer-0 down_proj writes moves every later layer's attention, while a larger one elsewhere washes
    out (measured on the outlier checkpoints)."""
    w_dq = torch.from_numpy(plan.dequantized())

    def swap(_m, args, out):
        x = args[0].float().reshape(-1, args[0].shape[-1])
        return fake_quant(plan, x, w_dq).reshape(out.shape).to(out.dtype)

    hook = linear.register_forward_hook(swap)
    try:
        hidden = run_prompts()
    finally:
        hook.remove()
    cos = [
        torch.nn.functional.cosine_similarity(h.double(), r.double(), dim=-1, eps=1e-30)
        for h, r in zip(hidden, reference, strict=True)
    ]
    return float(min(c.min() for c in cos)), float(torch.cat([c.flatten() for c in cos]).mean())


def fallback_order(sensitivity: dict[str, Sensitivity]) -> list[str]:
    """Linears from the most to the least sensitive: lowest end-to-end worst hidden cosine first."""
    return sorted(
        sensitivity, key=lambda n: (sensitivity[n].hidden_cosine_min, -sensitivity[n].relative_error)
    )


@dataclass
class Ranges:
    """Absmax of every backbone linear's output and every decoder layer's output (the residual stream)."""

    values: dict[str, float]

    @classmethod
    def collect(cls, backbone: nn.Module, run_samples: Callable[[], Any]) -> Ranges:
        values: dict[str, float] = {}
        modules = {**backbone_linears(backbone), **{f"layers.{i}": m for i, m in enumerate(backbone.layers)}}
        hooks = []
        for name, module in modules.items():

            def hook(_m, _args, out, name=name):
                out = out[0] if isinstance(out, tuple) else out
                values[name] = max(values.get(name, 0.0), float(out.detach().abs().max()))

            hooks.append(module.register_forward_hook(hook))
        try:
            run_samples()
        finally:
            for h in hooks:
                h.remove()
        return cls(values)

    def fp16_overflows(self) -> list[tuple[str, float]]:
        """(module, absmax) within FP16_MARGIN of the fp16 maximum, largest first."""
        limit = FP16_MAX / FP16_MARGIN
        return sorted(((n, v) for n, v in self.values.items() if v > limit), key=lambda t: -t[1])

    def fp16_message(self) -> str:
        over = self.fp16_overflows()
        where = ", ".join(f"{n} reaches {v:.4g}" for n, v in over[:4])
        return (
            f"fp16 would overflow: on the calibration queries {where} (fp16 max 65504, refused within "
            f"{FP16_MARGIN:g}x of it). Export with --precision bf16 (same range as fp32; TensorRT builds it "
            "on Ampere and later, Orin included), or fp32."
        )
