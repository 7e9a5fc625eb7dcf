"""`rynn-edge doctor`: is this robot computer ready to drive the arm? One table, a verdict and a fix per row.

Exit code: 0 when no row fails, else the number of failed rows (warnings and skipped rows do not count).
"""

from __future__ import annotations

import argparse
import json

from rynn_edge.runtime.argtypes import Number, positive

VERDICT_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "-"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help="artifact folders to check against")
    parser.add_argument("--port", help="the servo bus serial port, e.g. /dev/ttyACM0 (or the sim's pty)")
    parser.add_argument("--baud", type=Number(int, 9600, 4_000_000), default=1_000_000, help="bit/s")
    parser.add_argument(
        "--calibration", help="LeRobot calibration file: the servos' position limits are compared with it"
    )
    parser.add_argument(
        "--camera",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="a camera to open and time (device index, /dev/videoN, URL, video file, synthetic); repeat",
    )
    parser.add_argument(
        "--camera-size", metavar="WxH", help="the frame size the cameras must deliver, e.g. 640x480"
    )
    parser.add_argument(
        "--scan", action="store_true", help="list serial ports with servos and cameras that open"
    )
    parser.add_argument("--episode-log-dir", default=".", help="where the episode log goes (default .)")
    parser.add_argument(
        "--duration", type=positive(float), default=600.0, help="planned episode length, s (default 600)"
    )
    parser.add_argument(
        "--loop-rate", type=positive(float), default=100.0, help="planned servo loop rate, Hz (default 100)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def _camera_size(text: str | None) -> tuple[int, int] | None:
    from rynn_edge.runtime.errors import UserError

    if text is None:
        return None
    width, sep, height = text.partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise UserError(f"--camera-size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480")
    return int(width), int(height)


def rows(args: argparse.Namespace) -> list:
    from rynn_edge.kernels import feetech
    from rynn_edge.runtime.backends.artifact import Artifact
    from rynn_edge.runtime.bench import device_fit
    from rynn_edge.runtime.robot import camera_probe, health, servo_probe, so100
    from rynn_edge.runtime.robot.calibration import load_calibration
    from rynn_edge.runtime.robot.cameras import parse_camera_specs

    # Refuse bad input before probing anything.
    size = _camera_size(args.camera_size)
    cameras = parse_camera_specs(args.camera, check_sources=False)
    calibration = load_calibration(args.calibration, list(so100.MOTORS)) if args.calibration else None
    artifacts = [Artifact.read(path) for path in args.artifacts]

    device = device_fit.this_device()
    out = device_fit.software_rows(device)
    for artifact in artifacts:
        out += [device_fit.engine_row(artifact, device), device_fit.memory_row(artifact, device)]
    out += health.jetson_rows()
    out += [health.governor_row(), health.realtime_row()]
    if args.port:
        facts = servo_probe.port_facts(args.port)
        out += servo_probe.port_rows(facts)
        if facts.readable_writable:
            try:
                with feetech.Bus(args.port, args.baud, servo_probe.BUS_TIMEOUT_MS, 1) as bus:
                    out += servo_probe.servo_rows(bus, calibration)
            except OSError as err:
                out.append(health.Row("servos", health.FAIL, f"cannot open {args.port}: {err}", "see --port"))
    out += [camera_probe.camera_row(name, source, size) for name, source in cameras]
    out.append(health.disk_row(args.episode_log_dir, args.duration, args.loop_rate))
    if args.scan:
        ports = servo_probe.candidate_ports() + ([args.port] if args.port else [])
        out += servo_probe.scan_ports(sorted(set(ports)), args.baud)
        out += camera_probe.scan_cameras()
    return out


def table(found: list) -> str:
    width = max(len(r.check) for r in found)
    lines = []
    for r in found:
        lines.append(f"{VERDICT_MARK[r.verdict]:>4}  {r.check:<{width}}  {r.found}")
        if r.hint:
            lines.append(f"{'':>4}  {'':<{width}}  -> {r.hint}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    found = rows(args)
    failures = sum(r.verdict == "fail" for r in found)
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in found], "failures": failures}, indent=2))
    else:
        print(table(found))
        print(f"\n{failures} check(s) failed" if failures else "\nall checks passed")
    return failures
