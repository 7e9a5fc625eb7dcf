"""Starting `rynn-edge serve` in tests: a real tritonserver from the nvidia-pytriton wheel (its Python
environment is prepared by `serve` on first use and reused), on 127.0.0.1 with free ports."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rynn_edge.runtime.serving.triton_server import free_port

READY_TIMEOUT_S = 600  # the first start in a fresh CI box also prepares the server environment


@dataclass
class Served:
    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    ready_line: str
    stderr: list[str] = field(default_factory=list)

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def tritonserver_pid(self) -> int:
        return int(re.search(r"tritonserver pid (\d+)", self.ready_line).group(1))


def start_serve(artifact: Path, *extra: str) -> Served:
    http_port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "rynn_edge.runtime.cli", "serve", str(artifact),
           "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served = Served(proc, http_port, grpc_port, "")
    threading.Thread(target=lambda: served.stderr.extend(proc.stderr), daemon=True).start()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT_S)
    if not got or "ready:" not in got[0]:
        proc.kill()
        proc.wait()
        raise AssertionError(f"serve did not become ready: {got} {''.join(served.stderr)}")
    served.ready_line = got[0]
    return served


def stop_serve(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.terminate()
        try:
            served.proc.wait(60)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait()


@dataclass
class RobotServer:
    """`serve --lerobot` or `serve --openpi` in a subprocess: its port, ready line and stderr so far."""

    proc: subprocess.Popen
    port: int
    ready_line: str
    stderr: list[str] = field(default_factory=list)


def start_robot_server(artifact: Path, *flags: str) -> RobotServer:
    port = free_port()
    cmd = [sys.executable, "-m", "rynn_edge.runtime.cli", "serve", str(artifact), "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served = RobotServer(proc, port, "")
    threading.Thread(target=lambda: served.stderr.extend(proc.stderr), daemon=True).start()
    served.ready_line = proc.stdout.readline()
    if "ready:" not in served.ready_line:
        proc.kill()
        proc.wait()
        raise AssertionError(f"serve did not become ready: {served.ready_line!r} {''.join(served.stderr)}")
    return served


def stop_robot_server(served: RobotServer) -> int:
    served.proc.terminate()
    return served.proc.wait(30)


def expected_goals(predictor, task: str, images, state) -> np.ndarray:
    """`predict`'s goals, inside the valid ranges a robot-protocol server keeps them in: the stats' joint
    ranges for the body joints, 0-100 for the gripper."""
    goals = predictor.predict(list(images), state, task).goals
    lower = np.r_[predictor.stats.state.min[:5], 0.0]
    upper = np.r_[predictor.stats.state.max[:5], 100.0]
    return np.clip(goals, lower, upper)
