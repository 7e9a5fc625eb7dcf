"""Roofline prediction of one action chunk on Jetson AGX Orin / Orin NX / Thor, next to what we measured.

Predicted: the 7B SO100 model (two 256x256 views, a 580-token prompt: BOS, instruction, state, 2 x 276
image tokens, separators), per precision the device supports, per chunk length T and mode: sum over
stages of max(FLOPs / peak, fused bytes / bandwidth) (`runtime/bench/roofline.py`: costs counted on the
meta device, peaks from NVIDIA's published specs, cited there).
A lower bound: a perfect engine that fuses elementwise work into the matmuls.
Measured: every recorded `rynn-edge bench` run in benchmarks/results/*/bench.json, next to the roofline of
the same checkpoint config on this machine's measured peak (unfused bytes: eager torch), for scale.

    python benchmarks/roofline_jetson.py
Writes benchmarks/results/roofline_jetson.{csv,json,png}.
"""

from __future__ import annotations

import json
from functools import cache

import torch
from runs import RESULTS

from rynn_edge.runtime.bench import figures
from rynn_edge.runtime.bench import timing as B
from rynn_edge.runtime.bench.chunk_runners import DTYPES
from rynn_edge.runtime.bench.roofline import (
    CHAMELEON_VQ,
    JETSON,
    MODES,
    jetson_peak,
    measure_peak,
    stage_costs,
)
from rynn_edge.runtime.model.config import ModelConfig

SEVEN_B = ModelConfig(
    vocab_size=65536,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    action_dim=6,
    time_horizon=20,
)
PROMPT_LEN, VIEWS, IMAGE_SIZE = 580, 2, 256
CHUNK_LENGTHS = (1, 5, 10, 20, 40, 60)
PRECISIONS = ("fp16", "fp8", "int8", "int4")


@cache
def _costs(
    cfg: ModelConfig, vq: str, prompt_len: int, t: int, views: int, size: int, mode: str, precision: str
):
    return stage_costs(
        cfg,
        json.loads(vq),
        prompt_len=prompt_len,
        time_horizon=t,
        n_images=views,
        image_size=size,
        mode=mode,
        precision=precision,
    )


def predicted() -> list[dict]:
    rows = []
    vq = json.dumps(CHAMELEON_VQ)
    for device in JETSON:
        for precision in PRECISIONS:
            peak = jetson_peak(device, precision)
            if peak is None:
                continue
            for mode in MODES:
                for t in CHUNK_LENGTHS:
                    costs = _costs(SEVEN_B, vq, PROMPT_LEN, t, VIEWS, IMAGE_SIZE, mode, precision)
                    ms = 1e3 * sum(peak.seconds(c, fused=True) for c in costs.values())
                    rows.append(
                        {
                            "device": device,
                            "model": "7B random/real (same shapes)",
                            "precision": precision,
                            "mode": mode,
                            "chunk_length": t,
                            "predicted_ms": ms,
                            "predicted_actions_per_s": t / ms * 1e3,
                            "source": peak.source,
                        }
                    )
    return rows


@cache
def _peak(precision: str, threads: int):
    torch.set_num_threads(threads)
    return measure_peak("cpu", DTYPES[precision], seconds=0.3)


def measured() -> list[dict]:
    """Recorded bench rows next to the roofline of their own checkpoint on this machine's measured peak."""
    rows = []
    for path in sorted(RESULTS.glob("*/bench.json")):
        result = json.loads(path.read_text())
        checkpoint = result.get("recorded", {}).get("checkpoint", {})
        if not checkpoint.get("config") or result["environment"]["device"] != "cpu":
            continue
        cfg = ModelConfig.from_dict(checkpoint["config"])
        for row in result["rows"]:
            if "median_ms" not in row or row["precision"] not in DTYPES:
                continue
            peak = _peak(row["precision"], result["environment"]["torch_threads"])
            costs = _costs(
                cfg,
                json.dumps(checkpoint["vq"]),
                row["prompt_tokens"],
                row["chunk_length"],
                row["views"],
                row["image_size"],
                row["mode"],
                row["precision"],
            )
            roof = 1e3 * sum(peak.seconds(c) for c in costs.values())
            rows.append(
                {
                    "device": B.where(result["environment"]),
                    "run": path.parent.name,
                    "model": f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers (random)",
                    "precision": row["precision"],
                    "mode": row["mode"],
                    "chunk_length": row["chunk_length"],
                    "measured_ms": row["median_ms"],
                    "roofline_here_ms": roof,
                    "of_roofline": roof / row["median_ms"],
                    "peak_here_tflops": peak.flops / 1e12,
                    "peak_here_gbs": peak.bandwidth / 1e9,
                }
            )
    return rows


def plot(pred: list[dict], meas: list[dict], path) -> None:
    plt = figures.pyplot()
    fig, (ax_j, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for device in JETSON:
        for precision in PRECISIONS:
            pts = [
                r for r in pred if (r["device"], r["precision"], r["mode"]) == (device, precision, MODES[0])
            ]
            if pts:
                ax_j.plot(
                    [p["chunk_length"] for p in pts],
                    [p["predicted_ms"] for p in pts],
                    marker=".",
                    label=f"{device.removeprefix('jetson-')} {precision}",
                )
    ax_j.set(
        xlabel="chunk length T",
        ylabel="predicted chunk latency (ms)",
        yscale="log",
        title="7B continuous, roofline lower bound",
    )
    ax_j.legend(fontsize=6)
    runs = sorted({(r["run"], r["precision"], r["mode"]) for r in meas})
    for run, precision, mode in runs:
        pts = [r for r in meas if (r["run"], r["precision"], r["mode"]) == (run, precision, mode)]
        line = ax_m.plot(
            [p["chunk_length"] for p in pts],
            [p["measured_ms"] for p in pts],
            marker="o",
            label=f"{run} {precision} {mode} measured",
        )
        ax_m.plot(
            [p["chunk_length"] for p in pts],
            [p["roofline_here_ms"] for p in pts],
            ls="--",
            color=line[0].get_color(),
        )
    ax_m.set(
        xlabel="chunk length T",
        ylabel="chunk latency (ms)",
        yscale="log",
        title="measured (solid) vs roofline here (dashed)",
    )
    ax_m.legend(fontsize=6)
    for ax in (ax_j, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    figures.save_figure(fig, path)


def main() -> None:
    pred, meas = predicted(), measured()
    B.write_csv(pred + meas, RESULTS / "roofline_jetson.csv")
    B.write_json(
        {
            "benchmark": "roofline chunk latency: 7B on Jetson (predicted), recorded bench runs (measured)",
            "prompt_tokens": PROMPT_LEN,
            "views": VIEWS,
            "image_size": IMAGE_SIZE,
            "fused": "predicted: fused bytes (matmul/conv/attention I/O only); measured: unfused roofline",
            "environment": B.environment("cpu"),
            "predicted": pred,
            "measured": meas,
        },
        RESULTS / "roofline_jetson.json",
    )
    plot(pred, meas, RESULTS / "roofline_jetson.png")
    print(
        B.format_table(
            [r for r in pred if r["mode"] == MODES[0]],
            ("device", "precision", "chunk_length", "predicted_ms"),
        )
    )
    print(
        B.format_table(meas, ("run", "precision", "mode", "chunk_length", "measured_ms", "roofline_here_ms"))
    )


if __name__ == "__main__":
    main()
