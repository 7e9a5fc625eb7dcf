"""The export's search and fallback at a cost linear in depth: the screened search orders the linears as
the previous whole-backbone measure did, a fallback run writes the backbone graphs once, and --device is
honoured or refused clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from exporting import export_bundle
from test_precision import HEAD, outlier_bundle, outlier_calib  # noqa: F401 (session fixtures)

from rynn_edge.export import onnx_graphs, pipeline, rotation, search
from rynn_edge.runtime.backends.artifact import MANIFEST
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from export_time import full_forward_costs, prompts, runner  # noqa: E402


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_search_orders_linears_as_the_whole_backbone_measure(outlier_bundle, scheme):  # noqa: F811
    _, backbone, _ = load_model(outlier_bundle["model"], dtype=torch.float32)
    rotation.rotate(backbone)
    run = runner(backbone, prompts(3, 200))
    with torch.inference_mode():
        recorded = {}
        stream = search.ResidualStream.record(
            backbone, lambda: recorded.update(c=search.Calibration.collect(backbone, run))
        )
        sensitivity, plans = search.search(backbone, recorded["c"], scheme, "outlier-safe", stream)
        old = full_forward_costs(backbone, plans, run)
    old_order = sorted(old, key=lambda n: (old[n][0], -sensitivity[n].relative_error))
    assert search.fallback_order(sensitivity)[:6] == old_order[:6]
    exact = [n for n, s in sensitivity.items() if s.end_to_end]
    assert len(exact) >= search.CANDIDATES
    for name in exact:  # measured from the recorded layer input: the same numbers as the whole pass
        assert sensitivity[name].hidden_cosine_min == pytest.approx(old[name][0], abs=1e-5)
    screened = [n for n, s in sensitivity.items() if not s.end_to_end]
    assert screened and all(search.layer_index(n) + search.SCREEN_LAYERS < 3 for n in screened)


def test_fallback_run_writes_the_backbone_once(monkeypatch, tmp_path, outlier_bundle, outlier_calib):  # noqa: F811
    writes = []
    real = onnx_graphs.export_backbone_graph

    def counted(module, example, stage, axes):
        writes.append(stage)
        return real(module, example, stage, axes)

    monkeypatch.setattr(onnx_graphs, "export_backbone_graph", counted)
    out = tmp_path / "int8"
    assert (
        export_bundle(outlier_bundle, out, outlier_calib, "--precision", "int8", "--device", "cpu", *HEAD)
        == 0
    )
    assert writes == ["backbone_prefill"]
    fallback = json.loads((out / MANIFEST).read_text())["quantization"]["fallback"]
    *simulated, confirmation = fallback["attempts"]
    assert fallback["kept"], "the stress checkpoint needs the fallback"
    assert len(simulated) >= 2 and not simulated[0]["passed"]
    assert all(a["measured_with"].startswith("torch") for a in simulated)
    assert confirmation["measured_with"].startswith("onnxruntime") and confirmation["passed"]
    assert confirmation["kept"] == len(fallback["kept"]) == min(a["kept"] for a in simulated if a["passed"])


def test_device_is_resolved_and_refused_clearly(monkeypatch, capsys, tmp_path, outlier_bundle, outlier_calib):  # noqa: F811
    assert pipeline.resolve_device("cpu") == torch.device("cpu")
    assert pipeline.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device tpu: choose cuda or cpu"):
        pipeline.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pipeline.resolve_device(None) == torch.device("cpu")
    code = export_bundle(
        outlier_bundle, tmp_path / "a", outlier_calib, "--precision", "int8", "--device", "cuda"
    )
    assert code == 2 and "--device cuda: torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def _plans(
    bundle: dict, device: torch.device | None
) -> tuple[dict, search.Calibration, search.ResidualStream]:
    _, backbone, _ = load_model(bundle["model"], dtype=torch.float32)
    if device is not None:
        backbone.to(device)
    run = runner(backbone, [p.to(device or "cpu") for p in prompts(2, 120)])
    with torch.inference_mode():
        recorded = {}
        stream = search.ResidualStream.record(
            backbone, lambda: recorded.update(c=search.Calibration.collect(backbone, run))
        )
        _, plans = search.search(backbone, recorded["c"], "int8", "outlier-safe", stream)
    return plans, recorded["c"], stream


def test_search_runs_where_the_backbone_is(outlier_bundle):  # noqa: F811
    """The device path is the CPU path: every tensor the search makes follows the backbone's device
    (`--device`, resolved), and the plans are those of the search left on torch's default device."""
    device = pipeline.resolve_device("cpu")
    plans, calibration, stream = _plans(outlier_bundle, device)
    assert {r.device for r in calibration.rows.values()} == {device}
    assert {x[0].device for layer in stream.inputs for x in layer} == {device}
    default, _, _ = _plans(outlier_bundle, None)
    assert plans.keys() == default.keys()
    for name, plan in plans.items():
        assert plan.alpha == default[name].alpha and (plan.weight == default[name].weight).all()
        assert plan.dequantized(device).device == device
