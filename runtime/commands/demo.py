"""`rynn-edge demo`: the whole robot side with no hardware.

A tiny random checkpoint (made once, cached), the bus simulator on a pseudo-terminal, a calibration
for the simulated arm and two synthetic cameras, driven by the same code as `rynn-edge run`.
The tiny model is untrained: the arm moves, but not toward anything.

`--physics`: the MuJoCo twin instead (`rynn-edge sim --physics`): gravity, contact and the cameras
rendered from the same scene, async re-planning with the latency-aware K after a warm-up, and a GIF of
the front view (goal / present per joint, chunk switches marked) beside the episode plot.
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
    parser.add_argument(
        "--physics",
        action="store_true",
        help="drive the MuJoCo twin with rendered cameras (pip install 'rynn-edge[physics]'); writes "
        "WORKDIR/front.gif and WORKDIR/episode.png; the chunk policy defaults to async",
    )
    parser.set_defaults(chunk_policy=None)  # full, or async with --physics


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
    args.chunk_policy = args.chunk_policy or ("async" if args.physics else "full")
    physics = () if args.physics else None
    with launch(faults=args.fault, rt_priority=SIM_PRIORITY, physics=physics) as port:
        source = f"sim:{port}" if args.physics else "synthetic"
        print(
            f"demo: simulated SO100 on {port} ({'physics twin, ' if args.physics else ''}simulator "
            f"scheduling: {port.sched}); {source} cameras front, wrist; {args.duration:g} s",
            flush=True,
        )
        cfg = control.RunConfig(
            model=str(bundle["model"]),
            tokenizer=str(bundle["tokenizer"]),
            vq=str(bundle["vq"]),
            port=str(port),
            calibration=str(calibration),
            cameras=[("front", source), ("wrist", source)],
            instruction=args.instruction,
            **chunk_options(args),
            loop_rate_hz=args.loop_rate,
            duration_s=args.duration,
            episode_log=str(episode_log),
            bus_label="simulated bus",
        )
        recorder = _front_recorder(port) if args.physics else None
        outcome = control.run(cfg)
        if args.physics:
            outcome.summary["twin"] = port.state()["twin"]
    if recorder is not None:
        recorder.close()
        outcome.summary["outputs"] = _physics_outputs(recorder, episode_log, workdir)
    print_outcome(outcome.summary, args.json)
    return outcome.reason.code


def _front_recorder(port: str):
    from rynn_edge.runtime.sim.frames import frames_dir
    from rynn_edge.runtime.sim.video import FrameRecorder

    return FrameRecorder(frames_dir(port) / "front.rgb")


def _physics_outputs(recorder, episode_log: Path, workdir: Path) -> dict[str, str]:
    """The front-view GIF and the episode plot, side by side in the work folder."""
    from rynn_edge.runtime.bench.figures import save_figure
    from rynn_edge.runtime.robot.episode_log import read_episode
    from rynn_edge.runtime.robot.episode_metrics import load_trace
    from rynn_edge.runtime.robot.plot import draw
    from rynn_edge.runtime.sim.video import write_gif

    outputs = {}
    gif = workdir / "front.gif"
    steps = [r for r in read_episode(episode_log) if r.get("kind") == "step"]
    if write_gif(recorder.frames, steps, gif):
        outputs["video"] = str(gif)
    trace = load_trace(episode_log)
    if trace.steps.n:
        png = workdir / "episode.png"
        save_figure(draw(trace, title="rynn-edge demo --physics"), png)
        outputs["plot"] = str(png)
    return outputs
