"""`rynn-edge calibrate`: record a LeRobot calibration file for a new SO100 arm.

LeRobot's procedure: torque off; the user poses the arm in the middle of its range; each servo's
Homing_Offset is set so that pose reads 2047 (half a turn); the user then moves every joint through
its whole range while positions are recorded (wrist_roll is a full-turn joint: 0..4095); offsets and
ranges are written to the servos and to the JSON file. `--yes` and `--record-seconds` replace the
two "press Enter" steps so the procedure can be scripted.
"""

from __future__ import annotations

import argparse
import select
import sys
import time

from rynn_edge.runtime.argtypes import Number, output_file, positive
from rynn_edge.runtime.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="servo bus serial port, e.g. /dev/ttyACM0")
    parser.add_argument("--robot", choices=("so100",), default="so100")
    parser.add_argument("-o", "--output", type=output_file, required=True, help="calibration JSON to write")
    parser.add_argument("--baud", type=Number(int, 9600, 4_000_000), default=1_000_000, help="bit/s")
    parser.add_argument("--yes", action="store_true", help="do not wait for Enter once the arm is mid-range")
    parser.add_argument(
        "--record-seconds",
        type=positive(float),
        metavar="SECONDS",
        help="record the ranges of motion for SECONDS instead of until Enter",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def _enter_pressed() -> bool:
    if select.select([sys.stdin], [], [], 0)[0]:
        sys.stdin.readline()
        return True
    return False


def _half_turn_homing(arm, names: list[str]) -> dict[str, int]:
    from rynn_edge.kernels import feetech
    from rynn_edge.runtime.robot import so100
    from rynn_edge.runtime.robot.calibration import MotorCalibration

    offsets = {}
    for name in names:  # start from the identity frame, as LeRobot's reset_calibration does
        arm.write_calibration(name, MotorCalibration(arm.motors[name], 0, 0, 0, so100.RESOLUTION - 1))
    for name, pos in arm.present_positions().items():
        offset = pos - so100.HALF_TURN
        if abs(offset) > 2047:
            raise UserError(
                f"{name} reads {pos}, too close to the end of the turn for a homing offset; move it "
                "toward the middle of its range and run calibrate again"
            )
        arm.write(name, so100.HOMING_OFFSET, feetech.encode_sign_magnitude(offset, so100.HOMING_SIGN_BIT))
        offsets[name] = offset
    return offsets


def _record_ranges(arm, names: list[str], seconds: float | None) -> tuple[dict[str, int], dict[str, int]]:
    from rynn_edge.kernels import feetech
    from rynn_edge.runtime.robot import so100

    ids = [arm.motors[n] for n in names]
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    end = time.monotonic() + seconds if seconds is not None else None
    live = sys.stdout.isatty()
    while True:
        for name, (data, _error) in zip(names, arm.bus.sync_read(ids, *so100.PRESENT_POSITION), strict=True):
            if data is None:
                continue  # missed this round; the next sweep reads it again
            pos = feetech.decode_u16(data)
            lo[name], hi[name] = min(lo.get(name, pos), pos), max(hi.get(name, pos), pos)
        if live:
            table = "  ".join(f"{n} {lo.get(n, '-')}..{hi.get(n, '-')}" for n in names)
            print(f"\r{table}", end="", flush=True)
        if (end is not None and time.monotonic() >= end) or (end is None and _enter_pressed()):
            break
        time.sleep(0.02)
    if live:
        print()
    unread = [n for n in names if n not in lo]
    if unread:
        raise UserError(f"no position read from {', '.join(unread)} while recording; check the cable")
    return lo, hi


def run(args: argparse.Namespace) -> int:
    from rynn_edge.kernels import feetech
    from rynn_edge.runtime.robot import so100
    from rynn_edge.runtime.robot.calibration import MotorCalibration, save_calibration

    if args.output.exists() and not args.force:
        raise UserError(f"{args.output} exists; pass --force to replace it")
    try:
        bus = feetech.Bus(args.port, args.baud, 10.0, 3)
    except OSError as err:
        raise UserError(f"cannot open the servo bus: {err}") from None
    with bus:
        arm = so100.Arm(bus)
        arm.check_models()
        arm.torque(False)
        for name in arm.motors:
            arm.write(name, so100.OPERATING_MODE, 0)
        if not args.yes:
            input("Move the arm to the middle of its range of motion, then press Enter... ")
        offsets = _half_turn_homing(arm, list(arm.motors))
        swept = [n for n in arm.motors if n not in so100.FULL_TURN_MOTORS]
        how = f"for {args.record_seconds:g} s" if args.record_seconds is not None else "until you press Enter"
        print(f"Recording ranges {how}: move {', '.join(swept)} through their whole range.", flush=True)
        lo, hi = _record_ranges(arm, swept, args.record_seconds)
        still = [n for n in swept if lo[n] == hi[n]]
        if still:
            raise UserError(f"{', '.join(still)} did not move while recording; move every joint end to end")
        calib = {}
        for name, sid in arm.motors.items():
            low, high = (0, so100.RESOLUTION - 1) if name in so100.FULL_TURN_MOTORS else (lo[name], hi[name])
            calib[name] = MotorCalibration(sid, 0, offsets[name], low, high)
            arm.write_calibration(name, calib[name])
    save_calibration(args.output, calib)
    for name, cal in calib.items():
        print(
            f"  {name:14s} id {cal.id}  homing_offset {cal.homing_offset:5d}"
            f"  range {cal.range_min}..{cal.range_max}"
        )
    print(f"calibration written to {args.output} (torque is off)")
    return 0
