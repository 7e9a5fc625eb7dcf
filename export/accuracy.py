"""Accuracy of an exported artifact against the fp32 torch reference, measured at export time.

Every metric runs the artifact's graphs through onnxruntime on held-out queries and compares with the
fp32 torch modules on the same inputs. Each stage is fed the *reference* input (the reference prompt
ids, not ids rebuilt from the artifact's own codes) so a number measures that stage alone.

| metric (stage)                               | fp32     | fp16    | int8    | fp8     | int4    |
|----------------------------------------------|----------|---------|---------|---------|---------|
| VQ code agreement % (vq_encoder)             | >= 99.9  | >= 97   | -       | -       | -       |
| hidden cosine, worst position (prefill)      | >= 0.9999| >= 0.999| >= 0.99 | >= 0.98 | >= 0.95 |
| action max-abs error, normalized (head)      | <= 1e-4  | <= 0.02 | <= 0.06 | <= 0.1  | <= 0.2  |
| token agreement %, teacher-forced (decode)   | >= 99    | >= 90   | >= 75   | >= 70   | >= 60   |

Why these numbers:
- fp32 must reproduce the reference (the acceptance bar is identical codes/tokens and 1e-4 actions);
  the thresholds leave room only for a near-tie VQ code or argmax flipping on float reassociation.
- VQ at fp16: a flipped code is a neighbour in the codebook, visually equivalent; upstream reports
  fp16 VQGAN agreement in the high 90s. The quantizer distances always stay fp32.
- Actions: one discrete action bin is 2/255 = 0.0078 normalized; fp16 may move actions by ~2.5 bins,
  int8 by ~8 bins (0.06 = 3% of the range, ~1.8 deg on a 60-deg SO100 joint range). int4 weight-only
  round-to-nearest is the coarse, memory-first option (0.2 = 10% of the range, ~25 bins): measured
  0.15 on the tiny random checkpoints; beyond it the chunk visibly changes the arm's path.
- Hidden cosine bounds are the usual LLM PTQ acceptance levels (SmoothQuant W8A8 >= 0.99; RTN int4 on
  random-like weights ~0.97); the action error threshold is the one that matters for the robot.
- Token agreement is teacher-forced (each step sees the reference's previous tokens), so one flip does
  not cascade. The bounds are set for the worst case we can measure, random-init tiny checkpoints whose
  logits are near-uniform (int8 measured 81-94%, int4 72-88% over 16-32 steps); a trained checkpoint has
  far larger argmax margins. The continuous path is gated by the action error, not by this.
Export fails when any measured stage misses its threshold (or warns with --allow-accuracy-loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

PRECISIONS = ("fp32", "fp16", "int8", "int4", "fp8")  # every precision has a gate below

THRESHOLDS: dict[str, dict[str, float]] = {
    "vq_code_agreement_pct": {"fp32": 99.9, "fp16": 97.0},
    "hidden_cosine_min": {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "fp8": 0.98, "int4": 0.95},
    "action_max_abs_error": {"fp32": 1e-4, "fp16": 0.02, "int8": 0.06, "fp8": 0.1, "int4": 0.2},
    "token_agreement_pct": {"fp32": 99.0, "fp16": 90.0, "int8": 75.0, "fp8": 70.0, "int4": 60.0},
}
HIGHER_IS_BETTER = {"vq_code_agreement_pct", "hidden_cosine_min", "token_agreement_pct"}
# The action error is end to end (prefill, then head), so it is judged at the backbone's precision.
METRIC_STAGE = {
    "vq_code_agreement_pct": "vq_encoder",
    "hidden_cosine_min": "backbone_prefill",
    "action_max_abs_error": "action_head",
    "token_agreement_pct": "backbone_decode",
}
DISCRETE_STEPS = 16  # teacher-forced decode steps per held-out query


class ArenaFreeBackend(OnnxRuntimeBackend):
    """The onnxruntime backend without its CPU memory arena (same kernels, identical outputs): the arena
    keeps a run's largest activations reserved on top of the decode session's weights (~0.5 GB more
    peak at 1B parameters), and that session is the accuracy phase's peak."""

    def session(self, stage: str) -> Any:
        if stage not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.enable_cpu_mem_arena = False
            path = str(self.artifact.stage_file(stage))
            self._sessions[stage] = ort.InferenceSession(path, options, providers=self.providers)
        return self._sessions[stage]


@dataclass
class Reference:
    """fp32 torch results for one held-out query."""

    vq: dict[int, tuple[np.ndarray, np.ndarray]]  # image size -> (pixels [N, 3, S, S], codes [N, h*w])
    ids: list[int]
    hidden: np.ndarray  # [L, H]
    actions: np.ndarray  # [T, A] normalized
    tokens: list[int] = field(default_factory=list)  # greedy discrete tokens


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def teacher_forced_agreement(step_model: decoding.StepModel, ref: Reference) -> tuple[int, int]:
    """(agreeing steps, steps): argmax of the candidate given the reference's previous tokens."""
    sequence = list(ref.ids)
    capacity = len(sequence) + len(ref.tokens)
    logits = step_model.begin(sequence, capacity)
    agree = 0
    mask = np.zeros(capacity, dtype=bool)
    for i, token in enumerate(ref.tokens):
        agree += int(np.argmax(logits)) == token
        if i == len(ref.tokens) - 1:
            break
        sequence.append(token)
        position = len(sequence) - 1
        mask[: position + 1] = decoding.action_mask_row(sequence)
        logits = step_model.step(token, position, mask)
    return agree, len(ref.tokens)


def measure(
    open_backend: Callable[[], Any], references: list[Reference], stages: set[str]
) -> dict[str, float]:
    """Metrics of the onnxruntime backends `open_backend()` returns, for the stages they have. Each
    group of stages runs on a fresh backend that is dropped before the next one opens, so at most one
    backbone graph's session (and weights) is in memory at a time."""
    metrics: dict[str, float] = {}
    pairs = [pair for r in references for size, pair in r.vq.items() if f"vq_encoder_{size}" in stages]
    if pairs:
        backend = open_backend()
        same = sum(int((backend.vq_encode(pixels) == codes).sum()) for pixels, codes in pairs)
        metrics["vq_code_agreement_pct"] = 100.0 * same / sum(codes.size for _, codes in pairs)
    if "backbone_prefill" in stages:
        backend = open_backend()
        hidden = [backend.prefill(r.ids) for r in references]  # [1, L, H] each
        cosines = [_cosine(h[0], r.hidden) for h, r in zip(hidden, references, strict=True)]
        metrics["hidden_cosine_min"] = min(float(c.min()) for c in cosines)
        metrics["hidden_cosine_mean"] = float(np.mean([c.mean() for c in cosines]))
        if "action_head" in stages:  # the head on these hidden states: backend.actions without a prefill
            head = backend.session("action_head")
            errors = []
            for h, r in zip(hidden, references, strict=True):
                (actions,) = head.run(None, {"hidden": h, "valid": np.ones(h.shape[:2], dtype=bool)})
                errors.append(float(np.abs(actions[0] - r.actions).max()))
            metrics["action_max_abs_error"] = max(errors)
    if "backbone_decode" in stages:
        backend = head = None  # release the sessions above before the decode session opens
        backend = open_backend()
        counts = [teacher_forced_agreement(backend.step_model(), r) for r in references if r.tokens]
        metrics["token_agreement_pct"] = 100.0 * sum(a for a, _ in counts) / max(1, sum(n for _, n in counts))
    return metrics


def judge(metrics: dict[str, float], precisions: dict[str, str]) -> dict[str, Any]:
    """The manifest's accuracy report: each metric with its stage, precision (`precisions`: stage ->
    precision), threshold and verdict."""
    report: dict[str, Any] = {}
    for metric, value in metrics.items():
        stage = METRIC_STAGE.get(metric)
        if stage is None:
            report[metric] = {"value": value}
            continue
        precision = precisions["backbone_prefill" if metric == "action_max_abs_error" else stage]
        limit = THRESHOLDS[metric].get(precision, THRESHOLDS[metric]["fp16"])
        ok = value >= limit if metric in HIGHER_IS_BETTER else value <= limit
        report[metric] = {
            "stage": stage,
            "precision": precision,
            "value": value,
            "threshold": limit,
            "passed": ok,
        }
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """One line per failed metric, naming the stage and the numbers."""
    return [
        f"{entry['stage']} ({entry['precision']}): {metric} = {entry['value']:.6g}, "
        f"threshold {'>=' if metric in HIGHER_IS_BETTER else '<='} {entry['threshold']:g}"
        for metric, entry in report.items()
        if entry.get("passed") is False
    ]
