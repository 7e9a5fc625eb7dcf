"""What a query and an action mean for each robot a checkpoint can be trained on.

The robot is a property of the checkpoint: an exported artifact records it, `--robot` names it, and a
raw upstream checkpoint (whose config.json has no robot key) is known by its action space, which
differs between the two datasets RynnVLA-002 is trained on (SO100: 6 joint actions; LIBERO: 7
end-effector actions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot import so100


@dataclass(frozen=True)
class Embodiment:
    name: str
    action_dim: int
    state_dim: int
    image_counts: tuple[int, ...]  # views per query, in prompt order
    views: tuple[str, ...]  # the camera of each view of one step, in prompt order
    # actions + query-time state -> absolute goals; None where actions are not joint positions
    goals: Callable[[np.ndarray, np.ndarray], np.ndarray] | None


EMBODIMENTS = {
    "so100": Embodiment("so100", 6, 6, (2,), ("front", "wrist"), so100.goals),
    "libero": Embodiment("libero", 7, 8, (2, 4), ("third", "wrist"), None),  # (+ one step of history)
}


def embodiment(robot: str | None, action_dim: int) -> Embodiment:
    """The named robot (checked against the checkpoint), or the one whose action space it has."""
    if robot is None:
        matches = [e for e in EMBODIMENTS.values() if e.action_dim == action_dim]
        if not matches:
            raise UserError(
                f"the checkpoint has action_dim {action_dim}; rynn-edge knows "
                + ", ".join(f"{e.name} ({e.action_dim})" for e in EMBODIMENTS.values())
            )
        return matches[0]
    if robot not in EMBODIMENTS:
        raise UserError(f"unknown robot {robot!r}: use one of {', '.join(EMBODIMENTS)}")
    found = EMBODIMENTS[robot]
    if found.action_dim != action_dim:
        raise UserError(
            f"--robot {robot} has {found.action_dim}-d actions but the checkpoint has action_dim {action_dim}"
        )
    return found
