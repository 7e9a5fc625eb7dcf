"""When to ask the policy for a new action chunk and which goals to send to the servo loop.

Times are CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()`, the clock the C loop uses). A plan row k
is the goal for time `t0_ns + k * period`; the C loop interpolates between rows and holds the last one.

* `full`  (upstream behaviour): execute the whole chunk from the moment it arrives, then query again;
  the arm holds the last goal while the model thinks.
* `async`: query when K rows of the current chunk remain. K is fixed (`remaining=K`) or, by default,
  chosen from the measured inference latency (`auto_remaining`): a high percentile of the recent
  queries plus a margin and the switch overhead, in rows at the action rate, bounded by the chunk.
  The new chunk is anchored at its observation time (row 0 belongs to the instant the state was read,
  as in training) and blended with the plan it replaces by a smoothstep weight: 0 on the new chunk at
  the switch instant, 1 at the end of the overlap, with zero slope at both ends, so the commanded goal
  is continuous at the boundary and its velocity is that of the old plan at the switch and of the
  new chunk once the blend ends (to the resolution of the row grid).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POLICIES = ("full", "async")

# The supervisor's tick and how far ahead of "now" it schedules a switch (loop cycles): what a chunk
# needs beyond its inference time to reach the loop.
SUPERVISOR_TICK_S = 0.005
SUBMIT_MARGIN_CYCLES = 2
# auto K: this percentile of the last LATENCY_WINDOW inference latencies, times LATENCY_MARGIN.
LATENCY_PERCENTILE = 90
LATENCY_WINDOW = 20
LATENCY_MARGIN = 1.2


def switch_overhead_s(loop_rate_hz: float) -> float:
    """Seconds between a chunk finishing inference and the loop switching to it, at most."""
    return SUPERVISOR_TICK_S + SUBMIT_MARGIN_CYCLES / loop_rate_hz


def auto_remaining(
    latencies_s: Sequence[float], rate_hz: float, horizon: int, overhead_s: float = 0.0
) -> int:
    """Rows of the current chunk left when the next query starts, so that it arrives in time:
    ceil((LATENCY_MARGIN * p90(recent latencies) + overhead) * rate), within [1, horizon - 1]."""
    recent = np.asarray(latencies_s[-LATENCY_WINDOW:], dtype=np.float64)
    lead_s = LATENCY_MARGIN * float(np.percentile(recent, LATENCY_PERCENTILE)) + overhead_s
    return int(np.clip(math.ceil(lead_s * rate_hz), 1, horizon - 1))


def async_steady_state(horizon: int, remaining: int, latency_s: float, rate_hz: float) -> tuple[float, float]:
    """(seconds held, seconds between queries) per re-plan of `async` in steady state, one inference in
    flight: a query starts when `remaining` rows are left or when the previous chunk arrives, whichever
    is later; the chunk covers its observation time + horizon / rate; the arm holds past that (all the
    time once latency >= horizon / rate: every row is stale on arrival)."""
    interval = max(latency_s, (horizon - remaining) / rate_hz)
    return min(interval, max(0.0, interval + latency_s - horizon / rate_hz)), interval


def full_steady_state(horizon: int, latency_s: float, rate_hz: float) -> tuple[float, float]:
    """(seconds held, seconds between queries) per chunk of `full`: the whole chunk, then a hold while
    the model thinks."""
    return latency_s, horizon / rate_hz + latency_s


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


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 -> 1 on [0, 1] with zero slope at both ends (3x^2 - 2x^3), clipped outside."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class ChunkScheduler:
    """Decides when to query and turns a chunk into the plan the loop executes.

    `remaining`: async only; K rows left when the next query starts, or None (auto) to derive K from
    the latencies given to `observe_latency` (before the first one: `latency_hint_s`, e.g. the
    warm-up query's). `overhead_s`: what a chunk needs beyond inference to reach the loop.
    """

    def __init__(
        self,
        policy: str,
        rate_hz: float,
        horizon: int,
        *,
        remaining: int | None = None,
        min_blend: int = 3,
        overhead_s: float = 0.0,
        latency_hint_s: float | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"chunk policy {policy!r}: expected one of {', '.join(POLICIES)}")
        if policy == "async" and remaining is not None and not 0 < remaining < horizon:
            raise ValueError(
                f"async re-planning needs 0 < remaining ({remaining}) < chunk length ({horizon})"
            )
        if policy == "async" and horizon < 2:
            raise ValueError(f"async re-planning needs a chunk of at least 2 actions (got {horizon})")
        self.policy = policy
        self.rate_hz = rate_hz
        self.period_ns = round(1e9 / rate_hz)
        self.horizon = horizon
        self.fixed_remaining = remaining
        self.min_blend = min_blend
        self.overhead_s = overhead_s
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._hint = [latency_hint_s] if latency_hint_s is not None else []
        self.current: Plan | None = None
        self.in_flight = False

    def observe_latency(self, latency_s: float) -> None:
        self.latencies.append(latency_s)

    @property
    def remaining(self) -> int | None:
        """K in force now (async), None for `full`."""
        if self.policy == "full":
            return None
        if self.fixed_remaining is not None:
            return self.fixed_remaining
        known = list(self.latencies) or self._hint
        if not known:  # nothing measured yet: the earliest query the chunk allows
            return self.horizon - 1
        return auto_remaining(known, self.rate_hz, self.horizon, self.overhead_s)

    def should_query(self, now_ns: int) -> bool:
        if self.in_flight:
            return False
        if self.current is None:
            return True
        if self.policy == "full":
            return now_ns >= self.current.end_ns(self.period_ns)
        return now_ns >= self.current.end_ns(self.period_ns) - self.remaining * self.period_ns

    def budget_s(self, now_ns: int) -> float | None:
        """Inference time a query made now has before the arm would hold: the current plan's end,
        less the switch overhead (negative: already late; None: no plan yet)."""
        if self.current is None:
            return None
        return (self.current.end_ns(self.period_ns) - now_ns) / 1e9 - self.overhead_s

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
        w = smoothstep((times - now_ns) / ramp_ns)[:, None]
        return Plan(t0, (1 - w) * old + w * fresh, new.chunk_id)
