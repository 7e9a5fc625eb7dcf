"""Episode log: survives a hard kill, a power cut mid-write and a full disk, and reads back whole records
(gzip, or plain logs of earlier versions), only a torn tail dropped."""

from __future__ import annotations

import dataclasses
import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.calibration import JointMap
from rynn_edge.runtime.robot.episode_log import CorruptLogError, EpisodeLog, iter_episode, read_episode

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
        log.write("query", t_ns=np.int64(5), state=np.array([1.5, -2.0]), chunk_id=np.int32(3))
    records = read_episode(path)
    assert records == [
        {"kind": "start", "rate": 30.0, "ids": [1, 2, 3]},
        {"kind": "query", "t_ns": 5, "state": [1.5, -2.0], "chunk_id": 3},
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
    path = tmp_path / "ep.jsonl.gz"
    ends = []  # file size after each record's sync: where a power cut can fall
    with EpisodeLog(path, sync_interval_s=0.0) as log:
        for i in range(3):
            log.write("step", i=i, pad="x" * 50)
            ends.append(path.stat().st_size)
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b" and gzip.decompress(data).count(b"\n") == 3  # whole gzip, zcat-able
    read = {}
    for cut in range(ends[1], len(data)):  # a power cut anywhere in the last sync or the trailer
        path.write_bytes(data[:cut])
        read[cut] = [r["i"] for r in read_episode(path)]
    # Whole records only: record 2 appears once its newline decompresses (a few bytes before the end of its
    # sync, whose end-of-block code and flush marker may still be cut), never part of it.
    assert all(ids in ([0, 1], [0, 1, 2]) for ids in read.values())
    assert read[(ends[1] + ends[2]) // 2] == [0, 1] and read[ends[2]] == [0, 1, 2]
    path.write_bytes(data + b"more")
    with pytest.raises(CorruptLogError, match="after the end of the compressed stream"):
        read_episode(path)


def test_damaged_compressed_data_is_refused_naming_the_line_it_starts_near(tmp_path):
    path = tmp_path / "ep.jsonl.gz"
    with EpisodeLog(path, sync_interval_s=0.0) as log:
        for i in range(400):
            log.write("step", i=i, t=i * 0.37)
            if i == 299:
                damage_at = path.stat().st_size + 2  # inside record 300 (line 301)
    data = bytearray(path.read_bytes())
    data[damage_at : damage_at + 8] = bytes(8)
    path.write_bytes(data)
    with pytest.raises(CorruptLogError, match=r"line (\d+) onward is damaged") as err:
        read_episode(path)
    assert 250 < int(err.value.args[0].split("line ")[1].split()[0]) <= 301


def test_plain_logs_of_earlier_versions_still_read(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_bytes(b'{"kind":"start","config":{}}\n{"kind":"step","i":0}\n{"kind":"st')
    torn = []
    assert [r["kind"] for r in iter_episode(path, on_torn=torn.append)] == ["start", "step"]
    assert torn == [3]
    path.write_bytes(b'{"kind":"start"}\n{"ki\n{"kind":"end"}\n')
    with pytest.raises(CorruptLogError, match="line 2"):
        read_episode(path)


def test_records_are_stored_compact_and_steps_keep_their_units(tmp_path):
    """With the calibration in the start record, a step's state and goal are not written but read back
    equal to the values the run computed from the same raw ticks; nor is its drain time."""
    calib = so100.simulator_calibration()
    joints = JointMap(calib, so100.NORM_MODES)
    config = {"motors": list(so100.MOTORS), "norm_modes": [m.value for m in so100.NORM_MODES.values()]}
    present, goal = (
        np.array([100, 2048, 3000, 1024, 4095, 2600]),
        np.array([90, 2050, 2990, 1030, 4000, 2400]),
    )
    step = {
        "present_raw": present,
        "goal_raw": goal,
        "state": joints.to_units(present),
        "goal": joints.to_units(goal),
    }
    path = tmp_path / "ep.jsonl.gz"
    plan = np.array([[12.345678912, -0.1234564], [1.0, 2.5]])
    with EpisodeLog(path) as log:
        log.write("start", config=config, calibration={n: dataclasses.asdict(c) for n, c in calib.items()})
        log.write("step", t_ns=7, **step)
        log.write("chunk", t_ns=8, latency_s=0.123456789, plan=plan, plan_raw=np.array([[2048, 4095]]))
    stored = gzip.decompress(path.read_bytes())
    assert b'"state"' not in stored and b'"goal"' not in stored and b'"t_ns":7' not in stored
    _, read, chunk = read_episode(path)
    assert read["state"] == step["state"].tolist() and read["goal"] == step["goal"].tolist()
    # Chunk arrays to 1e-6 of their unit; scalars (the latency the metrics read) and ticks exact.
    assert chunk["plan"] == [[12.345679, -0.123456], [1.0, 2.5]] and chunk["plan_raw"] == [[2048, 4095]]
    assert chunk["latency_s"] == 0.123456789 and chunk["t_ns"] == 8


DISK_FULL_WRITER = textwrap.dedent(
    """
    import resource, sys
    from rynn_edge.runtime.robot.episode_log import EpisodeLog
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    log = EpisodeLog(sys.argv[1], sync_interval_s=0.0)
    for i in range(100_000):
        try:
            log.write("step", i=i, pad=str(i * 7919) * 40)  # ~150 compressed bytes: a write ends mid-record
        except OSError as err:
            print(i, err.strerror, flush=True)
            break
    log.close()
    """
)


@pytest.mark.parametrize("limit", [5000, 5001, 5013])
def test_a_full_disk_leaves_the_log_ending_on_a_whole_record(tmp_path, limit):
    """RLIMIT_FSIZE stands in for a full disk: the failing write is cut short by the kernel, mid-record;
    the log is truncated back to the last whole record and every reader sees records 0..n-1."""
    path = tmp_path / "ep.jsonl.gz"
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL_WRITER, str(path), str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    failed_at, reason = proc.stdout.split(maxsplit=1)
    assert reason.strip() == "File too large" and path.stat().st_size < limit
    torn = []
    assert [r["i"] for r in iter_episode(path, on_torn=torn.append)] == list(range(int(failed_at)))
    assert torn == []
