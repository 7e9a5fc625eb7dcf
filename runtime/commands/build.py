"""`rynn-edge build`: TensorRT engines from an ONNX artifact, on the machine that will run them.

The artifact can come from any machine (`rynn-edge export --target onnxruntime`); the checkpoint is not
needed, so the peak memory is about the largest graph plus its weights, not the fp32 reference model
the export holds. The manifest gains the GPU, compute capability, TensorRT version and engine hashes and
keeps the export's accuracy report; `rynn-edge verify --backend tensorrt` then checks the engines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BUILDERS = (
    "auto",
    "tensorrt",
    "tensorrt-rtx",
)  # tensorrt_build.BUILDERS, spelled here: --help imports nothing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, metavar="ARTIFACT", help="artifact folder with ONNX graphs")
    parser.add_argument("-o", "--out", type=Path, help="write a built copy here (default: into ARTIFACT)")
    parser.add_argument(
        "--timing-cache", type=Path, help="TensorRT timing cache to reuse (default: ARTIFACT/timing.cache)"
    )
    parser.add_argument("--hardware-compatible", action="store_true", help="Ampere+ compatible engines")
    parser.add_argument("--version-compatible", action="store_true", help="version-compatible engines")
    parser.add_argument(
        "--builder",
        choices=BUILDERS,
        default="auto",
        help="TensorRT (default when installed) or TensorRT-RTX",
    )
    parser.add_argument(
        "--compute-capability",
        metavar="SMXY",
        help="TensorRT-RTX only: build ahead of time for this GPU family (e.g. SM86), needed without a GPU",
    )
    parser.add_argument("--json", action="store_true", help="print the new manifest's target record as JSON")


def run(args: argparse.Namespace) -> int:
    from rynn_edge.export.engines import build_artifact

    manifest = build_artifact(
        args.artifact,
        args.out,
        builder=args.builder,
        compute_capability=args.compute_capability,
        timing_cache=args.timing_cache,
        hardware_compatible=args.hardware_compatible,
        version_compatible=args.version_compatible,
    )
    target = manifest["target"]
    if args.json:
        print(json.dumps({**target, "peak_rss_mb": manifest["build"]["peak_rss_mb"]}))
        return 0
    gpu = target["gpu"] or {}
    built = sum("engine" in e for e in manifest["stages"].values())
    print(
        f"built {built} engines into {args.out or args.artifact} "
        f"with {target['builder']} {target['tensorrt_version']} for {gpu.get('name', '?')} "
        f"(compute capability {gpu.get('compute_capability', '?')}) in {target['build_seconds']} s, "
        f"peak {manifest['build']['peak_rss_mb']} MB"
    )
    return 0
