"""`rynn-edge demo` on a machine with no hardware: tiny model, simulator, synthetic cameras."""

from __future__ import annotations

import json
import subprocess
import sys

from rynn_edge.runtime.commands.demo import default_workdir, tiny_bundle
from rynn_edge.runtime.robot.episode_log import read_episode


def test_demo_runs_end_to_end_and_caches_its_checkpoint(tmp_path, capsys):
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "rynn_edge.runtime.cli", "demo", "--workdir", str(workdir), "--duration", "2",
         "--loop-rate", "50", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "writing a tiny random SO100 checkpoint" in proc.stdout
    # The simulator asks for real-time scheduling and says whether it got it; the status line says whose
    # errors it counts.
    assert (
        "simulator scheduling: SCHED_FIFO" in proc.stdout or "simulator scheduling: normal (" in proc.stdout
    )
    assert "simulated bus errors" in proc.stderr
    summary = json.loads(lines[-1])
    assert summary["exit_reason"] == "completed" and summary["torque_off"] == [1, 2, 3, 4, 5, 6]
    assert summary["cycles"] > 50 and summary["chunks_executed"] >= 1
    log = read_episode(workdir / "episode.jsonl.gz")
    assert log[0]["kind"] == "start" and log[-1]["kind"] == "end"
    # A second demo reuses the cached checkpoint instead of writing it again.
    model = workdir / "tiny-so100" / "model"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in model.iterdir())
    assert tiny_bundle(workdir)["model"] == model
    assert "writing" not in capsys.readouterr().out
    assert sorted((p.name, p.stat().st_mtime_ns) for p in model.iterdir()) == before


def test_default_workdir_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_workdir() == tmp_path / "rynn-edge" / "demo"
