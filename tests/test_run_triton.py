"""`rynn-edge run --backend triton` against `rynn-edge sim`: the C loop and every safety rule stay on the
robot; the server is killed mid-run and the arm holds, torque goes off, exit code inference_failed (7)."""

from __future__ import annotations

import os
import signal
import threading
import time

from serving import start_serve, stop_serve
from test_run_safety import check_safe_state, run_against_sim


def test_server_killed_mid_run_is_a_safe_stop(so100_fp32, so100_bundle, tmp_path):
    art, _ = so100_fp32
    served = start_serve(art)
    log = tmp_path / "episode.jsonl"  # run_against_sim's episode log

    def kill_after_the_first_chunk() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if log.exists() and '"kind":"chunk"' in log.read_text():
                os.kill(served.tritonserver_pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_the_first_chunk, daemon=True)
    killer.start()
    try:
        bundle = {**so100_bundle, "model": art}  # the artifact names the served model; the run loads nothing
        extra = ("--backend", "triton", "--server", served.grpc)
        r = run_against_sim(bundle, tmp_path, duration=60.0, extra=extra)
    finally:
        stop_serve(served)
    check_safe_state(r, "inference_failed", 7)
    assert r.summary["chunks_executed"] >= 1
    assert f"triton server {served.grpc}" in r.summary["message"]
