"""The simulator seen through the official Feetech SDK (scservo_sdk 1.0.0) on its pty, as LeRobot would."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import serial
from scservo_sdk import (
    COMM_RX_TIMEOUT,
    COMM_SUCCESS,
    GroupSyncRead,
    GroupSyncWrite,
    PacketHandler,
    PortHandler,
)
from sdk_port import Port

from rynn_edge.runtime.sim import control_table as ct
from rynn_edge.runtime.sim import launch
from rynn_edge.runtime.sim import protocol as p
from rynn_edge.runtime.sim.servo import MAX_SPEED

IDS = (1, 2, 3, 4, 5, 6)


@pytest.fixture
def sim() -> Iterator[str]:
    with launch() as port:
        yield port


@pytest.fixture
def bus(sim: str) -> Iterator[tuple[Port, PacketHandler]]:
    port = Port(sim)
    assert port.openPort()
    yield port, PacketHandler(0)
    port.closePort()


def ok(result: tuple) -> int:
    *value, comm, error = result
    assert comm == COMM_SUCCESS and error == 0, (comm, error)
    return value[0] if value else 0


def positions(port: PortHandler, ph: PacketHandler, ids=IDS, address: int = ct.PRESENT_POSITION) -> list[int]:
    group = GroupSyncRead(port, ph, address, 2)
    for i in ids:
        group.addParam(i)
    assert group.txRxPacket() == COMM_SUCCESS
    return [group.getData(i, address, 2) for i in ids]


def sync_write_goals(port: PortHandler, ph: PacketHandler, goals: dict[int, int]) -> None:
    group = GroupSyncWrite(port, ph, ct.GOAL_POSITION, 2)
    for i, goal in goals.items():
        group.addParam(i, list(goal.to_bytes(2, "little")))
    assert group.txPacket() == COMM_SUCCESS


def test_ping_reports_model_777_and_equal_firmware(bus) -> None:
    port, ph = bus
    for i in IDS:
        assert ok(ph.ping(port, i)) == ct.MODEL_STS3215
    assert len({(ok(ph.read1ByteTxRx(port, i, 0)), ok(ph.read1ByteTxRx(port, i, 1))) for i in IDS}) == 1
    _, comm, _ = ph.ping(port, 9)
    assert comm == COMM_RX_TIMEOUT


def test_register_read_write_and_sign_magnitude(bus) -> None:
    port, ph = bus
    assert ok(ph.read1ByteTxRx(port, 3, ct.RETURN_DELAY_TIME)) == 250
    assert ok(ph.read2ByteTxRx(port, 3, ct.MAX_POSITION_LIMIT)) == 4095
    ok(ph.write2ByteTxRx(port, 3, ct.GOAL_VELOCITY, ct.encode_signed(-100, 15)))
    assert ok(ph.read2ByteTxRx(port, 3, ct.GOAL_VELOCITY)) == 0x8064
    # Homing offset -709 (sign bit 11): Present = Actual - offset.
    ok(ph.write2ByteTxRx(port, 3, ct.HOMING_OFFSET, ct.encode_signed(-709, 11)))
    assert ok(ph.read2ByteTxRx(port, 3, ct.HOMING_OFFSET)) == 0x0AC5
    assert ok(ph.read2ByteTxRx(port, 3, ct.PRESENT_POSITION)) == 2048 + 709
    # Read-only registers ignore writes (the status reply still comes).
    ok(ph.write2ByteTxRx(port, 3, ct.PRESENT_POSITION, 5))
    ok(ph.write2ByteTxRx(port, 3, ct.MODEL_NUMBER, 5))
    assert ok(ph.read2ByteTxRx(port, 3, ct.PRESENT_POSITION)) == 2048 + 709
    assert ok(ph.read2ByteTxRx(port, 3, ct.MODEL_NUMBER)) == 777
    # Torque_Enable = 128 makes the present position read 2048 by rewriting the offset.
    ok(ph.write1ByteTxRx(port, 3, ct.TORQUE_ENABLE, 128))
    assert ok(ph.read2ByteTxRx(port, 3, ct.PRESENT_POSITION)) == 2048
    assert ok(ph.read2ByteTxRx(port, 3, ct.HOMING_OFFSET)) == 0


def test_sync_write_goals_converge_at_bounded_speed_and_torque_off_stops(bus, sim) -> None:
    port, ph = bus
    for i in IDS:
        ok(ph.write1ByteTxRx(port, i, ct.TORQUE_ENABLE, 1))
    ok(ph.write2ByteTxRx(port, 2, ct.GOAL_VELOCITY, 1000))  # slower servo
    ok(ph.write2ByteTxRx(port, 6, ct.MAX_POSITION_LIMIT, 2500))  # its goal gets clamped
    goals = {i: 2048 + 800 if i != 4 else 2048 - 800 for i in IDS}
    t0 = time.monotonic()
    sync_write_goals(port, ph, goals)
    samples = []  # (host time before the read, host time after it, positions)
    while time.monotonic() - t0 < 0.6:
        before = time.monotonic()
        pos = positions(port, ph)
        samples.append((before, time.monotonic(), pos))
        time.sleep(0.01)
    start, _, first = samples[0]
    for _, end, pos in samples[1:]:
        for a, b, limit in zip(first, pos, [MAX_SPEED, 1000] + [MAX_SPEED] * 4, strict=True):
            assert abs(b - a) <= limit * (end - start) + 1
    final = samples[-1][2]
    assert final[0] == final[2] == 2848 and final[3] == 1248 and final[5] == 2500
    assert 2048 + 300 < final[1] < 2848  # 1000 step/s: still on its way
    moving = ok(ph.read1ByteTxRx(port, 2, ct.MOVING))
    load = ct.decode_signed(ok(ph.read2ByteTxRx(port, 2, ct.PRESENT_LOAD)), 10)
    assert moving == 1 and load != 0
    assert 50 <= ok(ph.read1ByteTxRx(port, 2, ct.PRESENT_VOLTAGE)) <= 140
    assert 20 <= ok(ph.read1ByteTxRx(port, 2, ct.PRESENT_TEMPERATURE)) < 70
    ok(ph.write1ByteTxRx(port, 2, ct.TORQUE_ENABLE, 0))
    stopped = positions(port, ph, ids=(2,))
    time.sleep(0.15)
    assert positions(port, ph, ids=(2,)) == stopped
    assert ok(ph.read1ByteTxRx(port, 2, ct.MOVING)) == 0
    servo2 = sim.servo(2)
    assert servo2["torque"] == 0 and servo2["present"] == stopped[0] and servo2["goal"] == 2848


def test_reg_write_waits_for_action_and_broadcast_write_is_silent(bus) -> None:
    port, ph = bus
    for i in IDS:
        ok(ph.write1ByteTxRx(port, i, ct.TORQUE_ENABLE, 1))
    ok(ph.regWriteTxRx(port, 1, ct.GOAL_POSITION, 2, list((2100).to_bytes(2, "little"))))
    assert ok(ph.read1ByteTxRx(port, 1, ct.REG_WRITE_PENDING)) == 1
    time.sleep(0.05)
    assert ok(ph.read2ByteTxRx(port, 1, ct.PRESENT_POSITION)) == 2048
    ph.action(port, p.BROADCAST_ID)
    time.sleep(0.1)
    assert ok(ph.read1ByteTxRx(port, 1, ct.REG_WRITE_PENDING)) == 0
    assert ok(ph.read2ByteTxRx(port, 1, ct.PRESENT_POSITION)) == 2100
    assert ph.write1ByteTxOnly(port, p.BROADCAST_ID, ct.ACCELERATION, 50) == COMM_SUCCESS
    assert port.ser.read(64) == b""  # broadcast: nobody answers
    assert {ok(ph.read1ByteTxRx(port, i, ct.ACCELERATION)) for i in IDS} == {50}


def test_sync_read_replies_in_request_order_over_a_raw_serial_port(sim) -> None:
    with serial.Serial(sim, 1_000_000, timeout=0.5) as ser:
        ser.write(
            p.encode_instruction(p.BROADCAST_ID, p.SYNC_READ, bytes([ct.PRESENT_POSITION, 2, 5, 1, 9, 3]))
        )
        data = ser.read(3 * 8)
        assert [data[k + 2] for k in range(0, 24, 8)] == [5, 1, 3]
        assert data[:8] == p.encode_status(5, 0, (2048).to_bytes(2, "little"))
        # Status level 0: a unicast WRITE is executed without a reply; READ still answers.
        ser.write(p.encode_instruction(1, p.WRITE, bytes([ct.RESPONSE_STATUS_LEVEL, 0])))
        ser.write(p.encode_instruction(1, p.READ, bytes([ct.RESPONSE_STATUS_LEVEL, 1])))
        assert ser.read(7) == p.encode_status(1, 0, b"\x00")


def test_cli_publishes_a_raw_pty_link_and_cleans_up_on_sigint(tmp_path) -> None:
    link = tmp_path / "dev" / "ttySO100"
    cmd = [sys.executable, "-m", "rynn_edge.runtime.cli", "sim", "--link", str(link), "--ids", "1,2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"sim ready: {link}"
        assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)
        port = Port(str(link))
        assert port.openPort()
        assert ok(PacketHandler(0).ping(port, 2)) == 777
        port.closePort()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert not link.exists() and not link.is_symlink()
    finally:
        proc.kill()
        proc.wait()


def test_cli_rejects_a_bad_fault_spec() -> None:
    cmd = [sys.executable, "-m", "rynn_edge.runtime.sim", "--fault", "drop:7"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "rate '7'" in result.stderr


def test_launch_initial_positions_subset_of_ids_and_clean_sigterm() -> None:
    with launch(ids=(2, 5), initial_positions=(1000, 3000.4)) as sim:
        port = Port(sim)
        assert port.openPort()
        ph = PacketHandler(0)
        assert positions(port, ph, ids=(2, 5)) == [1000, 3000]
        assert ok(ph.read2ByteTxRx(port, 5, ct.GOAL_POSITION)) == 3000  # no jump when torque comes on
        ok(ph.write1ByteTxRx(port, 5, ct.TORQUE_ENABLE, 1))
        assert ph.ping(port, 1)[1] == COMM_RX_TIMEOUT
        port.closePort()
        assert [s["present"] for s in sim.state()["servos"]] == [1000, 3000]
        process = sim.process
    assert process.returncode == 0 and not os.path.lexists(sim)


def test_simulator_exits_with_the_process_that_launched_it(tmp_path) -> None:
    link = tmp_path / "ttySO100"
    script = (
        "import os, sys\n"
        "from rynn_edge.runtime.sim import launch\n"
        f"launch({str(link)!r}).__enter__()\n"
        "os._exit(0)  # no cleanup: the simulator must notice on its own\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=10)
    deadline = time.monotonic() + 3
    while os.path.lexists(link) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.lexists(link)


def test_torque_enable_after_a_homing_offset_holds_the_present_position(bus, sim) -> None:
    """LeRobot's calibration order: torque off, Homing_Offset written, torque on. The servo must not drive
    to the goal it had before (now 1000 steps away in the new frame): it holds where it stands."""
    port, ph = bus
    ok(ph.write1ByteTxRx(port, 1, ct.TORQUE_ENABLE, 0))
    ok(ph.write2ByteTxRx(port, 1, ct.HOMING_OFFSET, ct.encode_signed(-1000, ct.SIGN_BIT[ct.HOMING_OFFSET])))
    shifted = positions(port, ph, ids=(1,))[0]
    assert shifted == 3048 and ok(ph.read2ByteTxRx(port, 1, ct.GOAL_POSITION)) == 2048
    ok(ph.write1ByteTxRx(port, 1, ct.TORQUE_ENABLE, 1))
    assert ok(ph.read2ByteTxRx(port, 1, ct.GOAL_POSITION)) == shifted
    time.sleep(0.2)
    assert positions(port, ph, ids=(1,)) == [shifted]
    # Torque and goal in one write (addresses 40..43): the goal written is the one driven to.
    ok(ph.write1ByteTxRx(port, 2, ct.TORQUE_ENABLE, 0))
    ok(ph.writeTxRx(port, 2, ct.TORQUE_ENABLE, 4, [1, 0, *(2548).to_bytes(2, "little")]))
    time.sleep(0.4)
    assert positions(port, ph, ids=(2,)) == [2548] and sim.servo(2)["torque"] == 1
