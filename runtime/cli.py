"""The `rynn-edge` command line: one subcommand per module.

Each command module defines `add_arguments(parser)` and `run(args) -> int`, and keeps
heavy imports (torch, onnxruntime, ...) inside `run`, so `rynn-edge --help` stays instant.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys

from rynn_edge.runtime.argtypes import ArgumentParser
from rynn_edge.runtime.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": (
        "rynn_edge.runtime.commands.predict",
        "one action chunk from images, state and an instruction",
    ),
    "imagine": (
        "rynn_edge.runtime.commands.imagine",
        "world model: generate the next image(s) from image(s) + action",
    ),
    "vq": ("rynn_edge.runtime.commands.vq", "encode an image to VQ codes or decode codes to an image"),
    "make-tiny-checkpoint": (
        "rynn_edge.runtime.commands.make_tiny",
        "write a small random checkpoint bundle in the exact upstream layout",
    ),
    "export": ("rynn_edge.export.command", "checkpoint -> ONNX graphs / TensorRT engines + manifest"),
    "run": ("rynn_edge.runtime.commands.run", "drive the arm: cameras + policy + real-time C loop"),
    "sim": ("rynn_edge.runtime.sim.cli", "simulated SO100 servo bus on a pseudo-terminal"),
    "calibrate": ("rynn_edge.runtime.commands.calibrate", "record a LeRobot calibration file for a new arm"),
    "demo": ("rynn_edge.runtime.commands.demo", "tiny model + simulated arm + synthetic cameras, end to end"),
    "bench": ("rynn_edge.runtime.commands.bench", "control Hz vs action-chunk length"),
    "profile": ("rynn_edge.runtime.commands.profile", "per-layer latency of each stage"),
    "plot": (
        "rynn_edge.runtime.commands.plot",
        "a run's figure and seam / starvation metrics, from its episode log",
    ),
    "serve": (
        "rynn_edge.runtime.commands.serve",
        "serve an artifact on Triton Inference Server, or on LeRobot's async-inference protocol",
    ),
    "build": ("rynn_edge.runtime.commands.build", "TensorRT engines from an ONNX artifact, on this machine"),
    "doctor": (
        "rynn_edge.runtime.commands.doctor",
        "is this robot computer ready? GPU, TensorRT, engines, memory, real time, port, servos, cameras",
    ),
    "verify": (
        "rynn_edge.runtime.commands.verify",
        "replay an artifact's golden vectors, print its accuracy",
    ),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rynn-edge", description="Edge runtime for RynnVLA-002 on the SO100 arm.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in _available().items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C while torch imports or the model loads must end as exit 130, not a traceback: the
    # handler is Python's default one, made explicit here in case the caller ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # argparse: --help (0) or a refused flag (2, already printed)
            return done.code if isinstance(done.code, int) else 2
        try:
            module = importlib.import_module(COMMANDS[args.command][0])
            return int(module.run(args) or 0)
        except UserError as err:
            print(f"rynn-edge {args.command}: error: {err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        # A second Ctrl-C (or one still pending from C code) must not kill the process by the signal
        # while it shuts down: the exit code stays 130.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("rynn-edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
