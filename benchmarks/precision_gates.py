"""Record the accuracy gate of every precision on both outlier stress checkpoints
(`make-tiny-checkpoint --outliers [channels|heads] --layers 3`, five recorded-style queries: three
calibrate, two are held out), plain and outlier-safe, with the model's own bf16 deviation (the relative
gate's reference) and both verdicts, into benchmarks/results/precision_outliers/precision_KIND.json
(precision.json for channels). The README's precision tables are generated from them by
make_readme_table.py.

    python benchmarks/precision_gates.py [--outliers channels heads] && python benchmarks/make_readme_table.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from runs import RESULTS

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
]
STAGES = ["--stages", "backbone_prefill", "action_head", "backbone_decode"]
FILES = {"channels": "precision.json", "heads": "precision_heads.json"}  # under RESULTS/precision_outliers
RECORDED = ("value", "mean", "threshold", "passed", "bf16_reference", "multiple", "relative_threshold")
RECORDED += ("passed_absolute", "passed_relative")


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


def record(kind: str) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = write_tiny_bundle(tmp / "bundle", "so100", layers=3, seed=0, outliers=kind)
        calib = calibration(tmp / "calib")
        for precision, method, fallback in RUNS:
            out = tmp / f"{precision}_{method}"
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
            row = {"precision": precision, "method": f"{method}, fallback <= {fallback}%", "exit": code}
            if (out / MANIFEST).is_file():
                manifest = json.loads((out / MANIFEST).read_text())
                acc = manifest["accuracy"]
                row["passed"] = acc["passed"]
                row["samples"] = acc["samples"]
                row["metrics"] = {m: {k: e[k] for k in RECORDED if k in e} for m, e in acc["metrics"].items()}
                quant = manifest.get("quantization", {})
                row["kept"] = quant.get("fallback", {}).get("kept", [])
                quantized = [s for n, s in quant.get("sensitivity", {}).items() if n not in row["kept"]]
                if quantized:
                    gptq = sum(s.get("rounding") == "gptq" for s in quantized)
                    row["gptq"] = {"linears": len(quantized), "gptq": gptq}
                row["float_base"] = quant.get("float_base")
            else:
                row["refused"] = err.getvalue().strip().splitlines()[-1][:300]
            rows.append(row)
            print(kind, precision, method, code, row.get("passed"), row.get("kept"), flush=True)
    return {
        "environment": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
        },
        "checkpoint": f"make-tiny-checkpoint --outliers {kind} --layers 3 --seed 0 (hidden 256)",
        "queries": {"calibration": 3, "held_out": 2},
        "script": f"python benchmarks/precision_gates.py --outliers {kind}",
        "runs": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outliers", nargs="+", choices=list(FILES), default=list(FILES))
    folder = RESULTS / "precision_outliers"
    folder.mkdir(parents=True, exist_ok=True)
    for kind in parser.parse_args().outliers:
        (folder / FILES[kind]).write_text(json.dumps(record(kind), indent=1) + "\n")
    sys.exit(0)
