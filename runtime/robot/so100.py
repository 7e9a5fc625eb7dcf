"""The LeRobot SO100 follower arm: six STS3215 servos, its register map and the setup sequence.

`bus` is a `rynn_edge.kernels` Bus (unicast read/write with status replies, bounded retries).
Register writes here are unicast and checked, as LeRobot's configure step does; the hot loop is C.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rynn_edge.kernels.feetech import decode_sign_magnitude, encode_sign_magnitude
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.calibration import MotorCalibration, NormMode

# name -> servo id, in the model's state/action order
MOTORS: dict[str, int] = {
    "shoulder_pan": 1,
    "shoulder_lift": 2,
    "elbow_flex": 3,
    "wrist_flex": 4,
    "wrist_roll": 5,
    "gripper": 6,
}
MOTOR_NAMES: dict[int, str] = {sid: name for name, sid in MOTORS.items()}
# Units the RynnVLA-002 SO100 data uses: joints in degrees (LeRobot DEGREES mode), gripper 0-100.
NORM_MODES: dict[str, NormMode] = {name: NormMode.DEGREES for name in MOTORS}
NORM_MODES["gripper"] = NormMode.RANGE_0_100
FULL_TURN_MOTORS = ("wrist_roll",)  # LeRobot records no range for it: 0..4095
STS3215_MODEL = 777
RESOLUTION = 4096
HALF_TURN = (RESOLUTION - 1) // 2  # 2047: LeRobot's half-turn homing target

RELATIVE_JOINTS = 5  # actions 0-4 are offsets from the query-time state; the gripper (5) is absolute


def goals(actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Absolute position goals ``[T, 6]`` from predicted actions ``[T, 6]`` and the query-time state."""
    actions = np.asarray(actions, dtype=np.float64)
    state = np.asarray(state, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != len(MOTORS) or state.shape != (len(MOTORS),):
        raise UserError(f"SO100 expects actions [T, 6] and state [6]; got {actions.shape} and {state.shape}")
    out = actions.copy()
    out[:, :RELATIVE_JOINTS] += state[:RELATIVE_JOINTS]
    return out


# STS3215 control table: name -> (address, size)
FIRMWARE_MAJOR = (0, 1)
FIRMWARE_MINOR = (1, 1)
MODEL_NUMBER = (3, 2)
RETURN_DELAY_TIME = (7, 1)
MIN_POSITION_LIMIT = (9, 2)
MAX_POSITION_LIMIT = (11, 2)
MAX_TORQUE_LIMIT = (16, 2)
PHASE = (18, 1)
P_COEFFICIENT = (21, 1)
D_COEFFICIENT = (22, 1)
I_COEFFICIENT = (23, 1)
PROTECTION_CURRENT = (28, 2)
HOMING_OFFSET = (31, 2)
OPERATING_MODE = (33, 1)
OVERLOAD_TORQUE = (36, 1)
TORQUE_ENABLE = (40, 1)
ACCELERATION = (41, 1)
GOAL_POSITION = (42, 2)
LOCK = (55, 1)
PRESENT_POSITION = (56, 2)
STATUS = (65, 1)
MAXIMUM_ACCELERATION = (85, 1)

# Status / ERR byte bits that mean the servo protected itself (LeRobot's and the loop's fault mask).
ERROR_BITS = {0x01: "voltage", 0x04: "overheat", 0x08: "overcurrent", 0x20: "overload"}
FAULT_BITS = sum(ERROR_BITS)

HOMING_SIGN_BIT = 11
PHASE_MULTI_TURN_BIT = 0x10


class ServoFaultError(UserError):
    """A servo reports an overload/overheat/voltage/over-current bit: `run` exits servo_error (4)."""


def describe_error(error: int) -> str:
    return "+".join(name for bit, name in ERROR_BITS.items() if error & bit) or "none"


@dataclass(frozen=True)
class Gains:
    p: int = 16
    i: int = 0
    d: int = 32


class Arm:
    """Register-level access to the arm's servos by motor name, over a `rynn_edge.kernels` Bus.

    Every access expects a status reply (the Bus retries); a servo that reports a protection bit
    (overload, overheat, ...) during setup stops it: the arm must be checked and power-cycled.
    """

    def __init__(self, bus, motors: dict[str, int] = MOTORS):
        self.bus = bus
        self.motors = motors

    def _check(self, name: str, error: int) -> None:
        if error & FAULT_BITS:
            raise ServoFaultError(
                f"{name} (id {self.motors[name]}) reports error bits 0x{error:02x} "
                f"({describe_error(error)}); check the joint, then power-cycle the arm"
            )

    def read(self, name: str, reg: tuple[int, int]) -> int:
        data, error = self.bus.read(self.motors[name], reg[0], reg[1])
        self._check(name, error)
        return int.from_bytes(data, "little")

    def write(self, name: str, reg: tuple[int, int], value: int) -> None:
        self._check(name, self.bus.write(self.motors[name], reg[0], value.to_bytes(reg[1], "little")))

    def check_models(self) -> None:
        """Every servo answers, is an STS3215, and all run the same firmware (LeRobot's handshake)."""
        missing = []
        for name, sid in self.motors.items():
            try:
                self.bus.ping(sid)
            except TimeoutError:
                missing.append(f"{name} (id {sid})")
        if missing:
            raise UserError(f"no answer from {', '.join(missing)}: check power, cable, --port and --baud")
        wrong = {name: m for name in self.motors if (m := self.read(name, MODEL_NUMBER)) != STS3215_MODEL}
        if wrong:
            raise UserError(f"not STS3215 (model {STS3215_MODEL}): {wrong}")
        firmware = {(self.read(n, FIRMWARE_MAJOR), self.read(n, FIRMWARE_MINOR)) for n in self.motors}
        if len(firmware) > 1:
            raise UserError(f"servos run different firmware versions {sorted(firmware)}; make them match")

    def torque(self, enable: bool, names: Sequence[str] | None = None) -> None:
        # LeRobot's order: unlock the EPROM after disabling torque, lock it again after enabling.
        for name in names or self.motors:
            self.write(name, TORQUE_ENABLE, int(enable))
            self.write(name, LOCK, int(enable))

    def read_calibration(self, name: str) -> tuple[int, int, int]:
        """(homing_offset, min limit, max limit) as stored in the servo."""
        return (
            decode_sign_magnitude(self.read(name, HOMING_OFFSET), HOMING_SIGN_BIT),
            self.read(name, MIN_POSITION_LIMIT),
            self.read(name, MAX_POSITION_LIMIT),
        )

    def write_calibration(self, name: str, cal: MotorCalibration) -> None:
        self.write(name, HOMING_OFFSET, encode_sign_magnitude(cal.homing_offset, HOMING_SIGN_BIT))
        self.write(name, MIN_POSITION_LIMIT, cal.range_min)
        self.write(name, MAX_POSITION_LIMIT, cal.range_max)

    def configure(self, gains: Gains = Gains()) -> None:
        """LeRobot's SO100 configure step. Torque must be off."""
        for name in self.motors:
            self.write(name, RETURN_DELAY_TIME, 0)
            self.write(name, MAXIMUM_ACCELERATION, 254)
            self.write(name, ACCELERATION, 254)
            phase = self.read(name, PHASE)
            if phase & PHASE_MULTI_TURN_BIT:
                self.write(name, PHASE, phase & ~PHASE_MULTI_TURN_BIT)
            self.write(name, OPERATING_MODE, 0)
            self.write(name, P_COEFFICIENT, gains.p)
            self.write(name, I_COEFFICIENT, gains.i)
            self.write(name, D_COEFFICIENT, gains.d)
        if "gripper" in self.motors:
            # a stalled gripper otherwise overheats/overloads (LeRobot #1809)
            self.write("gripper", MAX_TORQUE_LIMIT, 500)
            self.write("gripper", PROTECTION_CURRENT, 250)
            self.write("gripper", OVERLOAD_TORQUE, 25)

    def present_positions(self) -> dict[str, int]:
        return {name: decode_sign_magnitude(self.read(name, PRESENT_POSITION), 15) for name in self.motors}


def setup(arm: Arm, calib: dict[str, MotorCalibration], gains: Gains = Gains()) -> list[str]:
    """Handshake, calibration check/write, configure, then torque on holding the present pose.

    Returns the names of motors whose stored calibration differed from the file (and was rewritten).
    """
    arm.check_models()
    arm.torque(False)
    rewritten = []
    for name in arm.motors:
        cal = calib[name]
        if arm.read_calibration(name) != (cal.homing_offset, cal.range_min, cal.range_max):
            arm.write_calibration(name, cal)
            rewritten.append(name)
    arm.configure(gains)
    for name, pos in arm.present_positions().items():
        arm.write(name, GOAL_POSITION, encode_sign_magnitude(pos, 15))
    arm.torque(True)
    return rewritten


def simulator_calibration() -> dict[str, MotorCalibration]:
    """A calibration for the simulated arm (`rynn-edge sim`): every joint homed at the factory centre
    2048 (offset 0), ±90° of travel, wrist_roll a full turn, gripper from 2048 (closed) over 90°."""
    calib = {name: MotorCalibration(sid, 0, 0, 1024, 3072) for name, sid in MOTORS.items()}
    calib["wrist_roll"] = MotorCalibration(MOTORS["wrist_roll"], 0, 0, 0, 4095)
    calib["gripper"] = MotorCalibration(MOTORS["gripper"], 0, 0, 2048, 3072)
    return calib
