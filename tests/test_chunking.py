"""Chunk scheduling: upstream `full` execution, and `async` re-planning with a jump-free boundary."""

from __future__ import annotations

import numpy as np
import pytest

from rynn_edge.runtime.robot.chunking import ChunkScheduler, Plan

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
    # Steps stay close to the commanded speed instead of a 5-unit step at the boundary.
    steps = np.abs(np.diff(plan.at(np.arange(now, plan.end_ns(PERIOD), PERIOD), PERIOD), axis=0))
    assert steps.max() < 1.0 + 5.0 / 3


def test_async_late_chunk_eases_in_from_the_held_goal():
    sched = ChunkScheduler("async", RATE, T, remaining=8, min_blend=3)
    first = sched.plan(chunk(np.zeros(6), np.zeros(6)), t_obs_ns=0, now_ns=0, chunk_id=1)
    late = first.end_ns(PERIOD) + 10 * PERIOD  # the old plan ended long ago and is holding
    new = chunk(np.full(6, 9.0), np.zeros(6))
    plan = sched.plan(new, t_obs_ns=late - 2 * PERIOD, now_ns=late, chunk_id=2)
    assert np.allclose(plan.at(late, PERIOD), 0.0)
    assert np.allclose(plan.at(late + 3 * PERIOD, PERIOD), 9.0)
    assert np.allclose(plan.at(late + PERIOD, PERIOD), 3.0)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="chunk policy"):
        ChunkScheduler("ensemble", RATE, T)
    with pytest.raises(ValueError, match="remaining"):
        ChunkScheduler("async", RATE, T, remaining=T)
