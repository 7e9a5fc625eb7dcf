"""The accuracy fallback, chosen on the simulation: which linears a quantized backbone keeps float.

The gate's metrics (`accuracy.measure`: worst held-out hidden cosine, action error, teacher-forced token
agreement) are computed on the torch backbone in the graphs' float type (bf16 where fp16 would overflow:
an fp32 simulation of the outlier stress checkpoint's int8 graph read 0.9967 worst hidden cosine where
the bf16 graph measured 0.989) with every quantized linear simulated by the plans the search made
(`quantize.simulated`, what the graph computes), and judged by `accuracy.judge`. The kept set
is the shortest prefix of the sensitivity order that passes, found by bisection; the ONNX graphs are then
written and measured once, for that set, as the confirmation (`pipeline._backbone_with_fallback`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rynn_edge.export import accuracy, quantize
from rynn_edge.export.quantize import Plan
from rynn_edge.runtime import decoding
from rynn_edge.runtime.model.backbone import KVCache

SIMULATED = "torch in the graphs' float type, quantized linears simulated (fake-quant of the export's plans)"


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-30)


def _teacher_forced(backbone: nn.Module, ref: accuracy.Reference, device: torch.device) -> tuple[int, int]:
    """`accuracy.teacher_forced_agreement` in one pass: the prompt's prefill, then every reference token
    but the last fed at once, each under its action-mask row, into a cache laid out as decoding does."""
    ids = torch.tensor([ref.ids], device=device)
    hidden, k, v = backbone.prefill_with_kv(ids, torch.arange(len(ref.ids), device=device)[None], ids >= 0)
    fed = ref.tokens[:-1]
    capacity = len(ref.ids) + len(ref.tokens)
    first = int(backbone.logits(hidden[:, -1]).argmax())
    if not fed:
        return int(first == ref.tokens[0]), 1
    sequence = list(ref.ids) + fed
    mask = np.zeros((len(fed), capacity), dtype=bool)
    for i in range(len(fed)):
        end = len(ref.ids) + i + 1
        mask[i, :end] = decoding.action_mask_row(sequence[:end])
    slots = torch.arange(len(ref.ids), len(ref.ids) + len(fed), device=device)
    logits = backbone.decode_tokens(
        torch.tensor([fed], device=device),
        slots[None],
        KVCache.from_prompt(k, v, capacity),
        slots,
        torch.from_numpy(mask).to(device),
    )
    predicted = [first, *logits.argmax(-1).tolist()]
    return sum(int(p == t) for p, t in zip(predicted, ref.tokens, strict=True)), len(ref.tokens)


@torch.inference_mode()
def measure(
    backbone: nn.Module, head: nn.Module, references: list[accuracy.Reference], stages: set[str]
) -> dict[str, list[float]]:
    """Per held-out query, the gate's metrics of the torch modules as they compute now (run inside
    `quantize.simulated`), for the exported stages; the same keys as `accuracy.measure`."""
    device = next(backbone.parameters()).device
    per_query: dict[str, list[float]] = {}
    if "backbone_prefill" in stages:
        for ref in references:
            ids = torch.tensor([ref.ids], device=device)
            hidden = backbone.prefill(ids, torch.arange(len(ref.ids), device=device)[None], ids >= 0).float()
            cos = _cosines(hidden[0], torch.from_numpy(ref.hidden).to(device))
            per_query.setdefault("hidden_cosine_min", []).append(float(cos.min()))
            per_query.setdefault("hidden_cosine_mean", []).append(float(cos.mean()))
            if "action_head" in stages:
                actions = head(hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=device))[0]
                expected = torch.from_numpy(ref.actions).to(device)
                error = float((actions - expected).abs().max())
                per_query.setdefault("action_max_abs_error", []).append(error)
                per_query.setdefault("action_cosine_min", []).append(float(_cosines(actions, expected).min()))
    if "backbone_decode" in stages:
        counts = [_teacher_forced(backbone, r, device) for r in references if r.tokens]
        if counts:
            per_query["token_agreement_pct"] = [100.0 * a / max(1, n) for a, n in counts]
    return per_query


def backbone_failures(report: dict[str, Any]) -> list[str]:
    """The failed metrics the backbone's precision decides (the VQ encoder's are its own)."""
    return [m for m, e in report.items() if e.get("passed") is False and e["stage"] != "vq_encoder"]


def attempt_record(kept: int, report: dict[str, Any], measured_with: str) -> dict[str, Any]:
    """One fallback attempt as the manifest keeps it."""
    failed = backbone_failures(report)
    return {"kept": kept, "passed": not failed, "failed": failed, "measured_with": measured_with} | {
        m: round(report[m]["value"], 6) for m in accuracy.METRIC_STAGE if m in report
    }


def choose_kept(
    order: list[str], budget: int, attempt: Callable[[list[str]], dict[str, Any]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """The shortest prefix of `order` (at most `budget` long) whose `attempt(kept)` record passes, by
    bisection (passing is taken to be monotone in the prefix length); the budget's prefix when none
    passes. Returns (kept, the attempt records in the order they ran)."""
    attempts: list[dict[str, Any]] = []
    progress = tqdm(total=2 + max(0, budget - 1).bit_length(), desc="gate (simulated)", disable=None)

    def passes(k: int) -> bool:
        attempts.append(attempt(order[:k]))
        progress.update()
        return attempts[-1]["passed"]

    try:
        if passes(0) or budget == 0:
            return [], attempts
        if not passes(budget):
            return order[:budget], attempts
        failing, passing = 0, budget
        while passing - failing > 1:
            middle = (failing + passing) // 2
            if passes(middle):
                passing = middle
            else:
                failing = middle
        return order[:passing], attempts
    finally:
        progress.close()


def simulate(
    backbone: nn.Module,
    head: nn.Module,
    references: list[accuracy.Reference],
    stages: set[str],
    precisions: dict[str, str],
    plans: dict[str, Plan],
    kept: list[str],
) -> dict[str, Any]:
    """The attempt record of the backbone with every linear but `kept` simulated quantized."""
    linears = quantize.backbone_linears(backbone)
    with quantize.simulated({linears[n]: p for n, p in plans.items() if n not in kept}):
        per_query = measure(backbone, head, references, stages)
    return attempt_record(len(kept), accuracy.judge(accuracy.summarize(per_query), precisions), SIMULATED)
