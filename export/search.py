"""Calibration statistics, the per-linear smoothing search and the sensitivity report.

One pass of the fp32 torch backbone (the rotated one for `outlier-safe`) over the calibration prompts
records, per backbone linear, every input channel's absmax (the static activation scales) and a sample
of input rows: the largest-norm rows of each prompt (the massive-activation tokens, which set the
scales) plus evenly spaced others. On those rows each linear is simulated quantized
(`quantize.fake_quant`) for every candidate smoothing exponent alpha; the one with the smallest output
error wins (SmoothQuant's alpha searched per layer, AWQ's grid search for int4); at that alpha, GPTQ
rounding (`rynn_edge.export.gptq`) replaces round-to-nearest when it lowers the error. Its output error
against fp32 -- RMS of the per-token relative error, worst and mean token cosine -- is its sensitivity;
with what the linear costs the hidden states (`end_to_end`, run from the residual stream recorded in the
same calibration pass), it orders the accuracy fallback and goes into the manifest.

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
from tqdm import tqdm

from rynn_edge.export import quantize
from rynn_edge.export.quantize import Plan, backbone_linears, fake_quant, plan_linear

ROWS_PER_PROMPT = 96
TOP_ROWS = 8  # of them, the largest-norm rows
ALPHAS = {"outlier-safe": (0.0, 0.25, 0.5, 0.65, 0.8, 0.9), "plain": None}  # plain: fixed per scheme, below
PLAIN_ALPHA = {"int8": 0.5, "fp8": 0.0, "int4": 0.0}
# A linear's cost is screened on its own layer's output, then the CANDIDATES worst are measured on the final
# hidden states. On the outlier stress checkpoint (3 layers, int8/fp8/int4) this gives the first six of
# the full measure's order; a screen of 1-2 layers alone does not (tests/test_search.py).
SCREEN_LAYERS = 1
CANDIDATES = 8
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
                a = x.abs().amax(0).cpu().numpy()
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
        return torch.arange(x.shape[0], device=x.device)
    top = x.norm(dim=1).topk(TOP_ROWS).indices
    rest = torch.linspace(0, x.shape[0] - 1, ROWS_PER_PROMPT - TOP_ROWS, device=x.device).long()
    return torch.unique(torch.cat([top, rest]))


@dataclass
class Sensitivity:
    """One linear quantized: its own output error on the sampled rows (relative_error, cosine_*) and,
    with only it quantized in the fp32 backbone, the final hidden states' cosine against fp32 on the
    calibration prompts (hidden_cosine_*: what quantizing this linear costs end to end), or for the
    linears the search's screen ranks low (end_to_end False), the cosine after SCREEN_LAYERS layers."""

    alpha: float
    relative_error: float
    cosine_min: float
    cosine_mean: float
    hidden_cosine_min: float = 1.0
    hidden_cosine_mean: float = 1.0
    rounding: str = "nearest"  # or "gptq": error-compensated (rynn_edge.export.gptq)
    end_to_end: bool = True  # False: hidden_cosine_* measured SCREEN_LAYERS on, not on the final states

    def as_dict(self) -> dict[str, float | str]:
        return {k: v if isinstance(v, (str, bool)) else round(float(v), 6) for k, v in self.__dict__.items()}

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


class ResidualStream:
    """Per calibration prompt, the fp32 residual stream entering every decoder layer (with the layer's rope
    tables and mask) and leaving the last one, recorded once during the calibration pass. One linear's
    end-to-end cost then runs only the layers from its own, not the whole backbone: the search costs
    O(layers) layer passes instead of O(layers^2)."""

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        self.inputs: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in backbone.layers]
        self.outputs: list[torch.Tensor] = []
        self._references: dict[int, list[torch.Tensor]] = {}

    @classmethod
    def record(cls, backbone: nn.Module, run_samples: Callable[[], Any]) -> ResidualStream:
        """Hook the decoder layers and the final norm, call `run_samples()` (which runs prefills)."""
        stream = cls(backbone)

        def enter(i: int):
            return lambda _m, args: stream.inputs[i].append(tuple(a.detach() for a in args[:4]))

        hooks = [layer.register_forward_pre_hook(enter(i)) for i, layer in enumerate(backbone.layers)]
        hooks.append(backbone.norm.register_forward_pre_hook(lambda _m, args: stream.outputs.append(args[0])))
        try:
            run_samples()
        finally:
            for h in hooks:
                h.remove()
        return stream

    @property
    def prompts(self) -> int:
        return len(self.outputs)

    def hidden(self, start: int, stop: int, prompt: int) -> torch.Tensor:
        """Final-norm states [1, L, H] of the residual leaving layer stop-1, run from layer `start`'s
        recorded input (with whatever the linears compute now, e.g. under `quantize.simulated`)."""
        x, cos, sin, mask = self.inputs[start][prompt]
        for layer in self.backbone.layers[start:stop]:
            x = layer(x, cos, sin, mask)[0]
        return self.backbone.norm(x)

    def reference(self, stop: int) -> list[torch.Tensor]:
        """Per prompt, the fp32 final-norm states of the residual entering layer `stop` (the recorded one)."""
        if stop not in self._references:
            boundary = self.outputs if stop == len(self.inputs) else [x[0] for x in self.inputs[stop]]
            self._references[stop] = [self.backbone.norm(x) for x in boundary]
        return self._references[stop]


def layer_index(name: str) -> int:
    """`layers.7.mlp.down_proj` -> 7."""
    return int(name.split(".")[1])


def search(
    backbone: nn.Module, calibration: Calibration, scheme: str, method: str, stream: ResidualStream
) -> tuple[dict[str, Sensitivity], dict[str, Plan]]:
    """Per linear: the smoothing exponent with the least simulated output error and, for outlier-safe,
    whether GPTQ rounding at that exponent beats round-to-nearest; that error is its sensitivity. Then
    what the choice costs the hidden states (`end_to_end`): every linear is screened SCREEN_LAYERS on
    from its input, and the CANDIDATES most costly of those the screen does not already take to the end
    are measured on the final hidden states. Both steps cost a fixed number of layer passes per linear,
    so the search is linear in depth. Returns the sensitivities and the plans they stand for (the graphs
    and the fallback's simulation use them)."""
    chosen = choose(backbone, calibration, scheme, method)
    end_to_end_costs(backbone, chosen, stream)
    return {n: s for n, (s, _) in chosen.items()}, {n: p for n, (_, p) in chosen.items()}


def end_to_end_costs(
    backbone: nn.Module, chosen: dict[str, tuple[Sensitivity, Plan]], stream: ResidualStream
) -> None:
    """Fill in each chosen linear's hidden_cosine_* (and end_to_end): the screen, then the candidates."""
    linears = backbone_linears(backbone)
    depth = len(stream.inputs)
    sensitivity = {name: s for name, (s, _) in chosen.items()}
    for name, (s, plan) in tqdm(chosen.items(), desc="search: screen per linear", disable=None):
        s.hidden_cosine_min, s.hidden_cosine_mean = end_to_end(
            stream, linears[name], plan, layer_index(name), SCREEN_LAYERS
        )
        s.end_to_end = layer_index(name) + SCREEN_LAYERS >= depth
    candidates = [n for n in fallback_order(sensitivity) if not sensitivity[n].end_to_end][:CANDIDATES]
    for name in tqdm(candidates, desc="search: end-to-end per candidate", disable=None):
        s, plan = chosen[name]
        s.hidden_cosine_min, s.hidden_cosine_mean = end_to_end(
            stream, linears[name], plan, layer_index(name), depth
        )
        s.end_to_end = True


def choose(
    backbone: nn.Module, calibration: Calibration, scheme: str, method: str
) -> dict[str, tuple[Sensitivity, Plan]]:
    """Per linear, the alpha (and, outlier-safe, the rounding) with the least output error on its
    sampled rows, with that error filled in."""
    best = {}
    linears = backbone_linears(backbone)
    weights = {name: linear.weight.detach().t().float() for name, linear in linears.items()}  # views [K, N]
    for name, w in tqdm(weights.items(), desc="search: alpha per linear", disable=None):
        y = calibration.rows[name] @ w.to(calibration.rows[name].device)
        tried = [Sensitivity(a, 0, 0, 0) for a in ALPHAS[method] or (PLAIN_ALPHA[scheme],)]
        best[name] = min(
            (_measured(c, name, w, y, calibration, scheme, method) for c in tried), key=_relative
        )
    if method == "outlier-safe":
        for name, w in tqdm(weights.items(), desc="search: GPTQ per linear", disable=None):
            y = calibration.rows[name] @ w.to(calibration.rows[name].device)
            gptq = Sensitivity(best[name][0].alpha, 0, 0, 0, rounding="gptq")
            best[name] = min(
                best[name], _measured(gptq, name, w, y, calibration, scheme, method), key=_relative
            )
    return best


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
    plan = choice.plan(name, w.cpu().numpy(), calibration, scheme, method)
    x = calibration.rows[name]
    choice.relative_error, choice.cosine_min, choice.cosine_mean = _error(
        y, fake_quant(plan, x, plan.dequantized(x.device))
    )
    return choice, plan


def _relative(candidate: tuple[Sensitivity, Plan]) -> float:
    return candidate[0].relative_error


def end_to_end(
    stream: ResidualStream, linear: nn.Linear, plan: Plan, layer: int, layers: int
) -> tuple[float, float]:
    """(worst, mean) cosine, over the calibration prompts' tokens, of the final-norm states `layers`
    layers after `layer`'s input (the final hidden states where that reaches the end) with only `linear`
    simulated quantized, against fp32. The error of one linear is not its cost: a 4% error on the
    massive-activation token that a layer-0 down_proj writes moves every later layer's attention, while a
    larger one elsewhere washes out (measured on the outlier checkpoints)."""
    stop = min(len(stream.inputs), layer + layers)
    with quantize.simulated({linear: plan}):
        hidden = [stream.hidden(layer, stop, p) for p in range(stream.prompts)]
    return hidden_cosines(hidden, stream.reference(stop))


def hidden_cosines(hidden: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[float, float]:
    """(worst, mean) per-token cosine of `hidden` against `reference` (lists of [1, L, H])."""
    cos = [
        torch.nn.functional.cosine_similarity(h.double(), r.double(), dim=-1, eps=1e-30)
        for h, r in zip(hidden, reference, strict=True)
    ]
    return float(min(c.min() for c in cos)), float(torch.cat([c.flatten() for c in cos]).mean())


def fallback_order(sensitivity: dict[str, Sensitivity]) -> list[str]:
    """Linears from the most to the least sensitive: those measured end to end first, each group by
    lowest worst hidden cosine, then largest own error."""
    return sorted(
        sensitivity,
        key=lambda n: (
            not sensitivity[n].end_to_end,
            sensitivity[n].hidden_cosine_min,
            -sensitivity[n].relative_error,
        ),
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
