"""The C control loop on the bus simulator: period, interpolation, limits, hold, lock-free swap, faults."""

from __future__ import annotations

import time

import numpy as np
import pytest

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
