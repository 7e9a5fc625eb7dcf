"""`rynn-edge run --backend triton` against `rynn-edge sim`: the C loop and every safety rule stay on the
robot. After the first chunk the server either dies (SIGKILL: the request fails, inference_failed 7) or
hangs (SIGSTOP: nothing answers, the deadline stops the run, inference_stalled 6); either way the arm
holds and torque goes off."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from serving import start_serve, stop_serve
from test_run_safety import check_safe_state, run_against_sim

from rynn_edge.runtime.robot.episode_log import read_episode

OUTCOMES = {
    "dies": (signal.SIGKILL, "inference_failed", 7),
    "hangs": (signal.SIGSTOP, "inference_stalled", 6),
}


@pytest.mark.parametrize("server", list(OUTCOMES))
def test_a_server_that_stops_answering_mid_run_is_a_safe_stop(so100_fp32, so100_bundle, tmp_path, server):
    art, _ = so100_fp32
    sig, reason, code = OUTCOMES[server]
    served = start_serve(art)
    log = tmp_path / "episode.jsonl"  # run_against_sim's episode log
    signalled = threading.Event()

    def signal_after_the_first_chunk() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if log.exists() and any(r["kind"] == "chunk" for r in read_episode(log)):
                os.kill(served.tritonserver_pid, sig)
                signalled.set()
                return
            time.sleep(0.05)

    threading.Thread(target=signal_after_the_first_chunk, daemon=True).start()
    try:
        bundle = {**so100_bundle, "model": art}  # the artifact names the served model; the run loads nothing
        extra = ("--backend", "triton", "--server", served.grpc)
        r = run_against_sim(bundle, tmp_path, duration=60.0, extra=extra)
    finally:
        if signalled.is_set() and sig == signal.SIGSTOP:
            os.kill(served.tritonserver_pid, signal.SIGCONT)  # so that it can be stopped
        stop_serve(served)
    assert signalled.is_set()
    check_safe_state(r, reason, code)
    assert r.summary["chunks_executed"] >= 1
    if server == "dies":
        assert f"triton server {served.grpc}" in r.summary["message"]
    else:
        assert "deadline 3 s" in r.summary["message"]
