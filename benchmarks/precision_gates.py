"""Record the accuracy gate of every precision on both outlier stress checkpoints
(`make-tiny-checkpoint --outliers [massive|heads] --layers 3`, five recorded-style queries: three
calibrate, two are held out), plain and outlier-safe, with the model's own torch-bf16 deviation (the
relative gates' reference) and both verdicts, into benchmarks/results/precision_outliers/precision.json
(massive) and benchmarks/results/precision_heads/precision.json (heads). Each file is rewritten after
every run, so an interrupted recording keeps the runs it finished. The precision tables of
docs/export.md are generated from those files by make_readme_table.py.

    python benchmarks/precision_gates.py [--outliers massive|heads] && python benchmarks/make_readme_table.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from runs import RESULTS

from rynn_edge.export import accuracy, search
from rynn_edge.runtime.backends.artifact import MANIFEST
from rynn_edge.runtime.cli import main
from rynn_edge.runtime.tiny.bundle import write_tiny_bundle

RUNS = [  # (precision, --quantization, --max-fallback)
    ("fp16", "outlier-safe", 25),
    ("bf16", "outlier-safe", 25),
    ("int8", "plain", 0),
    ("int8", "outlier-safe", 25),
    ("fp8", "plain", 0),
    ("fp8", "outlier-safe", 25),
    ("int4", "plain", 0),
    ("int4", "outlier-safe", 25),
]  # the 25 is RECORDED_PCT
STAGES = ["--stages", "backbone_prefill", "action_head", "backbone_decode"]
FOLDERS = {"massive": "precision_outliers", "heads": "precision_heads"}
RECORDED_PCT, BEYOND_PCT = 25, 50  # --max-fallback of the recorded outlier-safe runs; of --beyond
METRIC_FIELDS = (
    "value",
    "mean",
    "threshold",
    "passed",
    "passed_absolute",
    "bf16_reference",
    "relative_k",
    "relative_threshold",
    "passed_relative",
)


def frames(folder: Path) -> list[str]:
    paths = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:240, 0:320]
        base = np.stack([x * 255 / 320, y * 255 / 240, (x + y) * 127 / 560], axis=-1)
        for _ in range(4):
            x0, y0 = rng.integers(0, 280), rng.integers(0, 200)
            base[y0 : y0 + 40, x0 : x0 + 40] = rng.integers(0, 256, 3)
        paths.append(folder / f"frame{seed}.png")
        Image.fromarray(base.astype(np.uint8)).save(paths[-1])
    return [str(p) for p in paths]


def calibration(folder: Path) -> Path:
    folder.mkdir()
    images = frames(folder)
    instructions = ["pick up the cube", "open the drawer", "put the cup on the plate", "push the block left"]
    rows = [
        {
            "images": [images[a], images[b]],
            "state": [10 + 7 * i, 80, 90 - 4 * i, 20, 5, 30],
            "instruction": instructions[i % 4],
        }
        for i, (a, b) in enumerate([(0, 1), (2, 3), (1, 2), (3, 0), (0, 2)])
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def export(
    bundle: dict[str, Path], calib: Path, out: Path, precision: str, method: str, fallback: int
) -> tuple[int, dict | None, str]:
    """One `rynn-edge export` in-process: (exit code, manifest or None, stderr)."""
    args = [
        "export",
        str(bundle["model"]),
        "--tokenizer",
        str(bundle["tokenizer"]),
        "--vq",
        str(bundle["vq"]),
    ]
    args += ["-o", str(out), "--calibration-data", str(calib), "--precision", precision]
    args += ["--quantization", method, "--max-fallback", str(fallback), *STAGES]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else None
    return code, manifest, err.getvalue()


def beyond(kind: str, precisions: list[str], path: Path) -> None:
    """Outlier-safe exports at BEYOND_PCT fallback, for schemes that miss their gate at the recorded 25%:
    the attempts measured past the 25% budget, and accuracy.recommend's verdict from them (which
    further linears and which --max-fallback pass, measured)."""
    script = f"python benchmarks/precision_gates.py --outliers {kind} --beyond SCHEME..."
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = write_tiny_bundle(tmp / "bundle", "so100", layers=3, seed=0, outliers=kind)
        calib = calibration(tmp / "calib")
        for precision in precisions:
            _, manifest, _ = export(bundle, calib, tmp / precision, precision, "outlier-safe", BEYOND_PCT)
            quant = manifest["quantization"]
            sensitivity = {n: search.Sensitivity(**v) for n, v in quant["sensitivity"].items()}
            order = search.fallback_order(sensitivity)
            attempts = quant["fallback"]["attempts"]
            budget = int(len(order) * RECORDED_PCT / 100)
            run = {
                "max_fallback_pct": BEYOND_PCT,
                "attempts": attempts,
                "kept": quant["fallback"]["kept"],
                "recommendation": accuracy.recommend(attempts, order, budget, precision),
            }
            recorded = json.loads(path.read_text())["runs"] if path.is_file() else {}  # other schemes' runs
            text = json.dumps({"script": script, "runs": recorded | {precision: run}}, indent=1)
            path.write_text(text + "\n")
            print(kind, precision, "beyond", run["recommendation"], flush=True)


def record(kind: str, path: Path) -> None:
    result = {
        "environment": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
        },
        "checkpoint": f"make-tiny-checkpoint --outliers {kind} --layers 3 --seed 0 (hidden 256)",
        "queries": {"calibration": 3, "held_out": 2},
        "script": f"python benchmarks/precision_gates.py --outliers {kind}",
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = write_tiny_bundle(tmp / "bundle", "so100", layers=3, seed=0, outliers=kind)
        calib = calibration(tmp / "calib")
        for precision, method, fallback in RUNS:
            started = time.monotonic()
            code, manifest, err = export(
                bundle, calib, tmp / f"{precision}_{method}", precision, method, fallback
            )
            row = {"precision": precision, "method": f"{method}, fallback <= {fallback}%", "exit": code}
            row["seconds"] = round(time.monotonic() - started, 1)
            if manifest is not None:
                acc = manifest["accuracy"]
                row["passed"] = acc["passed"]
                row["samples"] = acc["samples"]
                row["metrics"] = {
                    m: {k: e[k] for k in METRIC_FIELDS if k in e} for m, e in acc["metrics"].items()
                }
                if manifest.get("bf16_reference"):
                    result["bf16_reference"] = {m: e["value"] for m, e in manifest["bf16_reference"].items()}
                quant = manifest.get("quantization", {})
                row["kept"] = quant.get("fallback", {}).get("kept", [])
                if quant.get("fallback", {}).get("recommendation"):
                    row["recommendation"] = quant["fallback"]["recommendation"]
                quantized = [s for n, s in quant.get("sensitivity", {}).items() if n not in row["kept"]]
                if quantized:
                    gptq = sum(s.get("rounding") == "gptq" for s in quantized)
                    row["gptq"] = {"linears": len(quantized), "gptq": gptq}
                row["float_base"] = quant.get("float_base")
            else:
                row["refused"] = err.strip().splitlines()[-1][:300]
            result["runs"].append(row)
            path.write_text(json.dumps(result, indent=1) + "\n")
            verdict = row.get("passed"), row.get("kept"), row["seconds"]
            print(kind, precision, method, code, *verdict, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outliers", choices=sorted(FOLDERS), action="append", help="default: both")
    parser.add_argument(
        "--beyond",
        nargs="+",
        choices=["int8", "fp8", "int4"],
        help=f"instead: these outlier-safe schemes at --max-fallback {BEYOND_PCT}, into beyond_budget.json",
    )
    options = parser.parse_args()
    for kind in options.outliers or ["massive", "heads"]:
        folder = RESULTS / FOLDERS[kind]
        folder.mkdir(parents=True, exist_ok=True)
        if options.beyond:
            beyond(kind, options.beyond, folder / "beyond_budget.json")
        else:
            record(kind, folder / "precision.json")
    sys.exit(0)
