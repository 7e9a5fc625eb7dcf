"""`rynn-edge bench`: control Hz vs action-chunk length T, per mode and backend/precision.

Per T and mode: chunk latency (median / p90 / p99 over --runs calls after --warmup), model calls per
second (1 / median), actions per second (T / median) and the sustainable control rate with async
re-planning (see `benchmarking.sustainable_hz`), and the closed-loop view (`timing.closed_loop`): the
K that latency-aware async re-planning would pick, the share of time the arm would hold for want of a
chunk (async and full) and re-plans per second. What one call contains: `runtime/chunk_bench.py`.
Writes bench.csv, bench.json and bench.png to --out; --json prints the same object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rynn_edge.runtime.argtypes import NumberList, non_negative, positive
from rynn_edge.runtime.commands.run import LOOP_RATE
from rynn_edge.runtime.errors import UserError

BACKENDS = ("torch", "cuda", "onnxruntime", "tensorrt", "triton")
MODES = ("continuous", "discrete-sequential", "discrete-parallel")
COLUMNS = (
    "backend",
    "precision",
    "mode",
    "chunk_length",
    "queries",
    "median_ms",
    "p90_ms",
    "p99_ms",
    "calls_per_s",
    "actions_per_s",
    "sustainable_hz",
    "execute_whole_chunk_hz",
    "auto_remaining",
    "async_held_pct",
    "replans_per_s",
    "full_held_pct",
)


CLOSED_LOOP = (
    "what `rynn-edge run` would do at the action rate with each measured latency (+ the loop's switch "
    "overhead), in steady state: auto_remaining = the K that --chunk-policy async picks (1.2 x p90 + "
    "overhead, in actions, at most T-1); async_held_pct / full_held_pct = share of time the arm holds "
    "for want of a chunk with async (that K) / full; replans_per_s = async chunk switches per second"
)


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        choose = ", ".join(MODES)
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or '(none)'}; choose from {choose}")
    return modes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rynn_edge.runtime.commands.measure_args import add_common_arguments
    from rynn_edge.runtime.commands.predict import add_server_arguments

    add_common_arguments(parser, "bench-results")
    add_server_arguments(parser)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="default: torch, or onnxruntime for an artifact folder; cuda: the CUDA-graph fast path (GPU); "
        "triton: whole steps on --server (MODEL: the artifact folder or the served model's name)",
    )
    parser.add_argument(
        "--precision", default=None, help="torch: fp32|bf16|fp16 (default fp32); onnxruntime: the artifact's"
    )
    parser.add_argument(
        "--chunk-lengths", type=NumberList(int, 1), default=[1, 5, 10, 20, 40], help="T values, e.g. 1,5,10"
    )
    parser.add_argument(
        "--modes", type=_modes, default=["continuous"], help=f"comma-separated: {','.join(MODES)}"
    )
    parser.add_argument("--runs", type=positive(int), default=20, help="timed calls per point (default 20)")
    parser.add_argument(
        "--warmup", type=non_negative(int), default=3, help="discarded calls per point (default 3)"
    )
    parser.add_argument(
        "--action-rate", type=positive(float), default=30.0, help="actions per second on the arm (30)"
    )
    parser.add_argument(
        "--loop-rate", type=LOOP_RATE, default=100.0, help="servo loop rate of the closed-loop columns (100)"
    )
    parser.add_argument(
        "--weights",
        choices=("auto", "real", "random"),
        default="auto",
        help="label of the weights (auto: random when hidden_size < 4096, e.g. tiny)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="SPEC",
        help="extra runs BACKEND[:PRECISION][@PATH] in the same sweep; prints ratios to the "
        "first (e.g. torch:fp32 torch:bf16 onnxruntime@ARTIFACTS; triton@HOST:PORT serves MODEL)",
    )


def _spec(text: str, args: argparse.Namespace) -> tuple[str, str | None, Path, str | None]:
    """--compare SPEC -> (backend, precision, model, server); for triton, @ names the server."""
    head, _, path = text.partition("@")
    backend, _, precision = head.partition(":")
    if backend not in BACKENDS:
        raise UserError(f"--compare {text!r}: backend must be one of {', '.join(BACKENDS)}")
    if backend == "triton":
        return backend, None, args.model, path or args.server
    return backend, precision or None, Path(path) if path else args.model, None


def _model_table(model: Path) -> dict[str, Any]:
    """The model's configuration: a checkpoint's (or artifact's) config.json, else an artifact manifest's
    model table; {} for a served model named by its name."""
    for name in ("config.json", "manifest.json"):
        path = model / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            table = data["model"] if name == "manifest.json" else data
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}: cannot read the model configuration ({err!r})") from None
        if not isinstance(table, dict):
            raise UserError(f"{path}: the model configuration is not a JSON object")
        return table
    return {}


def _weights_label(model: Path, choice: str, hidden: int = 0) -> str:
    """`hidden`: the hidden size where it is known without the files (a served model states it)."""
    if choice != "auto":
        return choice
    hidden = hidden or _model_table(model).get("hidden_size", 0)
    return "random" if hidden < 4096 else "real"


def _check_chunk_lengths(lengths: list[int], runner: Any, model: Path) -> None:
    """Every T must fit the model's positions as a discrete chunk (prompt + T blocks of A values and two
    markers); that is also the sane ceiling of a continuous head. Checked before anything is timed."""
    positions = _model_table(model).get("max_position_embeddings")
    if not positions:  # a served model named by its name: only its own T runs, the others are skipped
        return
    per_action = runner.action_dim + 2
    longest = (int(positions) - len(runner.prompt_ids)) // per_action
    too_long = [t for t in lengths if t > longest]
    if too_long:
        raise UserError(
            f"--chunk-lengths {too_long[0]}: at most {longest} for this model (max_position_embeddings "
            f"{positions} - a {len(runner.prompt_ids)}-token prompt, {per_action} tokens per action)"
        )


def _runner(backend: str, precision: str | None, model: Path, server: str | None, args: argparse.Namespace):
    from rynn_edge.runtime.backends.artifact import Artifact
    from rynn_edge.runtime.bench import chunk_runners as chunk_bench

    if backend == "triton":
        if precision:
            raise UserError("--precision: a served model runs at the precision it was exported with")
        if not server:
            raise UserError("--backend triton needs --server HOST:PORT (a `rynn-edge serve` endpoint)")
        runner = chunk_bench.triton_runner(server, model, args.server_timeout)
        runner.weights = _weights_label(model, args.weights, runner.predictor.backend.hidden_size)
        return runner
    weights = _weights_label(model, args.weights)
    if backend in ("onnxruntime", "tensorrt"):
        if not Artifact.is_artifact(model):
            raise UserError(f"{model}: {backend} runs an artifact folder (rynn-edge export)")
        if backend == "tensorrt":
            return chunk_bench.tensorrt_runner(model, precision, weights)
        return chunk_bench.onnxruntime_runner(model, precision, weights)
    if Artifact.is_artifact(model):
        raise UserError(f"{model} is an artifact folder: use --backend onnxruntime or tensorrt")
    if backend == "cuda":
        return chunk_bench.cuda_runner(model, args.tokenizer, args.vq, precision or "bf16", weights)
    return chunk_bench.torch_runner(model, args.tokenizer, args.vq, precision or "fp32", args.device, weights)


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    from rynn_edge.runtime.bench import timing as B
    from rynn_edge.runtime.bench.chunk_runners import __doc__ as timed
    from rynn_edge.runtime.bench.roofline import decode_steps

    specs = [(args.backend, args.precision, args.model, args.server)] + [_spec(s, args) for s in args.compare]
    rows: list[dict[str, Any]] = []
    for backend, precision, model, server in specs:
        backend = backend or ("onnxruntime" if (model / "manifest.json").is_file() else "torch")
        runner = _runner(backend, precision, model, server, args)
        _check_chunk_lengths(args.chunk_lengths, runner, model)
        for mode in args.modes:
            for t in args.chunk_lengths:
                row: dict[str, Any] = {
                    "backend": runner.backend,
                    "precision": runner.precision,
                    "device": runner.device,
                    "mode": mode,
                    "chunk_length": t,
                    "weights": runner.weights,
                    "model": str(model),
                    "native_chunk_length": runner.time_horizon,
                    "decode_steps": decode_steps(mode, t, runner.action_dim),
                    "prompt_tokens": len(runner.prompt_ids),
                    "views": int(runner.pixels.shape[0]),
                    "image_size": int(runner.pixels.shape[-1]),
                }
                made = runner.chunk(t, mode)
                if isinstance(made, str):
                    rows.append({**row, "queries": "n/a", "skipped": made})
                    continue
                call, row["queries"] = made
                samples = B.time_calls(call, args.runs, args.warmup, runner.device)
                stats = B.summarize_ms(samples)
                latency = stats["median_ms"] / 1e3
                rows.append(
                    {
                        **row,
                        **stats,
                        "runs": args.runs,
                        "warmup": args.warmup,
                        "calls_per_s": 1 / latency,
                        "actions_per_s": t / latency,
                        "sustainable_hz": B.sustainable_hz(t, latency, args.action_rate),
                        "execute_whole_chunk_hz": B.execute_whole_chunk_hz(t, latency, args.action_rate),
                        "action_rate_hz": args.action_rate,
                        **B.closed_loop(samples, t, args.action_rate, args.loop_rate),
                    }
                )
    _ratios(rows)
    return {
        "command": "bench",
        "environment": B.environment(args.device),
        "action_rate_hz": args.action_rate,
        "sustainable_hz_formula": "clip(min(f, T/L - f), 0, f) with f = action rate, L = median latency",
        "closed_loop": CLOSED_LOOP,
        "timed": " ".join(timed.split()),
        "rows": rows,
    }


def _ratios(rows: list[dict[str, Any]]) -> None:
    """speedup_vs_first = median of the first backend/precision at the same (mode, T) / this median."""
    base: dict[tuple[str, int], float] = {}
    first = None
    for row in rows:
        if "median_ms" not in row:
            continue
        combo = (row["backend"], row["precision"], row["model"])
        first = first or combo
        if combo == first:
            base[(row["mode"], row["chunk_length"])] = row["median_ms"]
        reference = base.get((row["mode"], row["chunk_length"]))
        if reference:
            row["speedup_vs_first"] = reference / row["median_ms"]


def plot(result: dict[str, Any], path: Path) -> None:
    from rynn_edge.runtime.bench.figures import pyplot, save_figure
    from rynn_edge.runtime.bench.timing import where

    plt = pyplot()
    fig, (ax_lat, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines: dict[str, list[dict]] = {}
    for row in result["rows"]:
        if "median_ms" in row:
            lines.setdefault(f"{row['backend']} {row['precision']} {row['mode']}", []).append(row)
    for label, points in lines.items():
        t = [p["chunk_length"] for p in points]
        ax_lat.plot(t, [p["median_ms"] for p in points], marker="o", label=label)
        line = ax_rate.plot(t, [p["actions_per_s"] for p in points], marker="o", label=f"{label} actions/s")
        ax_rate.plot(
            t,
            [p["sustainable_hz"] for p in points],
            ls="--",
            color=line[0].get_color(),
            label=f"{label} sustainable Hz",
        )
    ax_lat.set(
        xlabel="chunk length T (actions)",
        ylabel="chunk latency, median (ms)",
        yscale="log",
        title=f"latency per chunk — {where(result['environment'])}",
    )
    ax_rate.axhline(result["action_rate_hz"], color="grey", lw=0.8)
    ax_rate.set(
        xlabel="chunk length T (actions)",
        ylabel="per second",
        yscale="log",
        title="actions/s (T / latency) and sustainable control Hz",
    )
    for ax in (ax_lat, ax_rate):
        ax.grid(True, which="both", alpha=0.3)
    ax_rate.legend(fontsize=7)
    ax_lat.legend(fontsize=7)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.bench import timing as B
    from rynn_edge.runtime.commands.measure_args import check_device

    check_device(args.device)
    B.set_threads(args.threads)
    result = sweep(args)
    drawn = None if args.no_plot else (lambda path: plot(result, path))
    if B.write_outputs(result, args.out, "bench", result["rows"], drawn, as_json=args.json):
        return 0
    columns = COLUMNS + (("speedup_vs_first",) if args.compare else ())
    print(B.format_table(result["rows"], columns))
    for row in result["rows"]:
        if "skipped" in row:
            print(f"skipped {row['backend']} {row['mode']} T={row['chunk_length']}: {row['skipped']}")
    print(f"sustainable_hz = {result['sustainable_hz_formula']}; weights {result['rows'][0]['weights']}")
    print(f"closed loop: {result['closed_loop']}")
    print("wrote " + ", ".join(result["files"].values()))
    return 0
