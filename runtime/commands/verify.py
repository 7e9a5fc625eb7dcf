"""`rynn-edge verify`: replay an artifact's golden vectors (fp32 reference inputs and outputs stored by
the export) through its ONNX graphs or TensorRT engines and print the export's accuracy table, so an
engine built on a device is checked on that device. Exit 0 when every gated metric passes, 1 when one
fails, 2 when the artifact is refused (a file whose hash differs, an engine for another GPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, metavar="ARTIFACT", help="artifact folder")
    parser.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    parser.add_argument("--json", action="store_true", help="print the accuracy report as JSON")


def run(args: argparse.Namespace) -> int:
    from rynn_edge.export.accuracy import failures, table
    from rynn_edge.export.golden import verify

    report = verify(args.artifact, args.backend)
    failed = failures(report)
    if args.json:
        print(json.dumps({"metrics": report, "passed": not failed}))
    else:
        print(f"{args.artifact}: golden vectors through {args.backend}")
        print("\n".join(table(report)))
        print("passed" if not failed else "FAILED:\n  " + "\n  ".join(failed))
    return 1 if failed else 0
