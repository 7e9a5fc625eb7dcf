"""The goal rules every robot-facing protocol of `serve` applies: clip to the valid ranges, optionally
limit the step from the observed state (the ranges win where both bind), count what moved; and the
refusal log that says a repeated problem once per window."""

from __future__ import annotations

import numpy as np

from rynn_edge.runtime.serving.policy import GoalLimits, SessionLog

LOWER = np.array([-90.0, 20.0, -10.0, -60.0, -160.0, 0.0])
UPPER = np.array([75.0, 190.0, 180.0, 100.0, 170.0, 100.0])
STATE = np.array([0.0, 100.0, 90.0, 0.0, 0.0, 50.0])


def test_goals_are_clipped_to_the_ranges_and_counted():
    goals = np.array([[100.0, 100.0, 90.0, 0.0, 0.0, -58.5], [0.0, 10.0, 90.0, 0.0, 0.0, 50.0]])
    safe, moved = GoalLimits(LOWER, UPPER, None).apply(goals, STATE)
    assert moved == 3
    assert safe.tolist() == [[75.0, 100.0, 90.0, 0.0, 0.0, 0.0], [0.0, 20.0, 90.0, 0.0, 0.0, 50.0]]


def test_max_step_limits_goals_around_the_observed_state():
    goals = STATE + np.array([[30.0, -30.0, 5.0, 0.0, 0.0, 0.0]])
    safe, moved = GoalLimits(LOWER, UPPER, 10.0).apply(goals, STATE)
    assert moved == 2 and np.allclose(safe, STATE + np.array([[10.0, -10.0, 5.0, 0.0, 0.0, 0.0]]))


def test_the_ranges_win_over_max_step_when_the_state_is_outside_them():
    state = STATE.copy()
    state[0] = 120.0  # beyond the upper bound: a step around it would leave the range
    safe, _ = GoalLimits(LOWER, UPPER, 10.0).apply(np.array([state]), state)
    assert safe[0, 0] == UPPER[0]


def test_a_repeated_line_is_said_once_per_window_then_counted(capsys):
    log = SessionLog("serve", every_s=3600)
    for _ in range(5):
        log.limited("peer A", "observation", "refused: bad")
    log.limited("peer B", "observation", "refused: bad")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["serve: peer A: refused: bad", "serve: peer B: refused: bad"]
