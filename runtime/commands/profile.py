"""`rynn-edge profile`: per-layer latency of each stage (vq_encoder, backbone_prefill, action_head,
backbone_decode, vq_decoder) with FLOPs, bytes and the roofline position against this device's measured peak.

Writes profile.csv (every layer), profile.json and profile.png (top layers, stage shares) to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rynn_edge.runtime.argtypes import positive
from rynn_edge.runtime.backends.artifact import STAGES

BACKENDS = ("torch", "onnxruntime", "tensorrt")
COLUMNS = (
    "layer",
    "kind",
    "calls",
    "mean_ms",
    "share",
    "flops",
    "bytes",
    "tflops",
    "gbs",
    "bound",
    "of_roofline",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rynn_edge.runtime.commands.measure_args import add_common_arguments

    add_common_arguments(parser, "profile-results")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="default: by folder kind")
    parser.add_argument("--precision", default="fp32", help="torch: fp32|bf16|fp16 (default fp32)")
    parser.add_argument("--stage", default="all", choices=(*STAGES, "all"), help="one stage or all")
    parser.add_argument(
        "--top", type=positive(int), default=10, help="layers per stage in the terminal (default 10)"
    )
    parser.add_argument("--runs", type=positive(int), default=10, help="timed and profiled calls per stage")


def profile(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rynn_edge.runtime.backends.artifact import Artifact
    from rynn_edge.runtime.bench import profiling, stage_inputs
    from rynn_edge.runtime.bench import timing as B
    from rynn_edge.runtime.bench.roofline import measure_peak

    backend = args.backend or ("onnxruntime" if Artifact.is_artifact(args.model) else "torch")
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    if backend == "torch":
        profiles = stage_inputs.torch_profiles(
            args.model,
            args.tokenizer,
            args.vq,
            precision=args.precision,
            device=args.device,
            runs=args.runs,
            stages=stages,
        )
        dtype = stage_inputs.DTYPES[args.precision]
    elif backend == "tensorrt":
        profiles = stage_inputs.tensorrt_profiles(args.model, stages, args.runs)
        dtype = torch.float16
    else:
        profiles = stage_inputs.onnxruntime_profiles(args.model, stages, args.runs)
        dtype = torch.float32
    device = "cuda" if backend == "tensorrt" else args.device
    peak = measure_peak(device, dtype, seconds=0.3)
    out = [p.summary(peak) for p in profiles]
    return {
        "command": "profile",
        "model": str(args.model),
        "backend": backend,
        "precision": args.precision if backend == "torch" else "artifact",
        "environment": B.environment(device),
        "coverage_definition": profiling.COVERAGE,
        "peak": {
            "name": peak.name,
            "precision": peak.precision,
            "tflops": peak.flops / 1e12,
            "gbs": peak.bandwidth / 1e9,
            "source": peak.source,
        },
        "stages": out,
    }


def plot(result: dict[str, Any], path: Path, top: int) -> None:
    from rynn_edge.runtime.bench.figures import pyplot, save_figure
    from rynn_edge.runtime.bench.timing import where

    plt = pyplot()
    rows = sorted((r for s in result["stages"] for r in s["rows"]), key=lambda r: -r["mean_ms"])[:top]
    fig, (ax_top, ax_share) = plt.subplots(
        1, 2, figsize=(12, 0.35 * len(rows) + 2), gridspec_kw={"width_ratios": [4, 1]}
    )
    labels = [f"{r['stage']}: {r['layer']} ({r['kind']})" for r in rows][::-1]
    ax_top.barh(labels, [r["mean_ms"] for r in rows][::-1])
    ax_top.set(
        xlabel="mean ms per stage call",
        title=f"top {len(rows)} layers — {result['backend']} on {where(result['environment'])}",
    )
    ax_top.tick_params(axis="y", labelsize=7)
    total = sum(s["stage_ms"] for s in result["stages"]) or 1.0
    bottom = 0.0
    for s in result["stages"]:
        share = s["stage_ms"] / total
        ax_share.bar(["stages"], [share], bottom=bottom, label=f"{s['stage']} {s['stage_ms']:.3g} ms")
        bottom += share
    ax_share.set(ylabel="share of the summed stage time", ylim=(0, 1))
    ax_share.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.bench import timing as B
    from rynn_edge.runtime.commands.measure_args import check_device

    check_device(args.device)
    B.set_threads(args.threads)
    result = profile(args)
    rows = [r for s in result["stages"] for r in s["rows"]]
    drawn = None if args.no_plot else (lambda path: plot(result, path, args.top))
    if B.write_outputs(result, args.out, "profile", rows, drawn, as_json=args.json):
        return 0
    peak = result["peak"]
    print(
        f"peak ({peak['name']}, {peak['precision']}, measured): {peak['tflops']:.3g} TFLOP/s, "
        f"{peak['gbs']:.3g} GB/s"
    )
    for s in result["stages"]:
        print(
            f"\n{s['stage']}: {s['stage_ms']:.3f} ms plain, {s['profiled_ms']:.3f} ms profiled; layers "
            f"{s['layers_ms']:.3f} ms = {100 * s['coverage']:.0f}% of the profiled call"
        )
        print(B.format_table(s["rows"][: args.top] + s["rows"][-1:], COLUMNS))
    print(f"\n{result['coverage_definition']}\nwrote " + ", ".join(result["files"].values()))
    return 0
