"""Seam and starvation metrics, `rynn-edge plot` and its input checks, on a small hand-made episode whose
numbers are known: 5 start-up cycles, chunk 1 for 20 cycles, 3 cycles held for want of chunk 2, chunk 2
(starting 5 units off, a jump at the switch) for 20 cycles, then a 3-cycle stop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rynn_edge.runtime.cli import main
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.episode_log import EpisodeLog, _plain
from rynn_edge.runtime.robot.episode_metrics import METRIC_KEYS, EpisodeTrace, episode_metrics, load_trace
from rynn_edge.runtime.robot.plot import MAX_POINTS, draw, envelope, spans

LOOP_HZ, MAX_STEP = 100.0, 40
PERIOD_NS = round(1e9 / LOOP_HZ)
# (cycles, held, chunk id) per phase
PHASES = [(5, True, -1), (20, False, 1), (3, True, 1), (20, False, 2), (3, True, -1)]


def records() -> list[tuple[str, dict]]:
    """The episode as (kind, fields) in the order the supervisor writes them, with numpy values."""
    out = [
        (
            "start",
            {
                "config": {
                    "chunk_policy": "async",
                    "async_remaining": None,
                    "rate_hz": 30.0,
                    "loop_rate_hz": LOOP_HZ,
                    "time_horizon": 20,
                    "motors": ["shoulder_pan", "gripper"],
                },
                "max_step": MAX_STEP,
            },
        ),
        ("query", {"chunk_id": 1, "t_ns": 0, "budget_s": None, "remaining": 19}),
        ("chunk", {"chunk_id": 1, "t_ns": 4 * PERIOD_NS, "switch_ns": 5 * PERIOD_NS, "latency_s": 0.04}),
        ("query", {"chunk_id": 2, "t_ns": 20 * PERIOD_NS, "budget_s": 0.05, "remaining": 5}),
    ]
    goal, cycle = np.zeros(2), 0
    for count, held, chunk_id in PHASES:
        for k in range(count):
            if not held:
                # chunk 1: +1 unit per cycle; chunk 2 starts 5 units (50 ticks > MAX_STEP) further
                goal = goal + (1.0 if (k or chunk_id == 1) else 5.0)
            fields = {
                "deadline_ns": np.int64(cycle * PERIOD_NS),
                "period_error_ns": np.int64(20_000 + 1000 * (cycle % 7)),
                "held": held,
                "chunk_id": np.int64(chunk_id),
                "valid": np.array([True, cycle != 30]),
                "servo_error": np.array([0, 32 if cycle == 40 else 0], dtype=np.uint8),
                "goal": goal.copy(),
                "state": goal - 0.5,
                "goal_raw": np.round(goal * 10).astype(np.int32),
            }
            out.append(("step", fields))
            cycle += 1
            if cycle == 27:
                out.append(("chunk", {"chunk_id": 2, "t_ns": 0, "switch_ns": 0, "latency_s": 0.09}))
            if cycle % 10 == 0:
                bus = {"t_ns": cycle * PERIOD_NS, "timeouts": cycle // 10, "checksum_errors": 0}
                out.append(("bus", bus))
    out.append(("end", {"exit_reason": "completed", "exit_code": 0}))
    return out


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "episode.jsonl.gz"
    with EpisodeLog(path) as log:
        for kind, fields in records():
            log.write(kind, **fields)
    return path


def test_metrics_of_a_known_episode(log_path):
    m = episode_metrics(load_trace(log_path))
    assert m["starvation"] == {
        "cycles": 43,
        "held_cycles": 3,
        "held_fraction": round(3 / 43, 4),
        "startup_cycles": 5,
        "stop_cycles": 3,
    }
    seams = m["seams"]
    assert (seams["switches"], seams["slew_limited_switches"], seams["slew_limited_cycles"]) == (1, 1, 1)
    pan = seams["per_joint"]["shoulder_pan"]["velocity_jump"]
    # Inside a chunk the goal moves +1 per cycle: no velocity change at all. At the switch the goal had been
    # held (v = 0), then steps 5 units in one cycle: |dv| = 5 x 100 units/s, then back to +1/cycle.
    assert pan["inside"]["max"] == 0.0
    assert pan["at_switch"]["max"] == pytest.approx(500.0)
    budget = m["inference_budget"]
    assert (budget["chunks"], budget["with_budget"], budget["late"]) == (2, 1, 1)
    assert budget["slack_ms"]["min"] == pytest.approx(-40.0)
    assert m["replanning"] == {
        "chunk_policy": "async",
        "async_remaining": "auto",
        "remaining_used": {"min": 5.0, "p50": 12.0, "max": 19.0},
        "switches": 1,
        "replans_per_s": round(1 / (42 * PERIOD_NS / 1e9), 3),
    }


def test_live_trace_and_log_give_equal_metrics(log_path):
    live = EpisodeTrace()  # what the supervisor feeds: the same dicts, numpy values and all
    for kind, fields in records():
        live.add(kind, fields)
    assert episode_metrics(live) == episode_metrics(load_trace(log_path))
    assert set(METRIC_KEYS) == set(episode_metrics(live))


def test_a_run_that_never_reached_the_loop_has_empty_metrics():
    m = episode_metrics(EpisodeTrace())  # e.g. a servo silent during setup: the summary still comes
    assert m["starvation"]["cycles"] == 0 and m["starvation"]["held_fraction"] is None
    assert m["seams"]["switches"] == 0 and m["inference_budget"]["latency_ms"]["p50"] is None


def test_plot_draws_every_panel_and_event(log_path):
    trace = load_trace(log_path)
    fig = draw(trace)
    axes = fig.axes
    assert len(axes) == 2 + 3  # two joints, latency, period error, bus
    for ax in axes[:2]:
        labels = [line.get_label() for line in ax.get_lines()]
        assert {"goal (commanded)", "present", "query"} <= set(labels)
        [held] = [c for c in ax.collections if c.get_gid() == "held"]
        [apart] = [c for c in ax.collections if c.get_gid() == "apart"]
        assert len(held.get_paths()) == 1 and len(apart.get_paths()) == 2  # the starved span; start-up, stop
        [switch] = [c for c in ax.collections if c.get_gid() == "switches"]
        assert len(switch.get_segments()) == 1
    goal_line = next(line for line in axes[0].get_lines() if line.get_label() == "goal (commanded)")
    assert np.allclose(goal_line.get_ydata(), trace.steps["goal"][:, 0])
    latency = {line.get_label(): line for line in axes[2].get_lines()}
    assert len(latency["late (latency > budget)"].get_xdata()) == 1  # chunk 2: 90 ms for a 50 ms budget
    assert len(latency["inference latency"].get_xdata()) == 1  # chunk 1 had no budget (first query)
    bus = {line.get_label(): line for line in axes[4].get_lines()}
    assert bus["missing replies (loop)"].get_ydata()[-1] == 1 and bus["timeouts"].get_ydata()[-1] == 5
    assert any(c.get_gid() == "servo_error" for c in axes[4].collections)
    assert all(any(line.get_gid() == "end" for line in ax.get_lines()) for ax in axes)
    fig.clf()


def test_envelope_keeps_extremes_and_ends_and_spans_stay_visible():
    t = np.arange(200_000) / 100.0
    y = np.sin(t)
    y[123_457] = 50.0  # one spike in a 1-hour-like series
    x, v = envelope(t, y)
    assert len(x) <= MAX_POINTS + 2 and v.max() == 50.0 and v.min() == y.min()
    assert x[0] == t[0] and x[-1] == t[-1] and np.all(np.diff(x) > 0)
    mask = np.zeros(len(t), dtype=bool)
    mask[1000] = True  # a single held cycle, 10 ms in 2000 s
    [(start, width)] = spans(mask, t, 0.01, min_width=2.0)
    assert start == t[1000] and width == 2.0


def test_plot_command_writes_a_png_and_prints_the_metrics(log_path, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert main(["plot", str(log_path), "-o", str(out), "--joints", "gripper", "--from", "0.1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "held for want of a chunk: 7.0% of 43 cycles" in text
    assert main(["plot", str(log_path), "--summary", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["figure"] is None and not log_path.with_name("episode.png").exists()
    assert {k: printed[k] for k in METRIC_KEYS} == episode_metrics(load_trace(log_path))


def test_plot_command_refuses_bad_requests(log_path, capsys):
    assert main(["plot", str(log_path), "--joints", "elbow"]) == 2
    assert "unknown joint 'elbow'; choose from shoulder_pan, gripper" in capsys.readouterr().err
    assert main(["plot", str(log_path), "--from", "5", "--to", "1"]) == 2
    assert "empty time window" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "line 1 is not a JSON record"),
        (b'{"a": 1}\n', "is not an episode log: line 1 is not a 'start' record"),
        (b"", "is not an episode log: it is empty"),
        (b"hello", "its only line is incomplete"),
    ],
)
def test_not_an_episode_log_is_refused_naming_file_and_line(tmp_path, capsys, content, message):
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_trace(path)
    assert main(["plot", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err


def plain_log(path, recs) -> bytes:
    """The records as the plain JSON Lines of earlier versions (still read); returns the bytes."""
    data = b"".join(
        json.dumps({"kind": kind, **fields}, default=_plain, separators=(",", ":")).encode() + b"\n"
        for kind, fields in recs
    )
    path.write_bytes(data)
    return data


def test_damage_inside_is_refused_but_a_torn_last_line_is_read_with_a_note(tmp_path, capsys):
    lines = plain_log(tmp_path / "episode.jsonl", records()).split(b"\n")
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b"\n".join(lines[:-2]) + b"\n" + lines[-2][:9])  # the end record cut mid-write
    trace = load_trace(torn)
    assert trace.torn_line == len(lines) - 1 and trace.end is None and trace.steps.n == 51
    assert main(["plot", str(torn), "--summary"]) == 0
    assert f"note: {torn}: line {len(lines) - 1} is incomplete" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\n".join([lines[0], lines[1][:7], *lines[2:]]))
    with pytest.raises(UserError, match="line 2 is not a JSON record"):
        load_trace(broken)
    missing_field = tmp_path / "odd.jsonl"
    missing_field.write_bytes(b"\n".join([lines[0], b'{"kind": "step", "held": true}', b""]))
    with pytest.raises(UserError, match="line 2: 'step' record: has no 'deadline_ns' field"):
        load_trace(missing_field)


def test_plain_and_compressed_logs_of_one_run_give_the_same_summary(log_path, tmp_path, capsys):
    plain = tmp_path / "plain.jsonl"
    plain_log(plain, records())
    assert log_path.stat().st_size < plain.stat().st_size
    outputs = []
    for path in (plain, log_path):
        assert main(["plot", str(path), "--summary"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "held for want of a chunk" in outputs[0]
