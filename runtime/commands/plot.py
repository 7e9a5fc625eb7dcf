"""`rynn-edge plot`: the figure and the seam / starvation metrics of a run, from its episode log."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rynn_edge.runtime.argtypes import Number, output_file
from rynn_edge.runtime.errors import UserError


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episode_log", type=Path, help="a log written by `rynn-edge run --episode-log`")
    parser.add_argument(
        "-o", "--out", type=output_file, help="PNG to write (default: beside the log, .jsonl[.gz] -> .png)"
    )
    parser.add_argument(
        "--joints",
        type=_names,
        metavar="J,..",
        help="joints to draw, by name or 1-based number (default all)",
    )
    parser.add_argument(
        "--from", dest="t_from", type=Number(), metavar="S", help="draw from S seconds after the first cycle"
    )
    parser.add_argument("--to", dest="t_to", type=Number(), metavar="S", help="draw up to S seconds")
    parser.add_argument(
        "--summary", action="store_true", help="print the metrics of the whole run only; draw nothing"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the metrics (and the figure's path) as one JSON object"
    )


def _title(path: Path, trace, metrics: dict) -> str:
    cfg = trace.config
    policy = cfg.get("chunk_policy", "?")
    if policy == "async":
        policy += f" K={metrics['replanning']['async_remaining']}"
    horizon = f" T={cfg['time_horizon']}" if cfg.get("time_horizon") else ""
    held = metrics["starvation"]["held_fraction"]
    ending = f"; {trace.end['exit_reason']}" if trace.end else "; no end record (cut short)"
    return (
        f"{path.name}: {policy}{horizon} at {cfg['rate_hz']:g} Hz, loop {cfg['loop_rate_hz']:g} Hz"
        f"{ending}; held {100 * (held or 0):.1f}% of run cycles"
    )


def figure_path(log: Path, out: Path | None) -> Path:
    """Where the PNG goes: -o, or beside the log; refused before anything is read or drawn."""
    figure = out or log.with_name(log.name.removesuffix(".gz")).with_suffix(".png")
    if figure.suffix.lower() != ".png":
        raise UserError(f"-o {figure}: the figure is a PNG; give a file name ending in .png")
    if figure.exists() and log.exists() and figure.samefile(log):
        raise UserError(f"{figure} is the episode log itself; give -o a .png path to write the figure to")
    return figure


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.robot.episode_metrics import episode_metrics, load_trace
    from rynn_edge.runtime.robot.report import metric_lines

    path: Path = args.episode_log
    figure = None if args.summary else figure_path(path, args.out)
    trace = load_trace(path)
    if trace.torn_line is not None:
        print(
            f"rynn-edge plot: note: {path}: line {trace.torn_line} is incomplete (cut short while being "
            "written); read up to the line before",
            file=sys.stderr,
        )
    if trace.steps.n == 0:
        raise UserError(f"{path}: no loop cycles recorded (the run ended before the servo loop started)")
    metrics = episode_metrics(trace)
    if figure is not None:
        from rynn_edge.runtime.bench.figures import save_figure
        from rynn_edge.runtime.robot.plot import draw

        try:
            fig = draw(
                trace,
                joints=args.joints,
                t_from=args.t_from,
                t_to=args.t_to,
                title=_title(path, trace, metrics),
            )
        except ValueError as err:
            raise UserError(str(err)) from None
        try:
            figure.parent.mkdir(parents=True, exist_ok=True)
            save_figure(fig, figure)
        except OSError as err:
            raise UserError(f"cannot write the figure {figure}: {err.strerror or err}") from None
    if args.json:
        print(json.dumps({"episode_log": str(path), "figure": figure and str(figure), **metrics}))
        return 0
    if figure:
        print(f"wrote {figure}")
    for line in metric_lines(metrics):
        print(line)
    return 0
