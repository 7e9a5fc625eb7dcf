"""rynn-edge bench end to end on a tiny checkpoint: table, CSV, JSON, PNG; labels, step counts, formula."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rynn_edge.runtime.bench.timing import closed_loop, execute_whole_chunk_hz, sustainable_hz
from rynn_edge.runtime.cli import main
from rynn_edge.runtime.robot.chunking import auto_remaining, switch_overhead_s

MODES = "continuous,discrete-sequential,discrete-parallel"


@pytest.fixture(scope="module")
def bench(tmp_path_factory, so100_bundle) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("bench")
    args = [
        "bench",
        str(so100_bundle["model"]),
        "--tokenizer",
        str(so100_bundle["tokenizer"]),
        "--vq",
        str(so100_bundle["vq"]),
        "--chunk-lengths",
        "2,20",
        "--modes",
        MODES,
        "--runs",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--compare",
        "torch:bf16",
    ]
    assert main(args) == 0
    return json.loads((out / "bench.json").read_text()), out


def test_rows_label_queries_and_count_steps(bench):
    result, _ = bench
    rows = {(r["precision"], r["mode"], r["chunk_length"]): r for r in result["rows"]}
    assert len(rows) == 2 * 3 * 2
    assert rows[("fp32", "continuous", 20)]["queries"] == "checkpoint"  # the tiny SO100 checkpoint has T = 20
    assert rows[("fp32", "continuous", 2)]["queries"] == "synthetic"
    assert rows[("fp32", "discrete-sequential", 20)]["decode_steps"] == 20 * 8  # T(A+2), A = 6
    assert rows[("fp32", "discrete-parallel", 20)]["decode_steps"] == 8
    for row in result["rows"]:
        if "skipped" in row:  # only a backend without a batched step may skip, and says why
            assert row["mode"] == "discrete-parallel"
            continue
        assert row["weights"] == "random" and row["backend"] == "torch"
        assert 0 < row["median_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["actions_per_s"] == pytest.approx(row["chunk_length"] * row["calls_per_s"])
        latency = row["median_ms"] / 1e3
        assert row["sustainable_hz"] == pytest.approx(sustainable_hz(row["chunk_length"], latency, 30.0))
        # The closed-loop view: the K async would pick, and how much the arm would hold, per T.
        assert 1 <= row["auto_remaining"] <= row["chunk_length"] - 1
        assert 0 <= row["async_held_pct"] <= 100 and 0 < row["full_held_pct"] < 100
        assert row["replans_per_s"] > 0
        if row["precision"] == "fp32":
            assert row["speedup_vs_first"] == pytest.approx(1.0)
        else:
            assert row["speedup_vs_first"] > 0
    assert result["environment"]["versions"]["torch"]
    short, long = rows[("fp32", "continuous", 2)], rows[("fp32", "continuous", 20)]
    assert (
        short["async_held_pct"] >= long["async_held_pct"] and short["full_held_pct"] > long["full_held_pct"]
    )
    seq = rows[("fp32", "discrete-sequential", 20)]["median_ms"]
    assert seq > rows[("fp32", "discrete-sequential", 2)]["median_ms"]  # 160 steps vs 16


def test_files_written(bench):
    result, out = bench
    with (out / "bench.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(result["rows"])
    assert {"queries", "median_ms", "sustainable_hz", "weights", "async_held_pct", "auto_remaining"} <= set(
        table[0]
    )
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_closed_loop_view_follows_the_scheduler_model():
    f, overhead = 30.0, switch_overhead_s(100.0)
    fast = closed_loop([0.1] * 10, 20, f, 100.0)  # 100 ms + overhead fits in 20 rows easily
    assert fast["auto_remaining"] == auto_remaining([0.1], f, 20, overhead) and fast["async_held_pct"] == 0
    assert fast["replans_per_s"] == pytest.approx(f / (20 - fast["auto_remaining"]))
    assert fast["full_held_pct"] == pytest.approx(100 * (0.1 + overhead) / (20 / f + 0.1 + overhead))
    slow = closed_loop([1.0] * 10, 20, f, 100.0)  # longer than the chunk: stale on arrival
    assert slow["auto_remaining"] == 19 and slow["async_held_pct"] == 100
    assert closed_loop([0.1], 1, f, 100.0)["auto_remaining"] is None  # no async with one action


def test_sustainable_rate_formula():
    f = 30.0
    assert sustainable_hz(20, 0.1, f) == f  # L <= T / 2f: the arm never waits
    assert sustainable_hz(20, 0.5, f) == pytest.approx(20 / 0.5 - f)  # 10 fresh actions/s
    assert sustainable_hz(20, 20 / f, f) == 0.0  # every row stale on arrival
    assert execute_whole_chunk_hz(20, 0.5, f) == pytest.approx(20 / (20 / f + 0.5))


def test_bad_arguments_are_user_errors(so100_bundle, capsys):
    assert main(["bench", str(so100_bundle["model"]), "--modes", "beam"]) == 2  # refused by argparse
    assert "unknown beam" in capsys.readouterr().err
    assert (
        main(["bench", str(so100_bundle["model"]), "--runs", "1"]) == 2
    )  # raw checkpoint without --tokenizer
    assert "--tokenizer" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without a GPU")
def test_cuda_backend_without_a_gpu_says_so(so100_bundle, capsys):
    b = so100_bundle
    raw = [str(b["model"]), "--tokenizer", str(b["tokenizer"]), "--vq", str(b["vq"])]
    assert main(["bench", *raw, "--backend", "cuda", "--runs", "1"]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err
    assert main(["bench", *raw, "--backend", "tensorrt", "--runs", "1"]) == 2
    assert "tensorrt runs an artifact folder" in capsys.readouterr().err
