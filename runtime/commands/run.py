"""`rynn-edge run`: drive the SO100 arm with a policy (cameras + model + real-time C servo loop)."""

from __future__ import annotations

import argparse

from rynn_edge.runtime.argtypes import Number, NumberList, non_negative, output_file, positive
from rynn_edge.runtime.commands.predict import add_server_arguments
from rynn_edge.runtime.errors import UserError

# Ranges shared with `demo`. The loop must leave the bus time for a sync read + write per cycle.
LOOP_RATE = Number(float, 1, 1000)
DURATION = positive(float)


def _remaining(text: str) -> int | None:
    """--async-remaining: `auto` (None) or K >= 1."""
    if text.strip() == "auto":
        return None
    try:
        return positive(int)(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} (or auto)") from None


def add_chunk_arguments(parser: argparse.ArgumentParser) -> None:
    """How actions are chunked and re-planned (run and demo)."""
    parser.add_argument(
        "--chunk-policy",
        choices=("full", "async"),
        default="full",
        help="full: run the whole chunk, then re-query (upstream); async: re-plan early and blend",
    )
    parser.add_argument(
        "--async-remaining",
        type=_remaining,
        default=None,
        metavar="K",
        help="async: query the next chunk when K actions remain, below the chunk length T (default auto: "
        "from the measured inference latency, ceil((1.2 x p90 of the last 20 + switch overhead) x rate), "
        "at most T-1)",
    )
    parser.add_argument(
        "--extra-latency",
        type=non_negative(float),
        default=0.0,
        metavar="MS",
        help="add MS to every inference (a sleep in the policy worker): rehearse a slower model or "
        "device against the simulator",
    )
    parser.add_argument(
        "--rate",
        type=Number(float, 0, 1000, lo_open=True),
        default=30.0,
        help="action rate of the dataset, Hz (default 30)",
    )


def chunk_options(args: argparse.Namespace) -> dict:
    """The RunConfig fields of `add_chunk_arguments`."""
    return {
        "chunk_policy": args.chunk_policy,
        "async_remaining": args.async_remaining,
        "rate_hz": args.rate,
        "extra_latency_s": args.extra_latency / 1e3,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rynn_edge.runtime.robot.report import EXIT_CODES_HELP

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "SOURCE: a device index (0), a device path (/dev/video2), a URL (rtsp://...), a video file\n"
        "(looped), `synthetic` (moving test pattern) or `synthetic:SECONDS` (goes dead after SECONDS).\n"
        "Cameras are given in the model's prompt order (SO100: front, then wrist).\n"
        "On every exit the arm holds its pose (or moves to --rest-pose), then torque is switched off on\n"
        f"every servo that still answers.\n{EXIT_CODES_HELP}."
    )
    parser.add_argument(
        "model", help="exported artifact folder, or a raw checkpoint folder (with --tokenizer/--vq)"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder (raw checkpoint only)")
    parser.add_argument("--vq", help="VQ tokenizer folder (raw checkpoint only)")
    parser.add_argument("--backend", default="torch", help="inference backend (default torch)")
    # Twice the deadline: a server that hangs is caught by the deadline first (inference_stalled, 6);
    # the client timeout then frees the policy worker.
    add_server_arguments(parser, None, "twice --inference-deadline")
    parser.add_argument("--stats", help="normalisation stats: so100 (default), or a stats.json")
    parser.add_argument("--robot", choices=("so100",), default="so100")
    parser.add_argument(
        "--port", required=True, help="servo bus serial port, e.g. /dev/ttyACM0 or the sim's pty"
    )
    parser.add_argument("--baud", type=Number(int, 9600, 4_000_000), default=1_000_000, help="bit/s")
    parser.add_argument(
        "--port-wait",
        type=non_negative(float),
        default=0.0,
        metavar="SECONDS",
        help="after loading the model, wait up to SECONDS for --port to appear (adapter plugged in late)",
    )
    parser.add_argument("--calibration", required=True, help="LeRobot calibration JSON of this arm")
    parser.add_argument(
        "--camera", action="append", default=[], metavar="NAME=SOURCE", help="a camera (repeat, prompt order)"
    )
    parser.add_argument("--instruction", required=True, help="task instruction given to the model")
    add_chunk_arguments(parser)
    parser.add_argument(
        "--loop-rate", type=LOOP_RATE, default=100.0, help="servo loop rate, Hz (default 100)"
    )
    parser.add_argument("--duration", type=DURATION, help="stop after SECONDS (default: until Ctrl-C)")
    parser.add_argument(
        "--episode-log", type=output_file, help="write every step to this JSON Lines file (crash-safe)"
    )
    parser.add_argument(
        "--log-frames",
        action="store_true",
        help="also save the camera frames of each query (JPEG, beside the log)",
    )
    parser.add_argument("--json", action="store_true", help="print the end-of-run summary as one JSON object")
    parser.add_argument(
        "--max-speed",
        type=Number(float, 0, 10_000, lo_open=True),
        default=180.0,
        help="goal slew limit, degrees/s per joint (default 180)",
    )
    parser.add_argument(
        "--bus-timeout-ms", type=Number(float, 0, 1000), default=5.0, help="reply timeout slack (default 5)"
    )
    parser.add_argument(
        "--bus-retries", type=Number(int, 0, 10), default=2, help="retries of a unicast request (default 2)"
    )
    parser.add_argument(
        "--max-missed-cycles",
        type=Number(int, 1, 1000),
        default=10,
        help="a servo silent for more consecutive loop cycles is lost (default 10: 0.1 s at 100 Hz)",
    )
    parser.add_argument(
        "--inference-deadline",
        type=Number(float, 0, 600, lo_open=True),
        default=3.0,
        help="a chunk must arrive within SECONDS of its query (default 3)",
    )
    parser.add_argument(
        "--camera-timeout",
        type=Number(float, 0, 60, lo_open=True),
        default=0.5,
        help="a camera with no new frame for SECONDS is lost (default 0.5)",
    )
    parser.add_argument(
        "--rest-pose",
        type=NumberList(float, count=6),
        metavar="J1,..,J5,G",
        help="on exit move here (degrees, gripper 0-100) before torque off, instead of holding",
    )
    parser.add_argument(
        "--rest-seconds",
        type=Number(float, 0, 60, lo_open=True),
        default=2.0,
        help="time to reach --rest-pose (default 2)",
    )
    parser.add_argument("--no-status", action="store_true", help="no live status line")


def config_from_args(args: argparse.Namespace):
    from rynn_edge.runtime.robot.cameras import parse_camera_specs
    from rynn_edge.runtime.robot.control import RunConfig

    if not args.camera:
        raise UserError("give at least one --camera NAME=SOURCE (SO100 models take front and wrist)")
    return RunConfig(
        model=args.model,
        tokenizer=args.tokenizer,
        vq=args.vq,
        backend=args.backend,
        stats=args.stats,
        port=args.port,
        baud=args.baud,
        calibration=args.calibration,
        cameras=parse_camera_specs(args.camera),
        instruction=args.instruction,
        **chunk_options(args),
        loop_rate_hz=args.loop_rate,
        duration_s=args.duration,
        episode_log=str(args.episode_log) if args.episode_log else None,
        log_frames=args.log_frames,
        max_speed_deg_s=args.max_speed,
        bus_timeout_ms=args.bus_timeout_ms,
        bus_retries=args.bus_retries,
        max_missed_cycles=args.max_missed_cycles,
        inference_deadline_s=args.inference_deadline,
        camera_timeout_s=args.camera_timeout,
        rest_pose=args.rest_pose,
        rest_s=args.rest_seconds,
        status_line=not args.no_status,
        port_wait_s=args.port_wait,
        server=args.server,
        server_timeout_s=args.server_timeout or 2 * args.inference_deadline,
    )


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.robot import control
    from rynn_edge.runtime.robot.report import print_outcome

    outcome = control.run(config_from_args(args))
    print_outcome(outcome.summary, args.json)
    return outcome.reason.code
