"""`rynn-edge export`: checkpoint -> ONNX graphs (and TensorRT engines) + manifest with an accuracy report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rynn_edge.export.accuracy import PRECISIONS
from rynn_edge.runtime.argtypes import output_folder
from rynn_edge.runtime.backends.artifact import STAGES

METHODS = ("outlier-safe", "plain")  # quantize.METHODS, spelled here so --help imports no torch/onnx
CALIBRATION_HELP = (
    "recorded queries: DIR/samples.jsonl ({images: [paths], state: [...], instruction}) or a LeRobot-style "
    "episode (DIR/episode.jsonl + DIR/images/<camera>/frame_NNNNNN.png); default: synthetic frames"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", type=Path, metavar="MODEL_DIR", help="checkpoint folder (HF save_pretrained)"
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="HF tokenizer folder (tokenizer.json)")
    parser.add_argument(
        "--vq", type=Path, required=True, help="VQGAN folder (vqgan.yaml, vqgan.ckpt, text_tokenizer.json)"
    )
    parser.add_argument("-o", "--out", type=output_folder, required=True, help="artifact folder to write")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="backbone precision (default: bf16 for --target tensorrt on Ampere+ GPUs or without a GPU here, "
        "fp16 for onnxruntime, whose CPU provider has no bf16 kernels). fp16 is refused when calibration "
        "activations come near its 65504 maximum",
    )
    parser.add_argument(
        "--quantization",
        choices=METHODS,
        default="outlier-safe",
        help="int8/int4/fp8 method: outlier-safe (Hadamard rotation + per-linear searched smoothing and "
        "GPTQ rounding, default) or plain (per-tensor round-to-nearest, the baseline)",
    )
    parser.add_argument(
        "--max-fallback",
        type=float,
        default=25.0,
        metavar="PCT",
        help="keep at most this percent of the backbone linears float (most sensitive first) when a "
        "quantized export misses its accuracy gate (default 25; 0 disables the fallback)",
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to export")
    parser.add_argument(
        "--stage-precision",
        action="append",
        default=[],
        metavar="STAGE=PREC",
        help="per-stage override, e.g. vq_encoder=fp32 (VQ quantizer distances are always fp32)",
    )
    parser.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    parser.add_argument("--calibration-data", type=Path, metavar="DIR", help=CALIBRATION_HELP)
    parser.add_argument(
        "--robot",
        choices=("so100", "libero"),
        help="the robot the checkpoint drives, recorded in the manifest (default: by its action space)",
    )
    parser.add_argument(
        "--stats", help="so100 | libero | stats.json written into the artifact (default: the robot's)"
    )
    parser.add_argument("--format", choices=("triton",), help="also write an NVIDIA Triton model repository")
    parser.add_argument(
        "--triton-kind",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="--format triton: instance kind of every model (default auto: GPU where the server has one)",
    )
    parser.add_argument(
        "--triton-platform",
        choices=("python", "native"),
        default="python",
        help="--format triton: stage models on the Python backend (runs on any server, default) or on "
        "Triton's native onnxruntime/TensorRT backends (NVIDIA's container; copies the backbone weights)",
    )
    parser.add_argument(
        "--allow-accuracy-loss", action="store_true", help="warn instead of failing on thresholds"
    )
    parser.add_argument(
        "--hardware-compatible", action="store_true", help="TensorRT: Ampere+ compatible engines"
    )
    parser.add_argument(
        "--version-compatible", action="store_true", help="TensorRT: version-compatible engines"
    )
    parser.add_argument(
        "--timing-cache", type=Path, help="TensorRT timing cache to reuse (default: OUT/timing.cache)"
    )
    parser.add_argument(
        "--device",
        metavar="cuda|cpu",
        help="where calibration, the search, GPTQ and the simulated fallback gate run (default: cuda when "
        "torch sees a GPU, else cpu); the graphs and their onnxruntime gate are the same either way",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artifact at -o")
    parser.add_argument("--json", action="store_true", help="print the manifest's accuracy report as JSON")


def _stage_precision(items: list[str]) -> dict[str, str]:
    from rynn_edge.runtime.errors import UserError

    out = {}
    for item in items:
        stage, sep, precision = item.partition("=")
        if not sep:
            raise UserError(f"--stage-precision {item!r}: expected STAGE=PRECISION, e.g. vq_encoder=fp32")
        out[stage] = precision
    return out


def run(args: argparse.Namespace) -> int:
    from rynn_edge.export.pipeline import Options, export

    manifest = export(
        Options(
            model=args.model,
            tokenizer=args.tokenizer,
            vq=args.vq,
            out=args.out,
            precision=args.precision,
            quantization=args.quantization,
            max_fallback_pct=args.max_fallback,
            stages=tuple(args.stages),
            stage_precision=_stage_precision(args.stage_precision),
            target=args.target,
            calibration_data=args.calibration_data,
            stats=args.stats,
            robot=args.robot,
            triton=args.format == "triton",
            triton_kind=args.triton_kind,
            triton_platform=args.triton_platform,
            allow_accuracy_loss=args.allow_accuracy_loss,
            hardware_compatible=args.hardware_compatible,
            version_compatible=args.version_compatible,
            timing_cache=args.timing_cache,
            overwrite=args.overwrite,
            device=args.device,
        )
    )
    if args.json:
        print(json.dumps(manifest["accuracy"]))
        return 0
    from rynn_edge.export.accuracy import table

    print(f"wrote {args.out} ({len(manifest['files'])} files, {manifest['export_seconds']} s)")
    accuracy = manifest["accuracy"]
    print(f"accuracy on {accuracy['samples']} held-out queries, worst query ({accuracy['measured_with']}):")
    print("\n".join(table(manifest["accuracy"]["metrics"])))
    fallback = manifest.get("quantization", {}).get("fallback", {})
    if fallback.get("kept"):
        print(f"  kept float ({fallback['kept_precision']}): {', '.join(fallback['kept'])}")
    return 0
