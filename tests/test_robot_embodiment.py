"""The robot owns what its actions mean: SO100 goals, and which robot a checkpoint drives."""

from __future__ import annotations

import numpy as np
import pytest

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.embodiment import EMBODIMENTS, embodiment


def test_so100_goals_are_state_plus_joint_offsets_and_an_absolute_gripper() -> None:
    actions = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 40.0], [-1.0, 0.0, 0.0, 0.0, 0.0, 10.0]])
    state = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    goals = so100.goals(actions, state)
    np.testing.assert_array_equal(goals[:, :5], actions[:, :5] + state[:5])
    np.testing.assert_array_equal(goals[:, 5], [40.0, 10.0])
    with pytest.raises(UserError, match="SO100 expects"):
        so100.goals(actions[:, :5], state)


def test_the_named_robot_wins_and_is_checked_against_the_checkpoint() -> None:
    assert embodiment("so100", 6) is EMBODIMENTS["so100"]
    assert embodiment(None, 7) is EMBODIMENTS["libero"]
    with pytest.raises(UserError, match="--robot libero has 7-d actions but the checkpoint has action_dim 6"):
        embodiment("libero", 6)
    with pytest.raises(UserError, match="action_dim 9"):
        embodiment(None, 9)
    with pytest.raises(UserError, match="unknown robot 'ur5'"):
        embodiment("ur5", 6)


def test_libero_actions_have_no_joint_goals() -> None:
    assert EMBODIMENTS["libero"].goals is None and EMBODIMENTS["libero"].image_counts == (2, 4)
