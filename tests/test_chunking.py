"""Chunk scheduling: upstream `full` execution, `async` re-planning (fixed or latency-aware K) with a
jump-free boundary, and the steady-state models the bench uses."""

from __future__ import annotations

import numpy as np
import pytest

from rynn_edge.runtime.robot.chunking import (
    LATENCY_WINDOW,
    ChunkScheduler,
    Plan,
    async_steady_state,
    auto_remaining,
    full_steady_state,
    smoothstep,
    switch_overhead_s,
)

RATE = 30.0
PERIOD = round(1e9 / RATE)
T = 20


def chunk(start: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """A straight-line chunk of absolute goals, like a policy moving every joint at constant speed."""
    return start + np.arange(T)[:, None] * velocity


def test_full_executes_whole_chunk_then_requeries():
    sched = ChunkScheduler("full", RATE, T)
    assert sched.should_query(0)
    sched.start_query()
    assert not sched.should_query(10**9)  # one query at a time
    goals = chunk(np.zeros(6), np.ones(6))
    plan = sched.plan(goals, t_obs_ns=0, now_ns=300_000_000, chunk_id=1)
    assert plan.t0_ns == 300_000_000 and np.array_equal(plan.goals, goals)
    assert not sched.should_query(300_000_000 + (T - 1) * PERIOD)
    assert sched.should_query(300_000_000 + T * PERIOD)


def test_plan_interpolates_between_rows_and_holds_ends():
    plan = Plan(1000, chunk(np.zeros(6), np.ones(6)), 0)
    assert plan.at(1000 + PERIOD // 2, PERIOD)[0, 0] == pytest.approx(0.5, abs=1e-6)
    assert plan.at(0, PERIOD)[0, 0] == 0.0
    assert plan.at(1000 + 100 * PERIOD, PERIOD)[0, 0] == T - 1


def test_async_requeries_with_k_rows_left_and_blends_without_jump():
    sched = ChunkScheduler("async", RATE, T, remaining=8)
    sched.start_query()
    first = sched.plan(chunk(np.zeros(6), np.full(6, 1.0)), t_obs_ns=0, now_ns=0, chunk_id=1)
    assert not sched.should_query(first.t0_ns + 11 * PERIOD)
    t_obs = first.t0_ns + 12 * PERIOD
    assert sched.should_query(t_obs)
    assert sched.budget_s(t_obs) == pytest.approx(8 * PERIOD / 1e9)
    sched.start_query()
    # The new chunk disagrees with the old plan by 5 units everywhere; inference took 4.37 rows, so the
    # switch instant falls between two rows of the new chunk.
    new = chunk(first.at(t_obs, PERIOD)[0] + 5.0, np.full(6, 1.0))
    now = t_obs + round(4.37 * PERIOD)
    plan = sched.plan(new, t_obs_ns=t_obs, now_ns=now, chunk_id=2)
    # At the switch instant the goal is exactly where the old plan was: no jump.
    assert np.allclose(plan.at(now, PERIOD), first.at(now, PERIOD), atol=1e-9)
    # From the old plan's end on, the new chunk (row 0 = observation instant) is followed exactly.
    later = np.arange(first.end_ns(PERIOD) + PERIOD, t_obs + (T - 2) * PERIOD, PERIOD // 3)
    assert len(later) and np.allclose(plan.at(later, PERIOD), Plan(t_obs, new, 2).at(later, PERIOD))
    # Steps stay close to the commanded speed instead of a 5-unit step at the boundary: the smoothstep
    # ramp over the 4 rows left adds at most 1.5 x 5 / 4 per row.
    steps = np.abs(np.diff(plan.at(np.arange(now, plan.end_ns(PERIOD), PERIOD), PERIOD), axis=0))
    assert steps.max() <= 1.0 + 1.5 * 5.0 / 4 + 1e-9


def test_async_blend_keeps_the_velocity_at_both_ends_of_the_overlap():
    """A long overlap (n rows): the first step after the switch is the old plan's and the last one of
    the ramp the new chunk's, up to ~3 gap / n^2 (a linear ramp would add gap / n to both)."""
    sched = ChunkScheduler("async", RATE, T, remaining=16)
    first = sched.plan(chunk(np.zeros(6), np.full(6, 1.0)), t_obs_ns=0, now_ns=0, chunk_id=1)
    t_obs = first.end_ns(PERIOD) - 16 * PERIOD
    gap = 6.0
    new = chunk(first.at(t_obs, PERIOD)[0] + gap, np.full(6, -0.5))  # other offset and speed
    now = t_obs + 2 * PERIOD
    plan = sched.plan(new, t_obs_ns=t_obs, now_ns=now, chunk_id=2)
    n = (first.end_ns(PERIOD) - now) // PERIOD
    grid = now + np.arange(n + 1) * PERIOD
    steps = np.diff(plan.at(grid, PERIOD)[:, 0])
    assert abs(steps[0] - 1.0) <= 3 * (gap + 1.5 * n) / n**2  # the old plan moved +1 per row
    assert abs(steps[-1] - (-0.5)) <= 3 * (gap + 1.5 * n) / n**2  # the new chunk moves -0.5 per row
    assert abs(steps[0] - 1.0) < (gap + 1.5 * n) / n / 3


def test_async_late_chunk_eases_in_from_the_held_goal():
    sched = ChunkScheduler("async", RATE, T, remaining=8, min_blend=3)
    first = sched.plan(chunk(np.zeros(6), np.zeros(6)), t_obs_ns=0, now_ns=0, chunk_id=1)
    late = first.end_ns(PERIOD) + 10 * PERIOD  # the old plan ended long ago and is holding
    assert sched.budget_s(late) < 0  # a query now would already be late
    new = chunk(np.full(6, 9.0), np.zeros(6))
    plan = sched.plan(new, t_obs_ns=late - 2 * PERIOD, now_ns=late, chunk_id=2)
    assert np.allclose(plan.at(late, PERIOD), 0.0)
    assert np.allclose(plan.at(late + 3 * PERIOD, PERIOD), 9.0)
    assert np.allclose(plan.at(late + PERIOD, PERIOD), 9.0 * smoothstep(np.array(1 / 3)))


def test_auto_remaining_follows_the_measured_latency_within_the_chunk():
    overhead = switch_overhead_s(100.0)
    assert overhead == pytest.approx(0.025)
    # ceil((1.2 x 0.2 + 0.025) x 30) = ceil(7.95)
    assert auto_remaining([0.2] * 5, RATE, T, overhead) == 8
    assert auto_remaining([0.001], RATE, T) == 1
    assert auto_remaining([2.0], RATE, T) == T - 1  # a chunk too short for this latency: query at once
    # A high percentile of the recent window: one slow query among fast ones raises K ...
    assert auto_remaining([0.1] * 9 + [0.4], RATE, T) > auto_remaining([0.1] * 10, RATE, T)
    # ... and is forgotten once LATENCY_WINDOW newer ones arrived.
    assert auto_remaining([0.4] + [0.1] * LATENCY_WINDOW, RATE, T) == auto_remaining([0.1], RATE, T)


def test_scheduler_auto_k_starts_from_the_hint_then_tracks_queries():
    sched = ChunkScheduler("async", RATE, T, latency_hint_s=1.0)
    assert sched.remaining == T - 1  # warm-up said 1 s: as early as the chunk allows
    for _ in range(3):
        sched.observe_latency(0.1)
    assert sched.remaining == auto_remaining([0.1], RATE, T)
    assert ChunkScheduler("async", RATE, T, remaining=5, latency_hint_s=1.0).remaining == 5
    assert ChunkScheduler("full", RATE, T).remaining is None


def test_steady_state_models():
    f = RATE
    held, interval = async_steady_state(T, auto_remaining([0.2], f, T), 0.2, f)
    assert held == 0.0 and interval == pytest.approx((T - auto_remaining([0.2], f, T)) / f)
    held, interval = async_steady_state(T, 2, 0.3, f)  # budget 2 rows = 67 ms < 300 ms
    assert held == pytest.approx(0.3 - 2 / f) and interval == pytest.approx((T - 2) / f)
    held, interval = async_steady_state(T, T - 1, 0.5, f)  # compute-bound: L > T / 2f
    assert interval == 0.5 and held == pytest.approx(2 * 0.5 - T / f)
    assert async_steady_state(T, T - 1, 1.0, f) == (1.0, 1.0)  # L >= T / f: stale on arrival, always held
    assert full_steady_state(T, 0.5, f) == (0.5, pytest.approx(T / f + 0.5))


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="chunk policy"):
        ChunkScheduler("ensemble", RATE, T)
    with pytest.raises(ValueError, match="remaining"):
        ChunkScheduler("async", RATE, T, remaining=T)
    with pytest.raises(ValueError, match="at least 2"):
        ChunkScheduler("async", RATE, 1)
