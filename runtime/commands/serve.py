"""`rynn-edge serve`: an exported artifact on the real Triton Inference Server, on LeRobot's
async-inference gRPC protocol (`--lerobot`) or on openpi's websocket policy protocol (`--openpi`).
Binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from rynn_edge.runtime.argtypes import positive
from rynn_edge.runtime.errors import UserError

INSTALL_HINT = "pip install 'rynn-edge[serve]'"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port number 0-65535 (0 = any free port), got {port}")
    return port


def camera_map_item(text: str) -> tuple[str, str]:
    """`--camera-map CLIENT_NAME=VIEW` (the view is checked once the artifact is open)."""
    client, sep, view = text.partition("=")
    if not sep or not client.strip() or not view.strip():
        raise argparse.ArgumentTypeError(f"expected CLIENT_NAME=VIEW (e.g. top=front), got {text!r}")
    return client.strip(), view.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifacts", type=Path, help="artifact folder exported with `--format triton`")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 = every interface)"
    )
    parser.add_argument("--http-port", type=_port, default=8000, help="Triton HTTP port (default 8000)")
    parser.add_argument("--grpc-port", type=_port, default=8001, help="Triton gRPC port (default 8001)")
    parser.add_argument("--instances", type=int, default=1, help="instances of every model (default 1)")
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for every model READY (300)"
    )
    robots = parser.add_mutually_exclusive_group()
    robots.add_argument(
        "--lerobot",
        action="store_true",
        help="serve LeRobot's async-inference gRPC protocol (an unmodified LeRobot RobotClient) instead",
    )
    robots.add_argument(
        "--openpi",
        action="store_true",
        help="serve openpi's websocket policy protocol (openpi-client's WebsocketClientPolicy) instead",
    )
    parser.add_argument(
        "--port", type=_port, help="--lerobot/--openpi: port (default 8080 / 8000; 0 = any free port)"
    )
    parser.add_argument(
        "--backend",
        default="onnxruntime",
        help="--lerobot/--openpi: where the model runs (onnxruntime, tensorrt, or triton with --server)",
    )
    parser.add_argument("--server", help="--backend triton: the Triton server, HOST:PORT")
    parser.add_argument(
        "--camera-map",
        action="append",
        default=[],
        type=camera_map_item,
        metavar="CLIENT_NAME=VIEW",
        help="--lerobot/--openpi: serve the client's camera CLIENT_NAME as VIEW (repeatable; views are "
        "matched by name: front, wrist for SO100)",
    )
    parser.add_argument(
        "--max-step",
        type=positive(float),
        help="--lerobot/--openpi: keep each goal within this many units (degrees; gripper 0-100) of the "
        "observed state (default off)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=positive(float),
        default=16.0,
        help="--lerobot/--openpi: largest accepted message (16 MB)",
    )
    parser.add_argument(
        "--stream-timeout",
        type=positive(float),
        default=10.0,
        help="--lerobot: seconds one observation upload may take; --openpi: the handshake (10)",
    )
    parser.add_argument(
        "--fps",
        type=positive(float),
        default=30.0,
        help="--lerobot: action rate, spacing of the timed actions (30)",
    )


class Stopped(BaseException):
    """SIGINT or SIGTERM: raised in the main thread wherever it is (starting, serving)."""


def _stop_on_signals() -> None:
    def handler(signum, _frame):
        for sig in (signal.SIGINT, signal.SIGTERM):  # once: the stop itself is not interrupted
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _serve_forever() -> None:
    while True:
        time.sleep(3600)


def run(args: argparse.Namespace) -> int:
    if args.instances < 1:
        raise UserError(f"--instances must be at least 1, got {args.instances}")
    _stop_on_signals()
    try:
        return _run_robot_protocol(args) if args.lerobot or args.openpi else _run_triton(args)
    except Stopped as stop:
        print(f"rynn-edge serve: {stop}: stopped", file=sys.stderr, flush=True)
        return 0


def _run_triton(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.serving import server_env
    from rynn_edge.runtime.serving.triton_server import TritonServer, free_port

    repository = args.artifacts / "triton"
    if not repository.is_dir():
        raise UserError(
            f"{args.artifacts}: no triton/ repository; export with `rynn-edge export ... --format triton`"
        )
    env = server_env.prepare(log=lambda line: print(f"rynn-edge serve: {line}", file=sys.stderr, flush=True))
    server = TritonServer(
        env,
        repository,
        host=args.host,
        http_port=args.http_port or free_port(args.host),
        grpc_port=args.grpc_port or free_port(args.host),
        instances=args.instances,
    )
    print(f"rynn-edge serve: starting tritonserver on {args.artifacts} ...", file=sys.stderr, flush=True)
    try:
        server.start(args.ready_timeout)
        states = server.model_states()
        print(
            f"rynn-edge serve: ready: HTTP {server.http_url}  gRPC {server.grpc_url}  "
            f"models {', '.join(f'{m} ({s})' for m, s in sorted(states.items()))}  "
            f"tritonserver pid {server.process.pid}  log {server.log_path}",
            flush=True,
        )
        _serve_forever()
    finally:
        code = server.stop()
        print(f"rynn-edge serve: tritonserver stopped (exit code {code})", file=sys.stderr, flush=True)
    return 0


def _run_robot_protocol(args: argparse.Namespace) -> int:
    try:
        if args.lerobot:
            import grpc  # noqa: F401
        else:
            import msgpack  # noqa: F401
            import websockets  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"{'--lerobot' if args.lerobot else '--openpi'} needs {err.name}: {INSTALL_HINT}"
        ) from None
    import asyncio

    from rynn_edge.runtime.predictor import open_predictor
    from rynn_edge.runtime.serving.policy import ServedPolicy

    if args.port is None:
        args.port = 8080 if args.lerobot else 8000
    predictor = open_predictor(args.artifacts, backend=args.backend, server=args.server)
    policy = ServedPolicy(predictor, args.artifacts, args.camera_map, args.max_step)
    try:
        warm_up_ms = policy.warm_up() * 1e3

        def ready(what: str) -> None:
            print(
                f"rynn-edge serve: ready: {what}; robot {predictor.robot}, views {', '.join(policy.views)}, "
                f"T {policy.horizon}, backend {predictor.backend.name}, warm-up {warm_up_ms:.0f} ms",
                flush=True,
            )
            print(f"rynn-edge serve: {policy.limits.describe()}", file=sys.stderr, flush=True)

        if args.lerobot:
            from rynn_edge.runtime.serving.lerobot.service import serve_lerobot as serve_protocol
        else:
            from rynn_edge.runtime.serving.openpi.server import serve_openpi as serve_protocol
        stopped_by = asyncio.run(serve_protocol(args, policy, ready))
    finally:
        policy.close()
    print(f"rynn-edge serve: {stopped_by}: stopped", file=sys.stderr, flush=True)
    return 0
