"""`rynn-edge sim`: a simulated SO100 servo bus (6 x STS3215) on a pseudo-terminal."""

from __future__ import annotations

import argparse

from rynn_edge.runtime.argtypes import Number, NumberList, non_negative
from rynn_edge.runtime.errors import UserError

DEFAULT_LINK = "/tmp/rynn-edge-sim/ttySO100"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rynn_edge.runtime.sim.faults import SPEC_HELP

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        f"{SPEC_HELP}\n\n"
        "Prints 'sim ready: LINK' once listening; runs until SIGINT/SIGTERM, then removes LINK.\n"
        "SIGUSR1 rewrites --state-file at once (it is also rewritten every 0.1 s)."
    )
    parser.add_argument(
        "--link", default=DEFAULT_LINK, help=f"symlink to publish the pty at (default {DEFAULT_LINK})"
    )
    parser.add_argument(
        "--ids",
        type=NumberList(int, 0, 253),
        default=(1, 2, 3, 4, 5, 6),
        help="servo ids (default 1,2,3,4,5,6)",
    )
    parser.add_argument(
        "--baud",
        type=Number(int, 9600, 4_000_000),
        default=1_000_000,
        help="bus baud rate in bit/s (default 1000000)",
    )
    parser.add_argument(
        "--wire-time",
        action="store_true",
        help="emulate wire time: 10 bits/byte at --baud for request and replies + Return_Delay_Time x 2 us",
    )
    parser.add_argument(
        "--turnaround-us",
        type=non_negative(float),
        default=0.0,
        help="with --wire-time: extra turnaround per reply in us, to match a measured arm (default 0)",
    )
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="inject a fault (see below)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random fault schedule and, with --physics, of the cube's place (default 0)",
    )
    parser.add_argument(
        "--initial-positions",
        type=NumberList(float, 0, 4095),
        default=(),
        metavar="P1,P2,...",
        help="present position of each servo at power-on, steps (default 2048 each)",
    )
    physics = parser.add_argument_group("physics twin (needs pip install 'rynn-edge[physics]')")
    physics.add_argument(
        "--physics",
        action="store_true",
        help="move the servos with a MuJoCo SO101 (gravity, contact, load) instead of the kinematic model, "
        "and render its front and wrist cameras (read them with --camera NAME=sim)",
    )
    physics.add_argument("--scene", default="table", help="with --physics: the scene (default table)")
    physics.add_argument(
        "--realtime-factor",
        type=Number(float, 0.01, 100.0),
        default=1.0,
        metavar="X",
        help="with --physics: simulated seconds per wall second (default 1)",
    )
    physics.add_argument(
        "--camera-fps",
        type=Number(float, 0.0, 120.0),
        default=30.0,
        help="with --physics: rendering rate in simulated frames/s, 0 = none (default 30)",
    )
    parser.add_argument("--state-file", help="keep a JSON snapshot of every servo here (atomic rewrites)")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.sim.control_table import BAUD_RATES
    from rynn_edge.runtime.sim.server import PhysicsOptions, SimConfig, Simulator

    if args.baud not in BAUD_RATES.values():
        raise UserError(f"--baud {args.baud} is not an STS3215 rate; one of {sorted(BAUD_RATES.values())}")
    if not args.ids or any(not 0 <= i <= 253 for i in args.ids) or len(set(args.ids)) != len(args.ids):
        raise UserError(f"--ids {args.ids}: need distinct servo ids in 0..253")
    config = SimConfig(
        link=args.link,
        ids=args.ids,
        baud=args.baud,
        wire_time=args.wire_time,
        turnaround_us=args.turnaround_us,
        faults=tuple(args.fault),
        seed=args.seed,
        initial_positions=args.initial_positions,
        state_file=args.state_file,
        exit_on_stdin_eof=args.exit_on_stdin_eof,
        physics=PhysicsOptions(args.scene, args.realtime_factor, args.camera_fps) if args.physics else None,
    )
    Simulator(config).serve(lambda link: print(f"sim ready: {link}", flush=True))
    return 0
