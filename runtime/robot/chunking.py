"""When to ask the policy for a new action chunk and which goals to send to the servo loop.

Times are CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()`, the clock the C loop uses). A plan row k
is the goal for time `t0_ns + k * period`; the C loop interpolates between rows and holds the last one.

* `full`  (upstream behaviour): execute the whole chunk from the moment it arrives, then query again;
  the arm holds the last goal while the model thinks.
* `async`: query when `k` rows of the current chunk remain. The new chunk is anchored at its
  observation time (row 0 belongs to the instant the state was read, as in training), and blended
  with the plan it replaces: weight 0 on the new chunk at the switch instant, rising linearly to 1 at
  the end of the overlap, so the commanded goal is continuous at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("full", "async")


@dataclass(frozen=True)
class Plan:
    t0_ns: int
    goals: np.ndarray  # [T, A] training units
    chunk_id: int

    def end_ns(self, period_ns: int) -> int:
        """The instant the last row has had its full period."""
        return self.t0_ns + len(self.goals) * period_ns

    def at(self, t_ns: np.ndarray | int, period_ns: int) -> np.ndarray:
        """Goal(s) at time(s) t: linear between rows, first/last row held outside the chunk."""
        x = (np.atleast_1d(np.asarray(t_ns, dtype=np.float64)) - self.t0_ns) / period_ns
        rows = np.arange(len(self.goals))
        return np.stack([np.interp(x, rows, self.goals[:, a]) for a in range(self.goals.shape[1])], axis=1)


class ChunkScheduler:
    """Decides when to query and turns a chunk into the plan the loop executes."""

    def __init__(self, policy: str, rate_hz: float, horizon: int, *, remaining: int = 8, min_blend: int = 3):
        if policy not in POLICIES:
            raise ValueError(f"chunk policy {policy!r}: expected one of {', '.join(POLICIES)}")
        if policy == "async" and not 0 < remaining < horizon:
            raise ValueError(
                f"async re-planning needs 0 < remaining ({remaining}) < chunk length ({horizon})"
            )
        self.policy = policy
        self.period_ns = round(1e9 / rate_hz)
        self.horizon = horizon
        self.remaining = remaining
        self.min_blend = min_blend
        self.current: Plan | None = None
        self.in_flight = False

    def should_query(self, now_ns: int) -> bool:
        if self.in_flight:
            return False
        if self.current is None:
            return True
        if self.policy == "full":
            return now_ns >= self.current.end_ns(self.period_ns)
        return now_ns >= self.current.end_ns(self.period_ns) - self.remaining * self.period_ns

    def start_query(self) -> None:
        self.in_flight = True

    def plan(self, goals: np.ndarray, t_obs_ns: int, now_ns: int, chunk_id: int) -> Plan:
        """The plan to submit for a chunk of absolute goals whose observation was taken at t_obs_ns.

        `now_ns` is the earliest instant the loop can switch to it (arrival time plus submit margin).
        """
        goals = np.asarray(goals, dtype=np.float64)
        self.in_flight = False
        if self.policy == "full" or self.current is None:
            plan = Plan(now_ns, goals, chunk_id)
        else:
            plan = self._blend(Plan(t_obs_ns, goals, chunk_id), now_ns)
        self.current = plan
        return plan

    def _blend(self, new: Plan, now_ns: int) -> Plan:
        assert self.current is not None
        p = self.period_ns
        # Resample the new chunk on a row grid through now_ns: the loop interpolates linearly between
        # rows, so only a row exactly at the switch instant makes the commanded goal continuous there.
        behind = max(0, -(-(now_ns - new.t0_ns) // p))
        t0 = now_ns - behind * p
        times = t0 + np.arange(len(new.goals) + 1) * p  # one more row: the grid still spans the whole chunk
        old, fresh = self.current.at(times, p), new.at(times, p)
        # Ramp over what is left of the old plan (whole rows), but never shorter than min_blend rows, so
        # a late chunk (old plan already finished and holding) still eases in instead of stepping.
        ramp_ns = max(-(-(self.current.end_ns(p) - now_ns) // p), self.min_blend) * p
        w = np.clip((times - now_ns) / ramp_ns, 0.0, 1.0)[:, None]
        return Plan(t0, (1 - w) * old + w * fresh, new.chunk_id)
