"""`rynn-edge demo`: the whole robot side with no hardware.

A tiny random checkpoint (made once, cached), the bus simulator on a pseudo-terminal, a calibration
for the simulated arm and two synthetic cameras, driven by the same code as `rynn-edge run`.
The tiny model is untrained: the arm moves, but not toward anything.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rynn_edge.runtime.commands.run import DURATION, LOOP_RATE, add_chunk_arguments, chunk_options

DEFAULT_INSTRUCTION = "pick up the red cube and put it in the box"
BUNDLE_MARKER = ".complete"
SIM_PRIORITY = 10  # SCHED_FIFO priority of the demo's simulator (below the kernel's own threads)


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rynn-edge" / "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        help=f"cache for the tiny checkpoint and outputs (default {default_workdir()})",
    )
    parser.add_argument("--duration", type=DURATION, default=5.0, help="seconds to run (default 5)")
    add_chunk_arguments(parser)
    parser.add_argument(
        "--loop-rate", type=LOOP_RATE, default=100.0, help="servo loop rate, Hz (default 100)"
    )
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="simulator fault (see `rynn-edge sim -h`)",
    )
    parser.add_argument("--json", action="store_true", help="print the end-of-run summary as one JSON object")


def tiny_bundle(workdir: Path) -> dict[str, Path]:
    """The cached tiny checkpoint, made with make-tiny-checkpoint's writer if absent or incomplete."""
    from rynn_edge.runtime.tiny.bundle import write_tiny_bundle

    folder = workdir / "tiny-so100"
    paths = {name: folder / name for name in ("model", "tokenizer", "vq")}
    if not (folder / BUNDLE_MARKER).exists():
        print(f"demo: writing a tiny random SO100 checkpoint to {folder} (once)", flush=True)
        paths = write_tiny_bundle(folder, "so100", seed=0)
        (folder / BUNDLE_MARKER).touch()
    return paths


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.robot import control, so100
    from rynn_edge.runtime.robot.calibration import save_calibration
    from rynn_edge.runtime.robot.report import print_outcome
    from rynn_edge.runtime.sim import launch

    workdir = (args.workdir or default_workdir()).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = tiny_bundle(workdir)
    calibration = workdir / "calibration.json"
    save_calibration(calibration, so100.simulator_calibration())
    episode_log = workdir / "episode.jsonl.gz"
    episode_log.unlink(missing_ok=True)  # the demo keeps only its latest episode
    # Real servos answer in hardware; a simulator starved of CPU by inference on a small machine would
    # show reply timeouts that a real arm never has, so it runs SCHED_FIFO where the system allows it.
    with launch(faults=args.fault, rt_priority=SIM_PRIORITY) as port:
        print(
            f"demo: simulated SO100 on {port} (simulator scheduling: {port.sched}); synthetic cameras "
            f"front, wrist; {args.duration:g} s",
            flush=True,
        )
        cfg = control.RunConfig(
            model=str(bundle["model"]),
            tokenizer=str(bundle["tokenizer"]),
            vq=str(bundle["vq"]),
            port=str(port),
            calibration=str(calibration),
            cameras=[("front", "synthetic"), ("wrist", "synthetic")],
            instruction=args.instruction,
            **chunk_options(args),
            loop_rate_hz=args.loop_rate,
            duration_s=args.duration,
            episode_log=str(episode_log),
            bus_label="simulated bus",
        )
        outcome = control.run(cfg)
    print_outcome(outcome.summary, args.json)
    return outcome.reason.code
