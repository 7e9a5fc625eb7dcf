"""Gates relative to the model's own bf16 deviation (export/accuracy.py): a model whose bf16 run already
misses bf16's absolute bound gets each precision judged against k x that deviation as well; a model
whose bf16 stays inside keeps the absolute table's verdicts; the reference is a real torch bf16 run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rynn_edge.export import accuracy
from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.torch import TorchBackend

INT8 = {"backbone_prefill": "int8", "backbone_decode": "int8", "action_head": "fp32"}


def test_bf16_beyond_its_gate_makes_the_verdict_relative():
    reference = {"action_max_abs_error": 0.08, "token_agreement_pct": 81.25, "hidden_cosine_min": 0.995}
    measured = {"action_max_abs_error": 0.1, "token_agreement_pct": 70.0, "hidden_cosine_min": 0.993}
    report = accuracy.judge(measured, INT8, reference)
    action = report["action_max_abs_error"]
    assert action["passed_absolute"] is False and action["passed_relative"] is True and action["passed"]
    assert action["relative_k"] == 1.5 and action["relative_threshold"] == pytest.approx(0.12)
    assert action["bf16_reference"] == 0.08 and action["threshold"] == 0.06
    tokens = report["token_agreement_pct"]  # 30 % disagreement against 25/15 x 18.75 = 31.25 %
    assert tokens["relative_threshold"] == pytest.approx(68.75) and tokens["passed"]
    assert not tokens["passed_absolute"]
    # bf16's own worst-position cosine is inside its gate: the absolute bound is the looser one
    cosine = report["hidden_cosine_min"]
    assert cosine["passed_absolute"] and not cosine["passed_relative"] and cosine["passed"]
    assert accuracy.failures(report) == []


def test_relative_bound_names_both_numbers_when_missed():
    report = accuracy.judge({"action_max_abs_error": 0.13}, INT8, {"action_max_abs_error": 0.08})
    assert accuracy.failures(report) == [
        "action_head (int8): action_max_abs_error = 0.13, threshold <= 0.06 or <= 0.12 "
        "(1.5 x the bf16 deviation, bf16 = 0.08)"
    ]


def test_bf16_inside_its_gate_keeps_the_absolute_verdicts():
    for precision, value in (("int8", 0.07), ("fp8", 0.11), ("int4", 0.21)):
        stages = {"backbone_prefill": precision}
        report = accuracy.judge({"action_max_abs_error": value}, stages, {"action_max_abs_error": 0.03})
        assert report["action_max_abs_error"]["passed"] is False, precision


def test_bf16_is_judged_absolutely_and_without_reference_nothing_changes():
    bf16 = {"backbone_prefill": "bf16"}
    report = accuracy.judge({"action_max_abs_error": 0.05}, bf16, {"action_max_abs_error": 0.05})
    assert report["action_max_abs_error"]["passed"] is False
    assert "relative_threshold" not in report["action_max_abs_error"]
    plain = accuracy.judge({"action_max_abs_error": 0.05}, INT8)
    assert plain["action_max_abs_error"] == {
        "stage": "action_head",
        "precision": "int8",
        "value": 0.05,
        "threshold": 0.06,
        "passed": True,
    }


def test_bf16_reference_is_the_torch_bf16_run_against_fp32(so100_bundle):
    model, vq = so100_bundle["model"], so100_bundle["vq"]
    fp32 = TorchBackend(model, vq)
    ids = [0, *range(100, 140), 8197, *range(300, 340), 8196, 8710]
    with torch.inference_mode():
        t = torch.tensor([ids])
        hidden = fp32.backbone.prefill(t, torch.arange(len(ids))[None], torch.ones_like(t, dtype=torch.bool))
        actions = fp32.head(hidden, torch.ones(hidden.shape[:2], dtype=torch.bool))[0].numpy()
    tokens = decoding.greedy_actions(fp32.step_model(), ids, 8)
    ref = accuracy.Reference({}, ids, hidden[0].numpy(), actions, tokens)
    stages = {"backbone_prefill": "int8", "backbone_decode": "int8", "action_head": "fp32"}
    measured = accuracy.bf16_reference(model, vq, [ref], stages)
    bf16 = TorchBackend(model, vq, dtype=torch.bfloat16).actions(ids)
    assert measured["action_max_abs_error"]["value"] == pytest.approx(float(np.abs(bf16 - actions).max()))
    assert measured["action_max_abs_error"]["value"] > 0 and measured["hidden_cosine_min"]["value"] < 1
    assert 0 <= measured["token_agreement_pct"]["value"] <= 100
    assert accuracy.bf16_reference(model, vq, [ref], {"backbone_prefill": "bf16"}) is None


ORDER = [f"layers.{i}.{name}" for i in range(3) for name in ("mlp.down_proj", "self_attn.o_proj")]


def _attempt(kept: int, action: float, precision: str = "int8") -> dict:
    passed = action <= accuracy.THRESHOLDS["action_max_abs_error"][precision]
    failed = [] if passed else ["action_max_abs_error"]
    return {
        "kept": kept,
        "passed": passed,
        "failed": failed,
        "action_max_abs_error": action,
        "precision": precision,
    }


def test_recommendation_names_the_linears_and_budget_that_passed_when_measured():
    attempts = [_attempt(0, 0.2), _attempt(1, 0.1), _attempt(2, 0.08), _attempt(4, 0.05), _attempt(6, 0.01)]
    rec = accuracy.recommend(attempts, ORDER, 2, "int8")
    assert rec["kept"] == 4 and rec["keep_also"] == ORDER[2:4] and rec["max_fallback_pct"] == 67
    assert rec["measured"] == {"action_max_abs_error": 0.05}
    assert "--max-fallback 67" in rec["message"] and ORDER[3] in rec["message"]
    assert accuracy.recommend(attempts, ORDER, 4, "int8") is None  # met within the budget


def test_recommendation_falls_back_to_a_measured_precision_or_says_nothing_passed():
    own = [_attempt(0, 0.2), _attempt(1, 0.1)]
    rec = accuracy.recommend([*own, _attempt(0, 0.09, "fp8")], ORDER, 1, "int8")
    assert rec["use_precision"] == "fp8" and "--precision fp8 passes" in rec["message"]
    rec = accuracy.recommend(own, ORDER, 1, "int8")
    assert "use_precision" not in rec and rec["still_failed"] == ["action_max_abs_error"]
    assert rec["kept"] == 1 and "no measured attempt passes (up to 1 of 6" in rec["message"]
