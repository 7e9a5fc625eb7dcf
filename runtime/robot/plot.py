"""One figure of a run from its episode log: what the arm was told, what it did, and why.

Panels, sharing the time axis (seconds from the first loop cycle): per joint the commanded goal and
the present position, chunk switches (dashed lines) and queries (triangles on top), held cycles shaded
(orange: held for want of a chunk; grey: start-up and the stop); inference latency per chunk against
the budget its query had; loop period error; bus errors (cumulative). Long logs are drawn from a
min/max envelope per pixel column (extremes kept); held spans, error cycles and the end are drawn
from every cycle and widened to at least one pixel, so none disappears.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rynn_edge.runtime.robot.episode_metrics import EpisodeTrace, run_span, switch_cycles

MAX_POINTS = 4000  # per line: two per pixel column of a wide figure
MAX_MARKS = 400  # chunk switches / queries drawn individually up to this many in view
HELD_COLOR, STOP_COLOR = "tab:orange", "0.6"


def envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ~max_points of (x, y), keeping each bucket's minimum and maximum and both ends."""
    n = len(x)
    if n <= max_points:
        return x, y
    size = -(-n // (max_points // 2))
    padded = np.concatenate([y, np.full(-n % size, y[-1])]).reshape(-1, size)
    offsets = np.arange(0, padded.shape[0] * size, size)
    keep = np.concatenate([offsets + padded.argmin(1), offsets + padded.argmax(1), [0, n - 1]])
    keep = np.unique(np.minimum(keep, n - 1))
    return x[keep], y[keep]


def spans(mask: np.ndarray, t: np.ndarray, period_s: float, min_width: float) -> list[tuple[float, float]]:
    """(start, width) of each run of True cycles, each at least min_width wide."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(t[a], max(t[b] - t[a] + period_s, min_width)) for a, b in zip(starts, stops, strict=True)]


def joint_indices(names: Sequence[str], wanted: Sequence[str] | None) -> list[int]:
    """Joints by name or 1-based number; ValueError naming the choices."""
    if not wanted:
        return list(range(len(names)))
    out = []
    for w in wanted:
        if w in names:
            out.append(names.index(w))
        elif w.isdigit() and 1 <= int(w) <= len(names):
            out.append(int(w) - 1)
        else:
            raise ValueError(f"unknown joint {w!r}; choose from {', '.join(names)} (or 1..{len(names)})")
    return out


def draw(
    trace: EpisodeTrace,
    *,
    joints: Sequence[str] | None = None,
    t_from: float | None = None,
    t_to: float | None = None,
    title: str = "",
    width_px: int = 1000,
) -> Any:
    """The figure (matplotlib Figure) of a trace with at least one loop cycle."""
    from rynn_edge.runtime.bench.figures import pyplot

    plt = pyplot("use --summary for the numbers alone")
    cfg, steps = trace.config, trace.steps
    t_ns = steps["t_ns"]
    origin = int(t_ns[0])
    t = (t_ns - origin) / 1e9
    lo = t[0] if t_from is None else t_from
    hi = t[-1] if t_to is None else t_to
    if hi <= lo:
        raise ValueError(f"empty time window {lo:g}..{hi:g} s (the run spans 0..{t[-1]:.3f} s)")
    view = (t >= lo) & (t <= hi)
    period_s = 1.0 / float(cfg["loop_rate_hz"])
    min_width = (hi - lo) / width_px
    names = trace.joint_names
    chosen = joint_indices(names, joints)

    held, chunk_id = steps["held"], steps["chunk_id"]
    first, stop = run_span(held, chunk_id)
    index = np.arange(len(held))
    in_run = (index >= first) & (index < stop)
    starved = spans(held & in_run & view, t, period_s, min_width)
    apart = spans(~in_run & view, t, period_s, min_width)
    switches = t[switch_cycles(held, chunk_id, first, stop)]
    switches = switches[(switches >= lo) & (switches <= hi)]
    queries = np.array([(q["t_ns"] - origin) / 1e9 for q in trace.queries])
    queries = queries[(queries >= lo) & (queries <= hi)] if len(queries) else queries
    marks = len(switches) <= MAX_MARKS and len(queries) <= MAX_MARKS

    rows = len(chosen) + 3
    fig, axes = plt.subplots(rows, 1, sharex=True, figsize=(width_px / 72, 1.55 * rows + 0.6))
    for ax in axes:
        ax.broken_barh(
            apart, (0, 1), transform=ax.get_xaxis_transform(), color=STOP_COLOR, alpha=0.25, gid="apart"
        )
        ax.broken_barh(
            starved, (0, 1), transform=ax.get_xaxis_transform(), color=HELD_COLOR, alpha=0.45, gid="held"
        )
        ax.grid(True, alpha=0.3)
    goal, state = steps["goal"], steps["state"]
    for ax, j in zip(axes, chosen, strict=False):
        ax.plot(*envelope(t[view], goal[view, j]), lw=1.0, color="tab:blue", label="goal (commanded)")
        ax.plot(*envelope(t[view], state[view, j]), lw=0.9, color="tab:green", label="present")
        if marks:
            ax.vlines(
                switches,
                0,
                1,
                transform=ax.get_xaxis_transform(),
                colors="0.3",
                lw=0.6,
                ls="--",
                gid="switches",
            )
            ax.plot(queries, np.ones(len(queries)), "v", ms=4, color="tab:purple", ls="", clip_on=False,
                    transform=ax.get_xaxis_transform(), label="query")  # fmt: skip
        ax.set_ylabel(names[j] + ("\n(0-100)" if names[j] == "gripper" else "\n(deg)"), fontsize=8)
    _latency_panel(axes[-3], trace, origin, lo, hi)
    err_ms = steps["period_error_ns"] / 1e6
    ax = axes[-2]
    ax.plot(*envelope(t[view], err_ms[view]), lw=0.8, color="tab:gray", label="period error")
    ax.set_ylabel("loop period\nerror (ms)", fontsize=8)
    _bus_panel(axes[-1], trace, t, view, origin)
    _mark_end(axes, trace, t, hi)

    axes[-1].set_xlabel("time since the first loop cycle (s)")
    axes[-1].set_xlim(lo, hi)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=HELD_COLOR, alpha=0.45, label="held: no chunk"),
        plt.Rectangle((0, 0), 1, 1, color=STOP_COLOR, alpha=0.25, label="start-up / stop"),
    ]
    first_handles = axes[0].get_legend_handles_labels()[0]
    if marks:
        first_handles.append(plt.Line2D([], [], color="0.3", lw=0.6, ls="--", label="chunk switch"))
    axes[0].legend(handles=first_handles + handles, fontsize=7, loc="upper left", ncol=5, framealpha=0.8)
    many = max(len(switches), len(queries))
    note = "" if marks else f" (switches and queries not marked: {many} in view; zoom with --from/--to)"
    fig.suptitle((title + note).strip(), fontsize=10)
    return fig


def _latency_panel(ax: Any, trace: EpisodeTrace, origin: int, lo: float, hi: float) -> None:
    budgets = {q["chunk_id"]: q for q in trace.queries}
    rows = []
    for c in trace.chunks:
        q = budgets.get(c["chunk_id"])
        if q is not None:
            rows.append(((q["t_ns"] - origin) / 1e9, c["latency_s"] * 1e3, q["budget_s"]))
    rows = [r for r in rows if lo <= r[0] <= hi]
    if rows:
        tq = np.array([r[0] for r in rows])
        latency = np.array([r[1] for r in rows])
        budget = np.array([np.nan if r[2] is None else r[2] * 1e3 for r in rows])
        late = latency > np.nan_to_num(budget, nan=np.inf)
        ax.plot(tq, budget, "_", ms=9, mew=2, color="tab:blue", label="budget")
        ax.plot(tq[~late], latency[~late], "o", ms=3, color="tab:green", label="inference latency")
        ax.plot(tq[late], latency[late], "o", ms=4, color="tab:red", label="late (latency > budget)")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.legend(fontsize=7, loc="upper left", ncol=3, framealpha=0.8)
    ax.set_ylabel("per query\n(ms)", fontsize=8)


def _bus_panel(ax: Any, trace: EpisodeTrace, t: np.ndarray, view: np.ndarray, origin: int) -> None:
    if trace.bus:
        tb = np.array([(b["t_ns"] - origin) / 1e9 for b in trace.bus])
        for key, color in (("timeouts", "tab:red"), ("checksum_errors", "tab:purple")):
            ax.step(
                tb,
                [b[key] for b in trace.bus],
                where="post",
                color=color,
                lw=1.0,
                label=key.replace("_", " "),
            )
    missing = np.cumsum((~trace.steps["valid"]).sum(axis=1))
    ax.plot(*envelope(t[view], missing[view]), color="tab:gray", lw=1.0, label="missing replies (loop)")
    flagged = (trace.steps["servo_error"] != 0).any(axis=1) & view
    if flagged.any():
        ax.vlines(
            t[flagged], 0, 1, transform=ax.get_xaxis_transform(), colors="tab:red", lw=1.0, gid="servo_error"
        )
    ax.set_ylabel("bus errors\n(cumulative)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", ncol=3, framealpha=0.8)


def _mark_end(axes: Sequence[Any], trace: EpisodeTrace, t: np.ndarray, hi: float) -> None:
    if trace.end is None or t[-1] > hi:
        return
    completed = trace.end.get("exit_reason") == "completed"
    for ax in axes:
        ax.axvline(t[-1], color="black" if completed else "tab:red", lw=1.2, gid="end")
    axes[0].annotate(
        f"end: {trace.end.get('exit_reason')}",
        (t[-1], 1.0),
        xycoords=axes[0].get_xaxis_transform(),
        ha="right",
        va="bottom",
        fontsize=8,
        color="black" if completed else "tab:red",
    )
