"""`rynn-edge run` end to end: the real CLI, a tiny real model (torch), synthetic cameras and the bus
simulator in its own process. One test per fault kind; each checks the exit code and message, that
torque is off on every servo that still answers (read back from the simulator), and that the episode
log is complete and readable."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rynn_edge.runtime.cli import main
from rynn_edge.runtime.robot import so100
from rynn_edge.runtime.robot.calibration import save_calibration
from rynn_edge.runtime.robot.episode_log import iter_episode, read_episode
from rynn_edge.runtime.robot.episode_metrics import METRIC_KEYS
from rynn_edge.runtime.sim import launch
from rynn_edge.runtime.tokens.prompt import state_block
from rynn_edge.runtime.tokens.stats import load_stats
from rynn_edge.runtime.tokens.vocab import N_BINS, STATE_VALUE_OFFSET

CAMERAS = ("front=synthetic", "wrist=synthetic")
ALL_IDS = [1, 2, 3, 4, 5, 6]


@dataclass
class RunResult:
    code: int
    summary: dict
    stderr: str
    log: list[dict]
    servos: dict[int, dict]  # simulator state after the run, by id


def run_against_sim(
    bundle: dict[str, Path],
    tmp_path: Path,
    *,
    faults: tuple[str, ...] = (),
    duration: float = 3.0,
    cameras: tuple[str, ...] = CAMERAS,
    extra: tuple[str, ...] = (),
    signal_after_chunks: int | None = None,
    preexec_fn=None,
) -> RunResult:
    """Start `rynn-edge run` first; start the simulator once the model is loaded (--port-wait), so the
    simulator's fault times count from the moment the run reaches the arm."""
    calibration = tmp_path / "calibration.json"
    save_calibration(calibration, so100.simulator_calibration())
    link, log_path = tmp_path / "ttySO100", tmp_path / "episode.jsonl"
    cmd = [
        sys.executable, "-m", "rynn_edge.runtime.cli", "run", str(bundle["model"]),
        "--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"]), "--robot", "so100",
        "--port", str(link), "--port-wait", "120", "--calibration", str(calibration),
        "--instruction", "put the cube in the box", "--duration", str(duration),
        "--episode-log", str(log_path), "--loop-rate", "50", "--json",
        # a starved simulator on a busy 2-core CI box can miss a few cycles; a cut servo misses them all
        "--max-missed-cycles", "25",
        *[arg for cam in cameras for arg in ("--camera", cam)], *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn
    )
    lines: list[str] = []
    waiting = threading.Event()

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "waiting for" in line:
                waiting.set()

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    try:
        assert waiting.wait(120), "".join(lines)
        with launch(link=link, faults=faults, seed=1) as port:
            if signal_after_chunks is not None:
                deadline = time.monotonic() + 60
                while not any(f"chunks {signal_after_chunks}" in line for line in lines):
                    assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)  # the summary is one short line: it never fills the stdout pipe
            stdout = proc.stdout.read()
            pumping.join(10)
            servos = {s["id"]: s for s in port.state()["servos"]}
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines)
    assert stdout.strip(), stderr
    return RunResult(proc.returncode, json.loads(stdout), stderr, read_episode(log_path), servos)


def check_safe_state(result: RunResult, reason: str, code: int, *, silent: tuple[int, ...] = ()) -> None:
    s = result.summary
    assert (result.code, s["exit_reason"], s["exit_code"]) == (code, reason, code), result.stderr
    answering = [i for i in ALL_IDS if i not in silent]
    assert s["torque_off"] == answering and s["no_answer"] == list(silent)
    for sid in answering:  # read back from the simulated servos, not taken from our own report
        assert result.servos[sid]["torque"] == 0, (sid, result.servos[sid])
    # A complete log: start, every loop cycle without a gap, the end record with the same verdict.
    log = result.log
    assert log[0]["kind"] == "start" and log[-1]["kind"] == "end"
    assert log[-1]["exit_reason"] == reason
    cycles = [r["cycle"] for r in log if r["kind"] == "step"]
    assert cycles and cycles == list(range(len(cycles))) and len(cycles) == s["cycles"]


@pytest.fixture(scope="module")
def bundle(so100_bundle):
    return so100_bundle


def test_normal_end_full_chunks(bundle, tmp_path, capsys):
    r = run_against_sim(bundle, tmp_path, duration=3.0, extra=("--log-frames",))
    check_safe_state(r, "completed", 0)
    s = r.summary
    assert s["chunks_executed"] >= 1 and s["loop_rate_hz"]["achieved"] == pytest.approx(50, rel=0.05)
    assert s["period_error_ms"]["p50"] < 5 and s["inference_latency_ms"]["p50"] > 0
    assert s["warm_up_ms"] > 0  # one blocking query ran before the loop started
    queries = {q["t_obs_ns"]: np.array(q["state"]) for q in r.log if q["kind"] == "query"}
    chunks = [c for c in r.log if c["kind"] == "chunk"]
    for c in chunks:  # SO100 semantics: joints = query-time state + offsets, gripper absolute
        state, actions, goals = queries[c["t_obs_ns"]], np.array(c["actions"]), np.array(c["goals"])
        close = {"atol": 1e-5}  # the log stores chunk arrays to 1e-6
        assert np.allclose(goals[:, :5], state[:5] + actions[:, :5], **close) and np.allclose(
            goals[:, 5], actions[:, 5], **close
        )
    for q in (x for x in r.log if x["kind"] == "query"):  # the frames each query saw, as JPEG files
        assert [Path(f).name for f in q["frames"]] == [
            f"chunk{q['chunk_id']:06d}_{c}.jpg" for c in ("front", "wrist")
        ]
        assert all(cv2.imread(str(tmp_path / f)).shape == (240, 320, 3) for f in q["frames"])
    # The arm followed the first chunk: the simulated servos moved to its (clamped) goals.
    steps = [x for x in r.log if x["kind"] == "step" and x["chunk_id"] == chunks[0]["chunk_id"]]
    assert steps and any(x["goal_raw"] != steps[0]["goal_raw"] for x in steps)
    # The log stores no step units (rebuilt from the raw ticks): plot --summary gives the run's own metrics,
    # from the compressed log and from the same records written as plain JSON Lines (the earlier format).
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in r.log))
    printed = []
    for log in (tmp_path / "episode.jsonl", plain):
        assert main(["plot", str(log), "--summary", "--json"]) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert {k: printed[0][k] for k in METRIC_KEYS} == {k: s[k] for k in METRIC_KEYS}
    assert {k: printed[1][k] for k in METRIC_KEYS} == {k: s[k] for k in METRIC_KEYS}


def test_async_chunks_switch_without_a_jump(bundle, tmp_path):
    r = run_against_sim(
        bundle, tmp_path, duration=4.0, extra=("--chunk-policy", "async", "--async-remaining", "15")
    )
    check_safe_state(r, "completed", 0)
    chunks = [c for c in r.log if c["kind"] == "chunk"]
    assert len(chunks) >= 2, r.stderr
    period = round(1e9 / 30)  # the scheduler's integer row period
    for old, new in zip(chunks, chunks[1:], strict=False):
        t = new["switch_ns"]

        def at(c, t=t):
            x = (t - c["t0_ns"]) / period
            plan = np.array(c["plan"])
            return np.array([np.interp(x, np.arange(len(plan)), plan[:, a]) for a in range(plan.shape[1])])

        assert np.allclose(at(old), at(new), atol=1e-6)  # continuous at the boundary


@pytest.mark.parametrize(
    ("fault", "counter"),
    [("drop:0.05", "timeouts"), ("corrupt:0.05", "checksum_errors"), ("late:60:0.05", "timeouts")],
)
def test_transient_bus_faults_are_retried_and_counted(bundle, tmp_path, fault, counter):
    r = run_against_sim(bundle, tmp_path, faults=(fault,), duration=2.0)
    check_safe_state(r, "completed", 0)
    assert sum(s[counter] for s in r.summary["bus"].values()) > 0
    assert r.summary["chunks_executed"] >= 1


def test_silent_servo(bundle, tmp_path):
    r = run_against_sim(bundle, tmp_path, faults=("silent:3@1.0",), duration=30.0)
    check_safe_state(r, "servo_lost", 3, silent=(3,))
    assert "elbow_flex (id 3) stopped answering" in r.summary["message"]
    assert r.servos[3]["torque"] == 1  # it cannot hear the torque-off: reported, not pretended


def test_overload_bit(bundle, tmp_path):
    r = run_against_sim(bundle, tmp_path, faults=("overload:6@1.0",), duration=30.0)
    check_safe_state(r, "servo_error", 4)
    assert "gripper (id 6)" in r.summary["message"] and "overload" in r.summary["message"]


def test_camera_lost(bundle, tmp_path):
    r = run_against_sim(bundle, tmp_path, cameras=("front=synthetic", "wrist=synthetic:1"), duration=30.0)
    check_safe_state(r, "camera_lost", 5)
    assert "camera wrist" in r.summary["message"]


def test_inference_stalled(bundle, tmp_path):
    r = run_against_sim(bundle, tmp_path, duration=30.0, extra=("--inference-deadline", "0.02"))
    check_safe_state(r, "inference_stalled", 6)
    assert "deadline 0.02 s" in r.summary["message"]


def test_sigterm_goes_to_the_rest_pose_then_torque_off(bundle, tmp_path):
    rest = [10.0, -20.0, 15.0, 0.0, 30.0, 40.0]  # degrees, gripper 0-100
    extra = ("--rest-pose", ",".join(map(str, rest)), "--rest-seconds", "0.5")
    r = run_against_sim(bundle, tmp_path, duration=60.0, extra=extra, signal_after_chunks=1)
    check_safe_state(r, "terminated", 143)
    assert r.summary["chunks_executed"] >= 1
    last = [x for x in r.log if x["kind"] == "step"][-1]
    assert np.allclose(last["goal"], rest, atol=0.1)  # within one tick
    assert np.allclose(last["state"], rest, atol=0.5)  # and the arm got there before torque off


def test_wrong_camera_count_is_refused_before_the_bus(bundle, tmp_path):
    calibration = tmp_path / "calibration.json"
    save_calibration(calibration, so100.simulator_calibration())
    absent = tmp_path / "no-such-port"
    proc = subprocess.run(
        [
            sys.executable, "-m", "rynn_edge.runtime.cli", "run", str(bundle["model"]),
            "--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"]),
            "--port", str(absent), "--calibration", str(calibration),
            "--instruction", "put the cube in the box", "--camera", "front=synthetic",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "takes 2 camera views; got 1 --camera" in proc.stderr and "Traceback" not in proc.stderr


def test_exit_codes_are_documented():
    out = subprocess.run(
        [sys.executable, "-m", "rynn_edge.runtime.cli", "run", "--help"], capture_output=True, text=True
    ).stdout
    for needle in (
        "0 completed",
        "3 servo_lost",
        "4 servo_error",
        "5 camera_lost",
        "6 inference_stalled",
        "130 interrupted",
        "143 terminated",
    ):
        assert needle in " ".join(out.split()), needle


def test_disk_full_during_the_run_still_stops_safely(bundle, tmp_path):
    """The episode log hits RLIMIT_FSIZE ("File too large") mid-run: log_failed (10), torque off on every
    servo, and every complete line of the log parses."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    r = run_against_sim(bundle, tmp_path, duration=20.0, preexec_fn=small_files)
    s = r.summary
    assert (r.code, s["exit_reason"]) == (10, "log_failed"), (s, r.stderr)
    assert "File too large" in s["message"] and "Traceback" not in r.stderr
    assert s["torque_off"] == ALL_IDS and all(r.servos[i]["torque"] == 0 for i in ALL_IDS)
    assert r.log[0]["kind"] == "start" and len(r.log) > 10  # read_episode parsed every complete line
    torn = []
    assert len(list(iter_episode(tmp_path / "episode.jsonl", on_torn=torn.append))) == len(r.log)
    assert torn == []  # cut back to the last whole record after the failed write
    assert (tmp_path / "episode.jsonl").stat().st_size <= 60_000


def test_async_remaining_not_below_the_chunk_is_refused_before_the_bus(bundle, tmp_path):
    calibration = tmp_path / "calibration.json"
    save_calibration(calibration, so100.simulator_calibration())
    proc = subprocess.run(
        [
            sys.executable, "-m", "rynn_edge.runtime.cli", "run", str(bundle["model"]),
            "--tokenizer", str(bundle["tokenizer"]), "--vq", str(bundle["vq"]),
            "--port", str(tmp_path / "no-such-port"), "--calibration", str(calibration),
            "--instruction", "x", "--camera", "front=synthetic", "--camera", "wrist=synthetic",
            "--chunk-policy", "async", "--async-remaining", "20",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--async-remaining 20 must be smaller than the model's chunk length 20" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_during_start_up_exits_130_quietly(bundle, frames):
    b = bundle
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rynn_edge.runtime.cli", "predict", str(b["model"]),
            "--tokenizer", str(b["tokenizer"]), "--vq", str(b["vq"]), "--image", str(frames[0]),
            "--image", str(frames[1]), "--state", "0,0,0,0,0,0", "--instruction", "x",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)  # importing torch / loading the model
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr  # an exit code, not death by the signal (-2)
    assert "Traceback" not in stderr and "interrupted" in stderr


def nan_after_warm_up(bundle: dict[str, Path], out: Path) -> dict[str, Path]:
    """A copy of the bundle whose embeddings of every state value token are NaN except those of the
    mid-range state the warm-up query uses: the warm-up passes, the first real query (the simulated
    arm's state) yields NaN actions."""
    copy = {name: out / name for name in bundle}
    for name, path in bundle.items():
        shutil.copytree(path, copy[name])
    stats = load_stats("so100")
    mid = (np.asarray(stats.state.min) + np.asarray(stats.state.max)) / 2
    keep = set(state_block(mid, stats)[1:-1])
    for file in copy["model"].glob("*.safetensors"):
        tensors = load_file(file)
        if "model.embed_tokens.weight" in tensors:
            table = tensors["model.embed_tokens.weight"]
            for token in range(STATE_VALUE_OFFSET + 1, STATE_VALUE_OFFSET + N_BINS + 1):
                if token not in keep:
                    table[token] = torch.nan
            save_file(tensors, file, metadata={"format": "pt"})
    return copy


def test_nan_actions_are_an_inference_failure_with_the_arm_held(bundle, tmp_path):
    r = run_against_sim(nan_after_warm_up(bundle, tmp_path / "nan"), tmp_path, duration=30.0)
    check_safe_state(r, "inference_failed", 7)
    assert "non-finite actions" in r.summary["message"], r.summary["message"]
    assert r.summary["chunks_executed"] == 0
