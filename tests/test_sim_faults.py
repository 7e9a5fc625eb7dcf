"""Fault injection and wire timing, observed from the client side through the official SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import serial
from scservo_sdk import (
    COMM_RX_CORRUPT,
    COMM_RX_TIMEOUT,
    COMM_SUCCESS,
    GroupSyncRead,
    PacketHandler,
    PortHandler,
)
from sdk_port import Port

from rynn_edge.runtime.sim import control_table as ct
from rynn_edge.runtime.sim import launch
from rynn_edge.runtime.sim import protocol as p

IDS = (1, 2, 3, 4, 5, 6)


@contextmanager
def sdk(**sim_options) -> Iterator[tuple[Port, PacketHandler, str]]:
    with launch(**sim_options) as sim:
        port = Port(sim)
        assert port.openPort()
        try:
            yield port, PacketHandler(0), sim
        finally:
            port.closePort()


def read_results(port: PortHandler, ph: PacketHandler, n: int, servo_id: int = 1) -> list[int]:
    """Outcome of n single-request transactions (READ of the ID register)."""
    return [ph.read1ByteTxRx(port, servo_id, ct.ID)[1] for _ in range(n)]


def test_drop_every_third_request_times_out() -> None:
    with sdk(faults=["drop:1/3"]) as (port, ph, _):
        assert read_results(port, ph, 6) == [COMM_SUCCESS, COMM_SUCCESS, COMM_RX_TIMEOUT] * 2


def test_dropped_write_is_not_executed() -> None:
    with sdk(faults=["drop:1/2"]) as (port, ph, sim):
        assert read_results(port, ph, 1) == [COMM_SUCCESS]
        assert ph.write1ByteTxRx(port, 1, ct.TORQUE_ENABLE, 1)[0] == COMM_RX_TIMEOUT
        assert sim.servo(1)["torque"] == 0


def test_corrupt_reply_fails_the_checksum() -> None:
    with sdk(faults=["corrupt:1/2"]) as (port, ph, _):
        # ping() = PING + READ(model): the PING reply is intact, the READ reply corrupt.
        _, comm, _ = ph.ping(port, 2)
        assert comm == COMM_RX_CORRUPT
        data, comm, _ = ph.readTxRx(port, 2, ct.MODEL_NUMBER, 2)
        assert comm == COMM_SUCCESS and bytes(data) == (777).to_bytes(2, "little")


def test_truncated_reply_is_never_taken_for_an_answer() -> None:
    with sdk(faults=["truncate:1/2"]) as (port, ph, _):
        assert ph.read1ByteTxRx(port, 1, ct.ID)[1] == COMM_SUCCESS
        assert ph.read1ByteTxRx(port, 1, ct.ID)[1] in (COMM_RX_TIMEOUT, COMM_RX_CORRUPT)


def test_silent_servo_stops_answering_from_its_time() -> None:
    with sdk(faults=["silent:3@0.4"]) as (port, ph, sim):
        assert ph.ping(port, 3)[1] == COMM_SUCCESS
        time.sleep(0.45)
        assert ph.ping(port, 3)[1] == COMM_RX_TIMEOUT
        assert all(ph.ping(port, i)[1] == COMM_SUCCESS for i in IDS if i != 3)
        group = GroupSyncRead(port, ph, ct.PRESENT_POSITION, 2)
        for i in (1, 2, 3):
            group.addParam(i)
        assert group.txRxPacket() == COMM_RX_TIMEOUT
        assert [s["silent"] for s in sim.state()["servos"]] == [i == 3 for i in IDS]


def test_model_fault_makes_one_servo_report_another_model() -> None:
    with sdk(faults=["model:4:1060"]) as (port, ph, _):
        assert [ph.ping(port, i)[0] for i in IDS] == [ct.MODEL_STS3215] * 3 + [1060] + [ct.MODEL_STS3215] * 2
        assert ph.read2ByteTxRx(port, 4, ct.MODEL_NUMBER)[0] == 1060


def test_overload_latches_error_bit_and_drops_torque() -> None:
    with sdk(faults=["overload:2@0.3", "overheat:5"]) as (port, ph, sim):
        for i in IDS:
            assert ph.write1ByteTxRx(port, i, ct.TORQUE_ENABLE, 1) == (COMM_SUCCESS, 0 if i != 5 else 0x04)
        assert ph.read1ByteTxRx(port, 2, ct.TORQUE_ENABLE) == (1, COMM_SUCCESS, 0)
        time.sleep(0.35)
        assert ph.ping(port, 2) == (777, COMM_SUCCESS, ct.ERR_OVERLOAD)
        assert ph.read1ByteTxRx(port, 2, ct.STATUS) == (ct.ERR_OVERLOAD, COMM_SUCCESS, ct.ERR_OVERLOAD)
        # Torque stays off while the error is latched, whatever the host writes.
        assert ph.write1ByteTxRx(port, 2, ct.TORQUE_ENABLE, 1) == (COMM_SUCCESS, ct.ERR_OVERLOAD)
        assert ph.read1ByteTxRx(port, 2, ct.TORQUE_ENABLE)[0] == 0
        temperature, _, error = ph.read1ByteTxRx(port, 5, ct.PRESENT_TEMPERATURE)
        assert error == ct.ERR_OVERHEAT and temperature > 70
        torque = {s["id"]: s["torque"] for s in sim.state()["servos"]}
        assert torque == {1: 1, 2: 0, 3: 1, 4: 1, 5: 0, 6: 1}
        # REBOOT = power cycle clears the latch.
        assert ph.txRxPacket(port, list(p.encode_instruction(2, p.REBOOT)))[1] == COMM_SUCCESS
        assert ph.ping(port, 2) == (777, COMM_SUCCESS, 0)


def test_late_reply_arrives_after_the_host_timeout() -> None:
    with sdk(faults=["late:400"]) as (port, ph, _):
        t0 = time.monotonic()
        assert ph.read2ByteTxRx(port, 1, ct.PRESENT_POSITION)[1] == COMM_RX_TIMEOUT
        assert time.monotonic() - t0 < 0.35
        port.ser.timeout = 1.0
        stale = port.ser.read(8)  # what a host that does not drain RX takes for its next answer
        assert stale == p.encode_status(1, 0, (2048).to_bytes(2, "little"))
        assert time.monotonic() - t0 >= 0.4


def test_echo_returns_host_bytes_before_the_reply() -> None:
    with launch(faults=["echo"]) as sim, serial.Serial(sim, 1_000_000, timeout=0.5) as ser:
        ping = p.encode_instruction(4, p.PING)
        ser.write(ping)
        assert ser.read(12) == ping + p.encode_status(4, 0)


def test_seed_makes_the_random_schedule_repeatable() -> None:
    def schedule(seed: int) -> list[int]:
        with sdk(faults=["corrupt:0.5"], seed=seed) as (port, ph, _):
            return read_results(port, ph, 16)

    first = schedule(7)
    assert set(first) == {COMM_SUCCESS, COMM_RX_CORRUPT}
    assert schedule(7) == first
    assert schedule(8) != first


def sync_read_ms(port: PortHandler, ph: PacketHandler, n: int = 15) -> float:
    """The fastest of n sync-reads of Present_Position from all six servos: load only adds time, so the
    minimum is the measure that the wire-time floor must hold for."""
    group = GroupSyncRead(port, ph, ct.PRESENT_POSITION, 2)
    for i in IDS:
        group.addParam(i)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert group.txRxPacket() == COMM_SUCCESS
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def test_wire_time_makes_sync_read_take_the_bus_time() -> None:
    # 14-byte request + 6 x 8-byte replies at 10 us/byte = 0.62 ms, + 6 x Return_Delay_Time x 2 us.
    with sdk(wire_time=True) as (port, ph, _):
        factory = sync_read_ms(port, ph)
        for i in IDS:
            assert ph.write1ByteTxRx(port, i, ct.RETURN_DELAY_TIME, 0)[1] == COMM_SUCCESS
        zero_delay = sync_read_ms(port, ph)
    assert factory >= 0.62 + 6 * 0.5, factory
    assert 0.62 <= zero_delay < factory - 2.5, (zero_delay, factory)
    with sdk(wire_time=True, baud=500_000) as (port, ph, _):
        for i in IDS:
            assert ph.write1ByteTxRx(port, i, ct.RETURN_DELAY_TIME, 0)[1] == COMM_SUCCESS
        assert sync_read_ms(port, ph) >= 1.24
    with sdk(wire_time=True, turnaround_us=400) as (port, ph, _):
        for i in IDS:
            assert ph.write1ByteTxRx(port, i, ct.RETURN_DELAY_TIME, 0)[1] == COMM_SUCCESS
        assert sync_read_ms(port, ph) >= 0.62 + 6 * 0.4
