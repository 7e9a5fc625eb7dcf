"""Accuracy of an exported artifact against the fp32 torch reference, measured at export time.

Every metric runs the artifact's graphs through onnxruntime on held-out queries and compares with the
fp32 torch modules on the same inputs. Each stage is fed the *reference* input (the reference prompt
ids, not ids rebuilt from the artifact's own codes) so a number measures that stage alone.

| metric (stage)                               | fp32     | fp16    | bf16    | int8    | fp8     | int4    |
|----------------------------------------------|----------|---------|---------|---------|---------|---------|
| VQ code agreement % (vq_encoder)             | >= 99.9  | >= 97   | >= 95   | -       | -       | -       |
| hidden cosine, worst position (prefill)      | >= 0.9999| >= 0.999| >= 0.99  | >= 0.99 | >= 0.98 | >= 0.95 |
| hidden cosine, mean over positions (prefill) | -        | -       | >= 0.999| -       | -       | -       |
| action max-abs error, normalized (head)      | <= 1e-4  | <= 0.02 | <= 0.04 | <= 0.06 | <= 0.1  | <= 0.2  |
| token agreement %, teacher-forced (decode)   | >= 99    | >= 90   | >= 85   | >= 75   | >= 70   | >= 60   |

Every metric is measured per held-out query (never a calibration query) and gated on the worst one;
the report also gives the mean and the per-query values.

Why these numbers:
- bf16 keeps 8 mantissa bits to fp16's 11 (8x the rounding step) but fp32's range. The mean hidden
  cosine bound is NVIDIA's GR00T bf16 deployment gate (backbone cosine >= 0.999); the worst single
  position is gated at 0.99: torch's own bf16 run of the outlier stress checkpoint reaches 0.9987 there
  and the emulated graph (rounding after every op, softmax included) 0.995. Action and token bounds are
  fp16's loosened by about the bf16/fp16 rounding ratio seen on the tiny checkpoints (~2x).
- fp32 must reproduce the reference (the acceptance bar is identical codes/tokens and 1e-4 actions);
  the thresholds leave room only for a near-tie VQ code or argmax flipping on float reassociation.
- VQ at fp16: a flipped code is a neighbour in the codebook, visually equivalent; upstream reports
  fp16 VQGAN agreement in the high 90s. The quantizer distances always stay fp32.
- Actions: one discrete action bin is 2/255 = 0.0078 normalized; fp16 may move actions by ~2.5 bins,
  int8 by ~8 bins (0.06 = 3% of the range, ~1.8 deg on a 60-deg SO100 joint range). int4 weight-only
  is the coarse, memory-first option (0.2 = 10% of the range, ~25 bins): round-to-nearest measured
  0.15 on the tiny random checkpoints; beyond it the chunk visibly changes the arm's path. (GPTQ
  rounding now measures 0.03 on the outlier stress checkpoint; the bound is kept for the random ones.)
- Hidden cosine bounds are the usual LLM PTQ acceptance levels (SmoothQuant W8A8 >= 0.99; RTN int4 on
  random-like weights ~0.97); the action error threshold is the one that matters for the robot.
- Token agreement is teacher-forced (each step sees the reference's previous tokens), so one flip does
  not cascade. The bounds are set for the worst case we can measure, random-init tiny checkpoints whose
  logits are near-uniform (int8 measured 81-94%, int4 72-88% over 16-32 steps); a trained checkpoint has
  far larger argmax margins. The continuous path is gated by the action error, not by this.
Export fails when any measured stage misses its threshold (or warns with --allow-accuracy-loss).

Relative to the model's own bf16 deviation: fixed thresholds would fail a model whose bf16 run (what
upstream deploys) already moves its actions past them. So the export also measures torch's bf16 run of
the same checkpoint against fp32 on the same held-out queries (`attach_bf16_reference`) and judges every
precision but bf16 and fp32 by this rule, for the action error, the worst hidden cosine and the token
agreement:

    pass  if  value within the absolute threshold  OR  deviation <= k x the bf16 deviation,

the deviation being the error itself, 1 - cosine or 100 - agreement %. k (RELATIVE_MULTIPLE) is the
table's own ratio between the precision's threshold and bf16's, as deviations (action: fp16 0.5, int8
1.5, fp8 2.5, int4 5; worst cosine: fp16 0.1, int8 1, fp8 2, int4 5; tokens: fp16 0.67, int8 1.67, fp8 2,
int4 2.67): the table already says how much worse than bf16 each precision may be, and the rule keeps
that ratio on a model whose bf16 deviation is larger than the tiny checkpoints'. (The GPU proof judges
the cuda backend the same way: within 2x torch's own bf16 deviation.) bf16 itself is judged against the
absolute threshold only and reported as the reference; both verdicts are in the report.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend, session_options

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "fp8")  # every precision has a gate below
FLOATS = ("fp32", "fp16", "bf16")

THRESHOLDS: dict[str, dict[str, float]] = {
    "vq_code_agreement_pct": {"fp32": 99.9, "fp16": 97.0, "bf16": 95.0},
    "hidden_cosine_min": {
        "fp32": 0.9999,
        "fp16": 0.999,
        "bf16": 0.99,
        "int8": 0.99,
        "fp8": 0.98,
        "int4": 0.95,
    },
    "hidden_cosine_mean": {"bf16": 0.999},  # NVIDIA GR00T's bf16 backbone gate; other rows: reported only
    "action_max_abs_error": {"fp32": 1e-4, "fp16": 0.02, "bf16": 0.04, "int8": 0.06, "fp8": 0.1, "int4": 0.2},
    "token_agreement_pct": {
        "fp32": 99.0,
        "fp16": 90.0,
        "bf16": 85.0,
        "int8": 75.0,
        "fp8": 70.0,
        "int4": 60.0,
    },
}
HIGHER_IS_BETTER = {
    "vq_code_agreement_pct",
    "hidden_cosine_min",
    "hidden_cosine_mean",
    "token_agreement_pct",
    "action_cosine_min",
}
# The action error is end to end (prefill, then head), so it is judged at the backbone's precision.
METRIC_STAGE = {
    "vq_code_agreement_pct": "vq_encoder",
    "hidden_cosine_min": "backbone_prefill",
    "hidden_cosine_mean": "backbone_prefill",
    "action_max_abs_error": "action_head",
    "token_agreement_pct": "backbone_decode",
}
DISCRETE_STEPS = 16  # teacher-forced decode steps per held-out query
RELATIVE_METRICS = ("hidden_cosine_min", "action_max_abs_error", "token_agreement_pct")
REFERENCE_SUFFIX = "_bf16_reference"  # measure(): per-query bf16 deviation of a metric, when attached
_CEILING = {"hidden_cosine_min": 1.0, "token_agreement_pct": 100.0}  # a perfect value: deviation 0


def deviation(metric: str, value: float) -> float:
    """How far a value is from perfect: the error itself, 1 - cosine, 100 - agreement %."""
    return _CEILING[metric] - value if metric in _CEILING else value


RELATIVE_MULTIPLE: dict[str, dict[str, float]] = {
    metric: {
        p: round(deviation(metric, limit) / deviation(metric, THRESHOLDS[metric]["bf16"]), 4)
        for p, limit in THRESHOLDS[metric].items()
        if p not in ("fp32", "bf16")
    }
    for metric in RELATIVE_METRICS
}


class ArenaFreeBackend(OnnxRuntimeBackend):
    """The onnxruntime backend without its CPU memory arena (same kernels, identical outputs): the arena
    keeps a run's largest activations reserved on top of the decode session's weights (~0.5 GB more
    peak at 1B parameters), and that session is the accuracy phase's peak."""

    emulated: set[str]

    def session(self, stage: str) -> Any:
        if stage not in self._sessions:
            import onnxruntime as ort

            options = session_options(enable_cpu_mem_arena=False)
            path = self.artifact.stage_file(stage)
            with emulated_path(path) as (runnable, emulated):
                self._sessions[stage] = ort.InferenceSession(str(runnable), options, providers=self.providers)
            if emulated:
                self.emulated = getattr(self, "emulated", set()) | {stage}
        return self._sessions[stage]


@contextmanager
def emulated_path(path: Path) -> Iterator[tuple[Path, bool]]:
    """`path`, or a temporary bf16-emulation copy of it (emulate.py). onnxruntime only reads external
    data inside the model's folder (no symlinks out), so the copy goes to a temporary folder with hard
    links to the data, or, across file systems, beside the original for as long as the session opens."""
    import onnx

    from rynn_edge.export import emulate

    model = onnx.load(str(path), load_external_data=False)
    if not emulate.has_bf16(model):
        yield path, False
        return
    data = {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}
    text = emulate.emulate_bf16(model).SerializeToString()
    del model
    with tempfile.TemporaryDirectory(prefix="rynn-bf16-") as tmp:
        try:
            for name in data:
                os.link(path.parent / name, Path(tmp) / name)
            folder = Path(tmp)
        except OSError:
            folder = path.parent
        emulated = folder / f".{path.stem}.bf16-emulated.onnx"
        emulated.write_bytes(text)
        try:
            yield emulated, True
        finally:
            emulated.unlink()


@dataclass
class Reference:
    """fp32 torch results for one held-out query."""

    vq: dict[int, tuple[np.ndarray, np.ndarray]]  # image size -> (pixels [N, 3, S, S], codes [N, h*w])
    ids: list[int]
    hidden: np.ndarray  # [L, H]
    actions: np.ndarray  # [T, A] normalized
    tokens: list[int] = field(default_factory=list)  # greedy discrete tokens
    bf16: dict[str, float] = field(default_factory=dict)  # torch bf16 vs fp32 (attach_bf16_reference)


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


def _head_actions(backend: Any, hidden: np.ndarray) -> np.ndarray:
    """The action head on given hidden states [1, L, H]: backend.actions without its prefill."""
    valid = np.ones(hidden.shape[:2], dtype=bool)
    if hasattr(backend, "head_actions"):
        return backend.head_actions(hidden, valid)
    (actions,) = backend.session("action_head").run(None, {"hidden": hidden, "valid": valid})
    return actions[0]


def attach_bf16_reference(
    model_dir: Path, vq_dir: Path, references: list[Reference], precisions: dict[str, str]
) -> None:
    """Measure torch's bf16 run of the checkpoint (backbone and head, as upstream deploys it) against
    each reference on the same query, into `ref.bf16` (RELATIVE_METRICS); only when a backbone stage is
    exported below fp32. Loads its own bf16 copy: call it once the fp32 backbone is freed."""
    import torch

    from rynn_edge.runtime.backends.torch import TorchBackend

    if all(precisions.get(s, "fp32") == "fp32" for s in ("backbone_prefill", "backbone_decode")):
        return
    backend = TorchBackend(model_dir, vq_dir, dtype=torch.bfloat16)
    for ref in references:
        ids = torch.tensor([ref.ids])
        valid = torch.ones_like(ids, dtype=torch.bool)
        with torch.inference_mode():
            hidden = backend.backbone.prefill(ids, torch.arange(len(ref.ids))[None], valid)
            actions = backend.head(hidden, valid)[0].float().numpy()
        ref.bf16 = {
            "hidden_cosine_min": float(_cosine(hidden[0].float().numpy(), ref.hidden).min()),
            "action_max_abs_error": float(np.abs(actions - ref.actions).max()),
        }
        if ref.tokens:
            agree, n = teacher_forced_agreement(backend.step_model(), ref)
            ref.bf16["token_agreement_pct"] = 100.0 * agree / n


def _with_references(per_query: dict[str, list[float]], references: list[Reference]) -> None:
    """Add the attached bf16 deviation of every measured RELATIVE_METRICS metric, same queries."""
    for metric in RELATIVE_METRICS:
        values = [r.bf16[metric] for r in references if metric in r.bf16]
        if metric in per_query and len(values) == len(per_query[metric]):
            per_query[metric + REFERENCE_SUFFIX] = values


def measure(
    open_backend: Callable[[], Any], references: list[Reference], stages: set[str]
) -> dict[str, list[float]]:
    """Per held-out query, each metric of the backends `open_backend()` returns, for the stages they
    have. Each group of stages runs on a fresh backend that is dropped before the next one opens, so at
    most one backbone graph's session (and weights) is in memory at a time."""
    per_query: dict[str, list[float]] = {}
    sizes = [[(p, c) for size, (p, c) in r.vq.items() if f"vq_encoder_{size}" in stages] for r in references]
    if any(sizes):
        backend = open_backend()
        per_query["vq_code_agreement_pct"] = [
            100.0
            * sum(int((backend.vq_encode(p) == c).sum()) for p, c in pairs)
            / sum(c.size for _, c in pairs)
            for pairs in sizes
            if pairs
        ]
    if "backbone_prefill" in stages:
        backend = open_backend()
        hidden = [backend.prefill(r.ids) for r in references]  # [1, L, H] each
        cosines = [_cosine(h[0], r.hidden) for h, r in zip(hidden, references, strict=True)]
        per_query["hidden_cosine_min"] = [float(c.min()) for c in cosines]
        per_query["hidden_cosine_mean"] = [float(c.mean()) for c in cosines]
        if "action_head" in stages:
            actions = [_head_actions(backend, h) for h in hidden]
            pairs = list(zip(actions, references, strict=True))
            per_query["action_max_abs_error"] = [float(np.abs(a - r.actions).max()) for a, r in pairs]
            per_query["action_cosine_min"] = [float(_cosine(a, r.actions).min()) for a, r in pairs]
    if "backbone_decode" in stages:
        backend = None  # release the sessions above before the decode session opens
        backend = open_backend()
        counts = [teacher_forced_agreement(backend.step_model(), r) for r in references if r.tokens]
        per_query["token_agreement_pct"] = [100.0 * a / max(1, n) for a, n in counts]
    _with_references(per_query, references)
    return per_query


def summarize(per_query: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """metric -> {value (the worst query; the mean for *_mean metrics), worst, mean, per_query}."""
    out = {}
    for metric, values in per_query.items():
        worst = min(values) if metric.removesuffix(REFERENCE_SUFFIX) in HIGHER_IS_BETTER else max(values)
        mean = float(np.mean(values))
        out[metric] = {
            "value": mean if metric.endswith("_mean") else worst,
            "worst": worst,
            "mean": mean,
            "per_query": [round(v, 6) for v in values],
        }
    return out


def judge(metrics: dict[str, Any], precisions: dict[str, str]) -> dict[str, Any]:
    """The manifest's accuracy report: each metric with its stage, precision (`precisions`: stage ->
    precision), threshold and verdict. `metrics`: metric -> value, or summarize()'s entries; a
    `<metric>_bf16_reference` entry (the model's own bf16 deviation) adds the relative verdict (module
    docstring): bf16_reference, multiple, relative_threshold, passed_absolute, passed_relative."""
    report: dict[str, Any] = {}
    references = {
        m: metrics[m + REFERENCE_SUFFIX] for m in RELATIVE_METRICS if m + REFERENCE_SUFFIX in metrics
    }
    for metric, measured in metrics.items():
        if metric.endswith(REFERENCE_SUFFIX):
            continue
        entry = dict(measured) if isinstance(measured, dict) else {"value": measured}
        stage = METRIC_STAGE.get(metric)
        if stage is None:
            report[metric] = entry
            continue
        precision = precisions["backbone_prefill" if metric == "action_max_abs_error" else stage]
        limit = THRESHOLDS[metric].get(precision)
        if limit is None:
            report[metric] = {"stage": stage, "precision": precision, **entry}
            continue
        value = entry["value"]
        ok = value >= limit if metric in HIGHER_IS_BETTER else value <= limit
        report[metric] = {"stage": stage, "precision": precision, **entry, "threshold": limit, "passed": ok}
        if metric in references:
            report[metric] |= _relative(metric, precision, value, ok, references[metric])
    return report


def _relative(metric: str, precision: str, value: float, absolute: bool, reference: Any) -> dict[str, Any]:
    """The bf16 reference of one metric and, for the precisions with a multiple, the relative verdict."""
    ref = reference["value"] if isinstance(reference, dict) else reference
    entry: dict[str, Any] = {"bf16_reference": ref}
    k = RELATIVE_MULTIPLE[metric].get(precision)
    if k is None:
        return entry
    allowed = k * deviation(metric, ref)
    relative = deviation(metric, value) <= allowed
    return entry | {
        "multiple": k,
        "relative_threshold": _CEILING[metric] - allowed if metric in _CEILING else allowed,
        "passed_absolute": absolute,
        "passed_relative": relative,
        "passed": absolute or relative,
    }


def failures(report: dict[str, Any]) -> list[str]:
    """One line per failed metric, naming the stage and the numbers."""
    lines = []
    for metric, entry in report.items():
        if entry.get("passed") is not False:
            continue
        sign = ">=" if metric in HIGHER_IS_BETTER else "<="
        line = f"{entry['stage']} ({entry['precision']}): {metric} = {entry['value']:.6g}, "
        line += f"threshold {sign} {entry['threshold']:g}"
        if "relative_threshold" in entry:
            line += (
                f", nor {sign} {entry['relative_threshold']:.6g} ({entry['multiple']:g} x the model's own "
                f"bf16 deviation, bf16 {entry['bf16_reference']:.6g})"
            )
        lines.append(line)
    return lines


def table(report: dict[str, Any]) -> list[str]:
    """The accuracy report as printed by export and verify: worst query, mean, threshold, verdict."""
    lines = []
    for metric, entry in report.items():
        verdict = "" if "passed" not in entry else ("ok" if entry["passed"] else "FAILED")
        limit = f" (threshold {entry['threshold']:g})" if "threshold" in entry else ""
        if "relative_threshold" in entry:
            k, ref = entry["multiple"], entry["bf16_reference"]
            limit += f" (or {entry['relative_threshold']:.6g}: {k:g} x bf16 {ref:.6g})"
        mean = f" mean {entry['mean']:.6g}" if "mean" in entry and len(entry.get("per_query", [])) > 1 else ""
        lines.append(f"  {metric:24s} {entry['value']:.6g}{limit}{mean} {verdict}".rstrip())
    return lines
