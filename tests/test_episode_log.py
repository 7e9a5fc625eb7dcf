"""Episode log: survives a hard kill mid-write and reads back with only the torn tail dropped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rynn_edge.runtime.robot.episode_log import CorruptLogError, EpisodeLog, read_episode

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from rynn_edge.runtime.robot.episode_log import EpisodeLog
    log = EpisodeLog(sys.argv[1])
    i = 0
    while True:
        log.write("step", i=i, t_wall=time.time(), state=np.arange(6) * 0.5, pad="x" * 200)
        i += 1
        if i == 50:
            print("ready", flush=True)
        time.sleep(0.001)
    """
)


def test_records_round_trip_with_numpy_values(tmp_path):
    path = tmp_path / "ep.jsonl"
    with EpisodeLog(path) as log:
        log.write("start", rate=30.0, ids=[1, 2, 3])
        log.write("step", t_ns=np.int64(5), state=np.array([1.5, -2.0]), chunk_id=np.int32(3))
    records = read_episode(path)
    assert records == [
        {"kind": "start", "rate": 30.0, "ids": [1, 2, 3]},
        {"kind": "step", "t_ns": 5, "state": [1.5, -2.0], "chunk_id": 3},
    ]


def test_hard_kill_loses_at_most_a_sync_interval(tmp_path):
    path = tmp_path / "ep.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    records = read_episode(path)
    assert [r["i"] for r in records] == list(range(len(records)))  # complete, in order, no gaps
    assert killed_at - records[-1]["t_wall"] < 0.25  # sync interval 0.1 s plus scheduling slack


def test_torn_last_record_is_dropped_but_damage_elsewhere_is_reported(tmp_path):
    path = tmp_path / "ep.jsonl"
    with EpisodeLog(path) as log:
        for i in range(3):
            log.write("step", i=i)
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # power cut in the middle of the last line
    assert [r["i"] for r in read_episode(path)] == [0, 1]
    lines = data.split(b"\n")
    path.write_bytes(b"\n".join([lines[0], lines[1][:5], lines[2], b""]))
    with pytest.raises(CorruptLogError, match="line 2"):
        read_episode(path)
