"""The C Bus against the real bus simulator (`rynn-edge sim`, a separate process on a pty)."""

from __future__ import annotations

import threading
import time

import kernels_fakebus as fe_fake
import pytest
from kernels_fakebus import FakeBus, Servos, status, u16

from rynn_edge.kernels import _native as fe
from rynn_edge.runtime.sim import launch

IDS = [1, 2, 3, 4, 5, 6]
# The simulator is a Python process: on a loaded 2-core CI box it can stall for milliseconds.
SLACK_MS = 40.0


@pytest.fixture(scope="module")
def sim() -> str:
    with launch(ids=IDS, initial_positions=[1000, 1500, 2048, 2500, 3000, 3500]) as port:
        yield port


@pytest.fixture
def bus(sim: str) -> fe.Bus:
    with fe.Bus(sim, timeout_ms=SLACK_MS) as b:
        yield b


def test_ping_read_write(bus: fe.Bus, sim) -> None:
    assert bus.ping(1) == (777, 0)
    data, error = bus.read(3, 56, 2)
    assert (fe.decode_sign_magnitude(int.from_bytes(data, "little"), 15), error) == (2048, 0)
    assert bus.write(2, 7, b"\x00") == 0  # Return_Delay_Time
    assert bus.read(2, 7, 1) == (b"\x00", 0)
    assert bus.write(4, 42, (2222).to_bytes(2, "little")) == 0
    assert sim.servo(4)["goal"] == 2222


def test_sync_read_returns_every_id_in_order(bus: fe.Bus) -> None:
    result = bus.sync_read(IDS, 56, 2)
    positions = [int.from_bytes(d, "little") for d, _ in result]
    assert positions == [1000, 1500, 2048, 2500, 3000, 3500]
    assert [e for _, e in result] == [0] * 6
    reordered = bus.sync_read([6, 1], 56, 2)
    assert [int.from_bytes(d, "little") for d, _ in reordered] == [3500, 1000]


def test_sync_write_reaches_every_servo(bus: fe.Bus, sim) -> None:
    goals = [1100, 1600, 2100, 2600, 3100, 3600]
    bus.sync_write(IDS, 42, [g.to_bytes(2, "little") for g in goals])
    state = {s["id"]: s["goal"] for s in sim.state()["servos"]}
    assert [state[i] for i in IDS] == goals


def test_sync_write_read_single_write(bus: fe.Bus, sim) -> None:
    result = bus.sync_write_read(IDS, 42, [(2000 + i).to_bytes(2, "little") for i in IDS], 56, 2)
    assert all(d is not None and e == 0 for d, e in result)
    assert sim.servo(6)["goal"] == 2006


def test_missing_id_raises_timeout_naming_everything(sim: str) -> None:
    with fe.Bus(sim, timeout_ms=5.0, retries=1) as bus:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            bus.read(42, 56, 2)
        elapsed = time.monotonic() - t0
        assert isinstance(info.value, fe.BusTimeoutError) and isinstance(info.value, OSError)
        message = str(info.value)
        assert "id 42" in message and "READ addr 56" in message and sim in message
        assert elapsed < 1.0
        stats = bus.stats()["per_id"][42]
        assert stats["timeouts"] == 2 and stats["retries"] == 1 and stats["requests"] == 1


def test_open_error_is_oserror() -> None:
    with pytest.raises(OSError, match="/nonexistent/tty"):
        fe.Bus("/nonexistent/tty")


def test_gil_released_while_waiting(sim: str) -> None:
    with fe.Bus(sim, timeout_ms=300.0, retries=0) as bus:
        done = threading.Event()

        def blocked() -> None:
            with pytest.raises(TimeoutError):
                bus.read(99, 56, 2)
            done.set()

        thread = threading.Thread(target=blocked)
        thread.start()
        spins = 0
        t_end = time.monotonic() + 0.2
        while time.monotonic() < t_end:
            spins += 1
        thread.join()
        assert done.is_set()
        assert spins > 10_000  # the main thread ran while C waited in poll()


def test_closed_bus_refuses(sim: str) -> None:
    bus = fe.Bus(sim)
    bus.close()
    assert bus.closed
    with pytest.raises(ValueError, match="closed"):
        bus.ping(1)


def test_silent_servo_gives_none_others_still_returned() -> None:
    with launch(ids=IDS, faults=["silent:3"]) as port, fe.Bus(port, timeout_ms=10.0, retries=1) as bus:
        result = bus.sync_read(IDS, 56, 2)
        assert result[2] == (None, fe.ERR_NO_REPLY)
        assert all(d == (2048).to_bytes(2, "little") and e == 0 for i, (d, e) in enumerate(result) if i != 2)
        stats = bus.stats()["per_id"]
        assert stats[3]["timeouts"] == 2 and stats[3]["retries"] == 1
        assert stats[1]["timeouts"] == 0


def test_overload_error_byte_surfaced_in_sync_read() -> None:
    with launch(ids=IDS, faults=["overload:2"]) as port, fe.Bus(port, timeout_ms=SLACK_MS) as bus:
        bus.write(1, 40, b"\x01")  # any request lets the simulator apply the fault schedule
        result = bus.sync_read(IDS, 56, 2)
        assert result[1][1] & fe.ERRBIT_OVERLOAD
        assert [e for _, e in result[:1] + result[2:]] == [0] * 5
        _, error = bus.read(2, 56, 2)
        assert error & fe.ERRBIT_OVERLOAD


def test_corrupt_replies_counted_and_retried() -> None:
    with launch(ids=IDS, faults=["corrupt:1/2"]) as port, fe.Bus(port, timeout_ms=SLACK_MS, retries=2) as bus:
        for _ in range(10):
            assert bus.read(1, 3, 2) == ((777).to_bytes(2, "little"), 0)
        stats = bus.stats()["per_id"][1]
        assert stats["checksum_errors"] >= 5 and stats["retries"] >= 5


def test_echoing_adapter_is_tolerated() -> None:
    with launch(ids=IDS, faults=["echo"]) as port, fe.Bus(port, timeout_ms=SLACK_MS) as bus:
        assert bus.ping(5) == (777, 0)
        assert bus.read(1, 56, 2) == ((2048).to_bytes(2, "little"), 0)
        assert [d for d, _ in bus.sync_read(IDS, 56, 2)] == [(2048).to_bytes(2, "little")] * 6
        assert bus.stats()["echo_seen"]


def test_torque_off(bus: fe.Bus, sim) -> None:
    for i in IDS:
        bus.write(i, 40, b"\x01")
    assert all(s["torque"] == 1 for s in sim.state()["servos"])
    bus.torque_off(IDS)
    assert all(s["torque"] == 0 for s in sim.state()["servos"])


# --- a hostile bus: the fake servo of kernels_fakebus, byte for byte over a pty -------------------------


def test_echo_behind_noise_is_never_taken_for_the_reply() -> None:
    """An echoing adapter, a stray byte before each echo: READ(1, 56, 2) echoed reads as position 568 with the
    ANGLE bit; the servo said 2048."""
    with (
        FakeBus(Servos({1: 2048}), echo=True, before_echo=lambda: b"\x00") as fake,
        fe.Bus(fake.port, timeout_ms=SLACK_MS) as bus,
    ):
        assert bus.read(1, 56, 2) == (u16(2048), 0)
        assert bus.ping(1) == (fe_fake.MODEL, 0)
        assert bus.sync_read([1], 56, 2) == [(u16(2048), 0)]
        assert bus.stats()["echo_seen"]  # proven by the SYNC_READ's echo: no servo sends that
        assert bus.read(1, 56, 2) == (u16(2048), 0)


def test_ping_of_an_absent_servo_behind_an_echoing_adapter_times_out() -> None:
    with FakeBus(Servos({1: 2048}), echo=True) as fake, fe.Bus(fake.port, timeout_ms=10.0, retries=1) as bus:
        with pytest.raises(fe.BusTimeoutError, match="id 5 .*PING.*echo"):
            bus.ping(5)
        with pytest.raises(fe.BusTimeoutError, match="id 5"):
            bus.read(5, 56, 2)


@pytest.mark.parametrize("echo", [False, True])
def test_a_reply_byte_identical_to_its_ping_still_counts(echo: bool) -> None:
    """A PING answered with ERR=0x01 is an exact copy of the PING: with or without an echo, ping() sees it."""
    with (
        FakeBus(Servos({1: 2048}, error=fe.ERRBIT_VOLTAGE), echo=echo) as fake,
        fe.Bus(fake.port, timeout_ms=SLACK_MS) as bus,
    ):
        assert bus.ping(1) == (fe_fake.MODEL, fe.ERRBIT_VOLTAGE)


def test_a_status_packet_inside_an_echoed_request_is_never_a_reply() -> None:
    """The SYNC_WRITE data carries a whole valid status packet of servo 2 (which is absent): echoed behind
    a stray byte, it must not come back as servo 2's position."""
    planted = status(2, 0, u16(1234))
    data = [planted, bytes(len(planted))]
    with (
        FakeBus(Servos({1: 2048}), echo=True, before_echo=lambda: b"\x00") as fake,
        fe.Bus(fake.port, timeout_ms=10.0) as bus,
    ):
        assert bus.sync_write_read([1, 2], 60, data, 56, 2) == [(u16(2048), 0), (None, fe.ERR_NO_REPLY)]


def test_a_stray_header_does_not_hide_the_replies_after_it() -> None:
    """FF FF 01 F6 00 promises 250 bytes: the valid replies right behind it must still be read."""
    servos = Servos({1: 2048, 2: 1000})
    with (
        FakeBus(lambda r: b"\xff\xff\x01\xf6\x00" + servos(r)) as fake,
        fe.Bus(fake.port, timeout_ms=10.0) as bus,
    ):
        assert bus.read(1, 56, 2) == (u16(2048), 0)
        assert bus.sync_read([1, 2], 56, 2) == [(u16(2048), 0), (u16(1000), 0)]


def test_an_err_byte_no_sts_servo_sends_is_not_a_status_packet() -> None:
    servos = Servos({1: 2048})
    with (
        FakeBus(lambda r: status(1, 0x40, u16(999)) + status(1, 0x10, u16(998)) + servos(r)) as fake,
        fe.Bus(fake.port, timeout_ms=10.0) as bus,
    ):
        assert bus.read(1, 56, 2) == (u16(2048), 0)


def test_bus_close_is_refused_while_a_loop_starts() -> None:
    """close() from another thread during start()'s initial reads (each reply 60 ms late) must not free
    the bus under the loop."""
    servos = Servos({1: 2048})
    with FakeBus(lambda r: [(0.06, servos(r))]) as fake, fe.Bus(fake.port, timeout_ms=200.0) as bus:
        loop = fe.ControlLoop(bus, [1], 50.0, 10.0, [0], [4095], [50], max_missed_cycles=10**6)
        starter = threading.Thread(target=loop.start)
        starter.start()
        time.sleep(0.03)
        with pytest.raises(RuntimeError, match="stop the ControlLoop"):
            bus.close()
        starter.join(5.0)
        assert loop.running
        loop.stop()
        bus.close()
        assert bus.closed


def test_a_late_echo_of_an_action_is_never_a_reply() -> None:
    """ACTION(2) is FF FF 02 02 05 F6, the shape of a data-less status of servo 2 with ERR 5. Behind an
    adapter proven to echo, its copy arriving after FE_ECHO_HISTORY distinct requests (a backed-up adapter)
    is not servo 2's answer to a WRITE: the servo is silent, so the write times out."""
    action = bytes.fromhex("ffff020205f6")
    assert action == status(2, 0x05)  # byte for byte a status packet
    servos = Servos({1: 2048})

    def answer(request: fe_fake.Request) -> bytes:
        if request.id == 2:  # answers the ACTION; its WRITE reply is lost and the old echo arrives instead
            return status(2, 0) if request.instruction == fe_fake.ACTION else action
        return servos(request)

    with FakeBus(answer, echo=True) as fake, fe.Bus(fake.port, timeout_ms=SLACK_MS, retries=0) as bus:
        assert bus.sync_read([1], 56, 2) == [(u16(2048), 0)]  # the SYNC_READ's echo proves an echoing adapter
        bus.action(2)
        for addr in range(40):  # distinct requests: the ACTION leaves the echo history
            bus.read(1, addr, 1)
        with pytest.raises(fe.BusTimeoutError, match="id 2"):
            bus.write(2, 40, b"\x01")
        assert [r.raw for r in fake.requests if r.instruction == fe_fake.ACTION] == [action]
