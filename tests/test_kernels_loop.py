"""The C control loop on the bus simulator: period, interpolation, limits, hold, lock-free swap, faults."""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from kernels_fakebus import FakeBus, Servos
from kernels_isolated import run_isolated

from rynn_edge.kernels import _native as fe
from rynn_edge.kernels.feetech import records_to_numpy
from rynn_edge.runtime.sim import launch

IDS = [1, 2, 3, 4, 5, 6]
START = [2048] * 6
WIDE = dict(lower=[0] * 6, upper=[4095] * 6, max_step=[4095] * 6)
# Loaded CI boxes starve the (Python) simulator for a few ms now and then: never fault on that here.
PATIENT = dict(max_missed_cycles=1000)


@pytest.fixture(scope="module")
def sim() -> str:
    with launch(ids=IDS) as port:
        yield port


@pytest.fixture
def bus(sim: str) -> fe.Bus:
    with fe.Bus(sim, timeout_ms=20.0) as b:
        b.sync_write(IDS, 42, [(2048).to_bytes(2, "little")] * 6)
        yield b


def run_for(loop: fe.ControlLoop, seconds: float) -> np.ndarray:
    loop.start()
    time.sleep(seconds)
    loop.stop()
    return records_to_numpy(loop)


def expected_goal(rows: np.ndarray, t0: int, rate: float, t: int) -> np.ndarray | None:
    s = (t - t0) * 1e-9 * rate
    if s < 0 or s >= len(rows):
        return None
    i = int(s)
    if i >= len(rows) - 1:
        return rows[-1]
    return np.rint(rows[i] + (s - i) * (rows[i + 1] - rows[i])).astype(int)


def test_period_and_records(bus: fe.Bus) -> None:
    loop = fe.ControlLoop(bus, IDS, 100.0, 30.0, **WIDE, **PATIENT)
    rec = run_for(loop, 0.6)
    assert 50 <= len(rec) <= 62
    assert np.all(np.diff(rec["deadline_ns"]) % 10_000_000 == 0)  # absolute deadlines on a 10 ms grid
    assert np.all(np.diff(rec["cycle"]) == 1)
    assert np.all(rec["period_error_ns"] >= 0)
    assert np.median(rec["period_error_ns"]) < 1_000_000
    assert np.all(rec["bus_done_ns"] >= rec["wake_ns"])
    # before any chunk: hold the position read at start
    assert np.all(rec["goal"] == 2048) and np.all(rec["flags"] & fe.RECORD_HELD)
    assert loop.status()["sched"]


def test_interpolates_between_rows(bus: fe.Bus, sim) -> None:
    loop = fe.ControlLoop(bus, IDS, 200.0, 10.0, **WIDE, **PATIENT)
    loop.start()
    t0 = time.monotonic_ns() + 50_000_000
    rows = np.array([[2048 + 100 * k + j for j in range(6)] for k in range(5)])
    loop.submit_chunk(t0, rows.tolist(), 11)
    time.sleep(0.7)
    loop.stop()
    rec = records_to_numpy(loop)
    covered = 0
    for r in rec:
        want = expected_goal(rows, t0, 10.0, int(r["deadline_ns"]))
        if want is None:
            assert r["flags"][0] & fe.RECORD_HELD
            continue
        covered += 1
        assert r["chunk_id"] == 11
        assert np.all(np.abs(r["goal"] - want) <= 1), (r["goal"], want)
    assert covered >= 80  # 0.5 s at 200 Hz
    mid = [r for r in rec if r["chunk_id"] == 11 and not (r["flags"][0] & fe.RECORD_HELD)]
    # strictly between rows somewhere: interpolation, not a staircase
    assert any(int(r["goal"][0] - 2048) % 100 not in (0,) for r in mid)
    # chunk exhausted: hold the last row, never extrapolate
    assert rec["goal"][-1].tolist() == rows[-1].tolist()
    assert rec["flags"][-1][0] & fe.RECORD_HELD
    assert sim.servo(6)["goal"] == rows[-1][5]


def test_clamps_to_limits_and_max_step(bus: fe.Bus) -> None:
    lower = [1900, 0, 0, 0, 0, 0]
    upper = [2200, 4095, 4095, 4095, 4095, 4095]
    max_step = [4095, 7, 4095, 4095, 4095, 4095]
    loop = fe.ControlLoop(bus, IDS, 200.0, 30.0, lower, upper, max_step, **PATIENT)
    loop.start()
    far = [[3000, 2848, 2048, 2048, 1000, 2048]] * 300
    loop.submit_chunk(time.monotonic_ns(), far, 1)
    time.sleep(0.4)
    loop.stop()
    rec = records_to_numpy(loop)
    goals = rec["goal"]
    assert goals[:, 0].max() == 2200 and goals[-1, 0] == 2200  # clamped to upper
    steps = np.abs(np.diff(np.concatenate([[2048], goals[:, 1]])))
    assert steps.max() == 7  # rate limited to max_step per cycle
    assert 2048 < goals[-1, 1] < 2848
    assert goals[-1, 4] == 1000


def test_late_chunk_holds_and_swap_is_atomic(bus: fe.Bus) -> None:
    loop = fe.ControlLoop(bus, IDS, 200.0, 30.0, **WIDE, **PATIENT)
    loop.start()
    now = time.monotonic_ns()
    loop.submit_chunk(now + 200_000_000, [[2500] * 6] * 30, 1)  # starts in the future: hold until then
    time.sleep(0.1)
    status = loop.status()
    assert status["active_chunk_id"] == 1 and status["holding"] and status["goal"] == START
    time.sleep(0.2)
    assert loop.status()["goal"] == [2500] * 6
    for chunk_id in range(2, 40):  # many swaps mid-run; each row carries its own id as the goal
        loop.submit_chunk(time.monotonic_ns(), [[2000 + chunk_id] * 6] * 60, chunk_id)
        time.sleep(0.003)
    time.sleep(0.05)
    loop.hold()
    time.sleep(0.05)
    status = loop.status()
    assert status["active_chunk_id"] is None and status["holding"]
    held = status["goal"]
    time.sleep(0.05)
    assert loop.status()["goal"] == held
    loop.stop()
    rec = records_to_numpy(loop)
    live = rec[(rec["chunk_id"] >= 2) & ((rec["flags"][:, 0] & fe.RECORD_HELD) == 0)]
    assert len(live) > 10
    # never a mix: the goal a cycle wrote always belongs to the chunk it reports
    assert np.all(live["goal"] == (2000 + live["chunk_id"])[:, None])
    assert np.all(np.diff(rec["chunk_id"][rec["chunk_id"] >= 1]) >= 0)  # chunks only move forward
    assert rec["goal"][-1].tolist() == held


def test_fault_stop_on_silent_servo() -> None:
    with launch(ids=IDS, faults=["silent:4@0.5"]) as port, fe.Bus(port, timeout_ms=20.0) as bus:
        loop = fe.ControlLoop(bus, IDS, 100.0, 30.0, **WIDE, max_missed_cycles=3)
        loop.start()
        deadline = time.monotonic() + 5.0
        while loop.running and time.monotonic() < deadline:
            time.sleep(0.02)
        status = loop.status()
        assert not loop.running
        assert status["fault_id"] == 4
        assert "servo 4 missing" in status["fault_reason"] and "4 consecutive" in status["fault_reason"]
        assert status["missed"][3] == 4
        rec = records_to_numpy(loop)
        assert np.all(rec["flags"][-4:, 3] & fe.RECORD_VALID == 0)
        loop.stop()
        bus.close()  # allowed once the loop thread is gone


def test_fault_stop_on_overload_bit() -> None:
    with launch(ids=IDS, faults=["overload:2@0.3"]) as port, fe.Bus(port, timeout_ms=20.0) as bus:
        loop = fe.ControlLoop(bus, IDS, 100.0, 30.0, **WIDE, **PATIENT)
        loop.start()
        deadline = time.monotonic() + 5.0
        while loop.running and time.monotonic() < deadline:
            time.sleep(0.02)
        status = loop.status()
        assert status["fault_id"] == 2 and "overload" in status["fault_reason"]
        assert status["errors"][1] & fe.ERRBIT_OVERLOAD
        loop.stop()


def test_bus_close_refused_while_loop_runs(bus: fe.Bus) -> None:
    loop = fe.ControlLoop(bus, IDS, 50.0, 30.0, **WIDE, **PATIENT)
    loop.start()
    try:
        with pytest.raises(RuntimeError, match="stop the ControlLoop"):
            bus.close()
        bus.torque_off(IDS)  # Python can still use the bus between cycles
    finally:
        loop.stop()


def test_bad_arguments(bus: fe.Bus) -> None:
    with pytest.raises(ValueError, match="max_step"):
        fe.ControlLoop(bus, IDS, 100.0, 30.0, [0] * 6, [4095] * 6, [0] * 6)
    with pytest.raises(ValueError, match="lower"):
        fe.ControlLoop(bus, IDS, 100.0, 30.0, [5000] * 6, [4095] * 6, [5] * 6)
    loop = fe.ControlLoop(bus, IDS, 100.0, 30.0, **WIDE)
    with pytest.raises(ValueError, match="entries"):
        loop.submit_chunk(0, [[1, 2, 3]], 0)


# --- hostile callers and a hostile bus (kernels_fakebus: a fake servo over a pty) ----------------------

ONE = dict(lower=[0], upper=[4095], max_step=[4095], max_missed_cycles=10**6)


@contextlib.contextmanager
def fake_bus(answer: Callable, timeout_ms: float = 20.0) -> Iterator[fe.Bus]:
    with FakeBus(answer) as fake, fe.Bus(fake.port, timeout_ms=timeout_ms) as b:
        yield b


def late(servos: Servos, delay_s: float) -> Callable:
    """Every reply `delay_s` late: start()'s initial reads then take a while."""
    return lambda request: [(delay_s, servos(request))]


def servo_threads() -> int:
    """Threads named rynn-servo (the loop thread's name) alive in this process."""
    names = []
    for path in glob.glob("/proc/self/task/*/comm"):
        with contextlib.suppress(OSError):
            names.append(Path(path).read_text().strip())
    return names.count("rynn-servo")


def in_threads(target: Callable, n: int, timeout_s: float = 10.0) -> list[BaseException | None]:
    """Runs target() in n threads at once; what each raised (None: returned). Fails if one hangs."""
    barrier = threading.Barrier(n)
    outcome: list[BaseException | None] = [None] * n

    def run(k: int) -> None:
        barrier.wait()
        try:
            target()
        except BaseException as err:  # reported to the test
            outcome[k] = err

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), "a lifecycle call hangs"
    return outcome


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("action_rate_hz", math.inf),
        ("action_rate_hz", math.nan),
        ("action_rate_hz", 0.0),
        ("action_rate_hz", -30.0),
        ("loop_rate_hz", 1e-10),
        ("loop_rate_hz", math.inf),
        ("loop_rate_hz", math.nan),
        ("loop_rate_hz", 20000.0),
    ],
)
def test_float_arguments_must_be_finite_and_in_range(bus: fe.Bus, name: str, value: float) -> None:
    rates = {"loop_rate_hz": 100.0, "action_rate_hz": 30.0, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a finite number in [\[(]"):
        fe.ControlLoop(bus, IDS, **rates, **WIDE)


@pytest.mark.parametrize("timeout_ms", [math.inf, math.nan, 0.0, -5.0])
def test_bus_timeout_must_be_finite_and_positive(sim: str, timeout_ms: float) -> None:
    with pytest.raises(ValueError, match="timeout_ms must be a finite number in"):
        fe.Bus(sim, timeout_ms=timeout_ms)


def test_t0_outside_the_monotonic_range_is_refused(bus: fe.Bus) -> None:
    loop = fe.ControlLoop(bus, IDS, 100.0, 30.0, **WIDE)
    for t0 in (-(2**63), -1, 2**62 + 1):
        with pytest.raises(ValueError, match="t0_ns must be in"):
            loop.submit_chunk(t0, [START], 1)


def test_drain_records_takes_none(bus: fe.Bus) -> None:
    loop = fe.ControlLoop(bus, IDS, 100.0, 30.0, **WIDE, **PATIENT)
    assert loop.drain_records(None) == b""
    loop.start()
    time.sleep(0.05)
    loop.stop()
    assert len(loop.drain_records(None)) >= loop.record_dtype["itemsize"]


def test_stop_wakes_a_slow_loop() -> None:
    with fake_bus(Servos({1: 2048})) as b:
        loop = fe.ControlLoop(b, [1], 1.0, 1.0, **ONE)
        loop.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        loop.stop()
        assert time.monotonic() - t0 < 0.2  # not the rest of a 1 s period
        assert not loop.running


def test_concurrent_stops_all_return() -> None:
    with fake_bus(Servos({1: 2048})) as b:
        loop = fe.ControlLoop(b, [1], 100.0, 10.0, **ONE)
        loop.start()
        assert in_threads(loop.stop, 4) == [None] * 4
        assert not loop.running and servo_threads() == 0


def test_concurrent_starts_make_one_servo_thread() -> None:
    with fake_bus(late(Servos({1: 2048}), 0.02)) as b:
        loop = fe.ControlLoop(b, [1], 100.0, 10.0, **ONE)
        outcome = in_threads(loop.start, 4)
        assert outcome.count(None) == 1
        assert all(isinstance(e, RuntimeError) and "already" in str(e) for e in outcome if e is not None)
        assert loop.running and servo_threads() == 1
        loop.stop()


def test_start_on_a_running_loop_raises() -> None:
    servos = Servos({1: 2048})
    with fake_bus(servos) as b:
        loop = fe.ControlLoop(b, [1], 100.0, 10.0, **ONE)
        loop.start()
        time.sleep(0.05)
        cycles = loop.status()["cycles"]
        with pytest.raises(RuntimeError, match="already running"):
            loop.start()
        time.sleep(0.03)
        assert loop.running and loop.status()["cycles"] > cycles  # the same loop went on, no restart
        loop.stop()


def test_stop_during_start_wins() -> None:
    servos = Servos({1: 2048})
    with fake_bus(late(servos, 0.05), timeout_ms=200.0) as b:
        loop = fe.ControlLoop(b, [1], 100.0, 10.0, **ONE)
        outcome: list[BaseException] = []
        starter = threading.Thread(target=lambda: outcome.extend(_raised(loop.start)))
        starter.start()
        time.sleep(0.02)  # start() is waiting for its first reading
        loop.stop()
        starter.join(5.0)
        assert not starter.is_alive() and not loop.running and servo_threads() == 0
        assert len(outcome) == 1 and isinstance(outcome[0], fe.BusError)
        assert outcome[0].errno == errno.ECANCELED
        assert servos.goals == []  # not one cycle ran


def _raised(call: Callable) -> list[BaseException]:
    try:
        call()
    except BaseException as err:  # returned to the caller
        return [err]
    return []


def test_start_and_stop_from_many_threads() -> None:
    with fake_bus(Servos({1: 2048})) as b:
        loop = fe.ControlLoop(b, [1], 200.0, 10.0, **ONE)
        rng = random.Random(16)

        def churn() -> None:
            for _ in range(15):
                try:
                    loop.start() if rng.random() < 0.5 else loop.stop()
                except RuntimeError:  # start() while the loop runs (or starts in another thread)
                    pass
                except fe.BusError as err:  # start() that another thread's stop() cancelled
                    assert err.errno == errno.ECANCELED
                time.sleep(rng.random() * 0.005)

        assert in_threads(churn, 4, timeout_s=30.0) == [None] * 4
        assert servo_threads() <= 1
        loop.stop()
        assert not loop.running and servo_threads() == 0


def test_start_refuses_a_servo_far_outside_its_limits() -> None:
    servos = Servos({1: 100})
    with fake_bus(servos) as b:
        loop = fe.ControlLoop(b, [1], 100.0, 10.0, [1000], [3000], [20], max_missed_cycles=10**6)
        with pytest.raises(fe.BusError, match=r"servo 1 .* at 100, outside its limits \[1000, 3000\]") as err:
            loop.start()
        assert err.value.errno == errno.ERANGE
        assert not loop.running and servos.goals == []  # no goal outside the limits, no jump to them


def goals_of_a_held_run(servos: Servos, limits: dict) -> set[int]:
    """Starts a loop on servo 1 (no chunk: it holds), stops it after 0.1 s: the goals it wrote."""
    with fake_bus(servos) as b:
        loop = fe.ControlLoop(b, [1], 100.0, 10.0, **limits)
        loop.start()
        time.sleep(0.1)
        loop.stop()
    assert servos.goals
    return {g[1] for g in servos.goals}


def test_a_servo_just_outside_its_limits_starts_at_the_limit() -> None:
    limits = dict(lower=[1000], upper=[3000], max_step=[20], max_missed_cycles=10**6)
    assert goals_of_a_held_run(Servos({1: 990}), limits) == {1000}


def test_one_bogus_reading_never_becomes_the_held_pose() -> None:
    """The first reply says 2398, every later one 2048: the loop holds 2048 from its very first cycle."""
    servos = Servos({1: 2048})
    servos.position = lambda servo_id: 2398 if servos.reads == 1 else 2048
    assert goals_of_a_held_run(servos, ONE) == {2048}


def test_start_refuses_readings_that_never_agree() -> None:
    servos = Servos({1: 2048})
    servos.position = lambda servo_id: 1000 + 1000 * (servos.reads % 2)
    with fake_bus(servos) as b:
        loop = fe.ControlLoop(b, [1], 100.0, 10.0, **ONE)
        with pytest.raises(fe.BusError, match="agreeing") as err:
            loop.start()
        assert err.value.errno == errno.EPROTO and servos.goals == []


def test_goals_never_run_far_ahead_of_the_measured_position() -> None:
    """A servo stuck at 2048, a chunk asking for 3000: the goal stops 8 steps ahead instead of running off."""
    servos = Servos({1: 2048})
    with fake_bus(servos) as b:
        loop = fe.ControlLoop(b, [1], 200.0, 10.0, [0], [4095], [10], max_missed_cycles=10**6)
        loop.start()
        loop.submit_chunk(time.monotonic_ns(), [[3000]] * 10, 1)
        time.sleep(0.3)
        loop.stop()
        written = [g[1] for g in servos.goals]
        assert max(written) == 2048 + 8 * 10
        assert max(abs(a - b) for a, b in zip([2048, *written], written, strict=False)) <= 10


def test_index_that_clears_the_lists_being_parsed() -> None:
    run_isolated(
        """
        bus = pty_bus()
        lower = []
        lower += [Clearing(0, lower), 0]
        loop = fe.ControlLoop(bus, [1, 2], 100.0, 10.0, lower, [4095, 4095], [10, 10])
        rows = []
        rows += [[Clearing(2048, rows), 2048], [2048, 2048]]
        loop.submit_chunk(0, rows, 1)
        row = []
        row += [Clearing(2048, row), 2048]
        loop.submit_chunk(0, [row], 2)
        """
    )
