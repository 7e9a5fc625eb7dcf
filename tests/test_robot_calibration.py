"""LeRobot calibration files and unit conversion, checked against values worked out by hand from
LeRobot's formulas (DEGREES uses 4095 and the mid-range zero; the inverse truncates with int())."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.calibration import (
    JointMap,
    MotorCalibration,
    NormMode,
    load_calibration,
    normalize,
    save_calibration,
    unnormalize,
)
from rynn_edge.runtime.robot.so100 import MOTORS, NORM_MODES

# A calibration file as LeRobot (draccus, indent 4) writes it for an SO100 follower.
LEROBOT_FILE = """{
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1471, "range_min": 767, "range_max": 3440},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 1140, "range_min": 805, "range_max": 3259},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": -1004, "range_min": 894, "range_max": 3094},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": 1017, "range_min": 863, "range_max": 3206},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": -1451, "range_min": 0, "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 1223, "range_min": 2031, "range_max": 3489}
}
"""

CAL = MotorCalibration(id=1, drive_mode=0, homing_offset=0, range_min=1000, range_max=3000)
CAL_REV = MotorCalibration(id=1, drive_mode=1, homing_offset=0, range_min=1000, range_max=3000)


def test_degrees_uses_4095_and_mid_range_zero():
    assert normalize(2000, CAL, NormMode.DEGREES) == 0.0
    assert normalize(2100, CAL, NormMode.DEGREES) == pytest.approx(100 * 360 / 4095, abs=0)
    # no clamping and no drive_mode in DEGREES
    assert normalize(500, CAL, NormMode.DEGREES) == pytest.approx(-1500 * 360 / 4095, abs=0)
    assert normalize(2100, CAL_REV, NormMode.DEGREES) == normalize(2100, CAL, NormMode.DEGREES)


def test_inverse_truncates_like_int():
    assert unnormalize(0.05, CAL, NormMode.DEGREES) == 2000  # 2000.56875 -> 2000
    assert unnormalize(-0.05, CAL, NormMode.DEGREES) == 1999  # 1999.43125 -> 1999
    assert unnormalize(33.3333, CAL, NormMode.RANGE_M100_100) == 2333
    assert unnormalize(25.97, CAL, NormMode.RANGE_0_100) == 1519  # 1519.4 -> 1519
    # int() truncates toward zero, so a negative tick value rounds up, not down
    low = MotorCalibration(id=1, drive_mode=0, homing_offset=0, range_min=0, range_max=100)
    assert unnormalize(-0.5, low, NormMode.DEGREES) == int(-0.5 * 4095 / 360 + 50) == 44


def test_every_tick_round_trips_in_degrees():
    raw = np.arange(0, 4096)
    cal = MotorCalibration(id=1, drive_mode=0, homing_offset=0, range_min=767, range_max=3440)
    back = [unnormalize(normalize(int(r), cal, NormMode.DEGREES), cal, NormMode.DEGREES) for r in raw]
    assert back == raw.tolist()


def test_range_modes_clamp_and_drive_mode():
    assert normalize(1500, CAL, NormMode.RANGE_M100_100) == -50.0
    assert normalize(1500, CAL_REV, NormMode.RANGE_M100_100) == 50.0
    assert normalize(500, CAL, NormMode.RANGE_M100_100) == -100.0
    assert normalize(9000, CAL, NormMode.RANGE_0_100) == 100.0
    assert normalize(1500, CAL_REV, NormMode.RANGE_0_100) == 75.0
    assert unnormalize(-50.0, CAL, NormMode.RANGE_M100_100) == 1500
    assert unnormalize(50.0, CAL_REV, NormMode.RANGE_M100_100) == 1500
    assert unnormalize(150.0, CAL, NormMode.RANGE_0_100) == 3000
    assert unnormalize(75.0, CAL_REV, NormMode.RANGE_0_100) == 1500


def test_reads_lerobot_file_and_writes_it_back_identically(tmp_path):
    path = tmp_path / "so100.json"
    path.write_text(LEROBOT_FILE)
    calib = load_calibration(path, list(MOTORS))
    assert calib["gripper"] == MotorCalibration(6, 0, 1223, 2031, 3489)
    out = tmp_path / "out.json"
    save_calibration(out, calib)
    assert json.loads(out.read_text()) == json.loads(LEROBOT_FILE)
    assert list(json.loads(out.read_text())["shoulder_pan"]) == [
        "id",
        "drive_mode",
        "homing_offset",
        "range_min",
        "range_max",
    ]


def test_joint_map_vectors_follow_model_order(tmp_path):
    path = tmp_path / "so100.json"
    path.write_text(LEROBOT_FILE)
    joints = JointMap(load_calibration(path, list(MOTORS)), NORM_MODES)
    assert joints.ids == [1, 2, 3, 4, 5, 6]
    raw = np.array([2103, 2032, 1994, 2034, 2047, 2760])
    units = joints.to_units(raw)
    assert units[0] == pytest.approx((2103 - (767 + 3440) / 2) * 360 / 4095)
    assert units[5] == pytest.approx((2760 - 2031) / (3489 - 2031) * 100)  # gripper 0-100
    assert joints.to_raw(units).tolist() == raw.tolist()
    lower, upper = joints.raw_limits()
    assert lower.tolist() == [767, 805, 894, 863, 0, 2031] and upper[4] == 4095


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"range_min": 3000, "range_max": 3000}, "range_min"),
        ({"homing_offset": 2100}, "2047"),
        ({"range_max": "4095"}, "integer"),
    ],
)
def test_bad_files_name_the_motor_and_the_problem(tmp_path, patch, message):
    data = json.loads(LEROBOT_FILE)
    data["elbow_flex"].update(patch)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"elbow_flex.*{message}|{message}.*elbow_flex"):
        load_calibration(path, list(MOTORS))


def test_missing_motor_and_missing_file(tmp_path):
    data = json.loads(LEROBOT_FILE)
    del data["wrist_roll"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="wrist_roll"):
        load_calibration(path, list(MOTORS))
    with pytest.raises(UserError, match="rynn-edge calibrate"):
        load_calibration(tmp_path / "none.json", list(MOTORS))
