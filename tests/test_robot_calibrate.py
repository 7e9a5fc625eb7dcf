"""`rynn-edge calibrate` against the simulator. A second bus master stands in for the user's hand: it
moves joints with broadcast SYNC_WRITEs (no replies, so it never disturbs the calibrate process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from rynn_edge.kernels import feetech
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.sim import launch

INITIAL = [1500, 2600, 2047, 1800, 3000, 2200]
SWEPT = [1, 2, 3, 4, 6]  # wrist_roll (5) is a full-turn joint and is not swept


def hand(fd: int, addr: int, length: int, value: int) -> None:
    os.write(
        fd, feetech.encode_sync_write(addr, length, {i: value.to_bytes(length, "little") for i in SWEPT})
    )


def calibrate(port: str, out, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rynn_edge.runtime.cli", "calibrate", "--port", port, "--robot", "so100",
         "-o", str(out), "--yes", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_calibrate_homes_mid_pose_and_records_ranges(tmp_path):
    out = tmp_path / "so100.json"
    with launch(initial_positions=INITIAL) as port:
        proc = calibrate(port, out, "--record-seconds", "2.5")
        assert "Recording ranges" in proc.stdout.readline()
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        try:  # the "hand": sweep each joint 500 below and 600 above its middle pose (2047 after homing)
            hand(fd, 40, 1, 1)
            for goal in (1547, 2647, 2047):
                hand(fd, 42, 2, goal)
                time.sleep(0.5)
            hand(fd, 40, 1, 0)
        finally:
            os.close(fd)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        servos = {s["id"]: s for s in port.state()["servos"]}
        with feetech.Bus(port) as bus:
            limits = {i: [int.from_bytes(bus.read(i, a, 2)[0], "little") for a in (9, 11)] for i in servos}
    calib = json.loads(out.read_text())
    for (name, sid), initial in zip(so100.MOTORS.items(), INITIAL, strict=True):
        entry = calib[name]
        assert entry["id"] == sid and entry["drive_mode"] == 0
        assert entry["homing_offset"] == initial - 2047  # the mid pose now reads 2047
        expected = [0, 4095] if name == "wrist_roll" else [1547, 2647]
        assert [entry["range_min"], entry["range_max"]] == expected
        assert limits[sid] == expected and servos[sid]["homing_offset"] == initial - 2047
        assert servos[sid]["torque"] == 0
    assert "calibration written" in stdout


def test_calibrate_refuses_joints_that_never_moved(tmp_path):
    out = tmp_path / "so100.json"
    with launch(initial_positions=INITIAL) as port:
        proc = calibrate(port, out, "--record-seconds", "0.3")
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, gripper did not move" in stderr
    assert not out.exists()


def test_calibrate_refuses_a_pose_at_the_end_of_the_turn(tmp_path):
    with launch(initial_positions=[4095] + INITIAL[1:]) as port:
        proc = calibrate(port, tmp_path / "so100.json", "--record-seconds", "0.3")
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "shoulder_pan reads 4095" in stderr
