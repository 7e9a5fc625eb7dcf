"""Simulated SO100 servo bus (6 x Feetech STS3215) on a pseudo-terminal, and `launch` to run it from tests.

The simulator always runs as a separate process: in a thread it would share the host's GIL and
distort exactly the bus timing it is meant to reproduce.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

READY_PREFIX = "sim ready: "


class SimPort(str):
    """The published port path (use it wherever a path is expected) plus a handle on the process."""

    process: subprocess.Popen[str]
    state_file: str
    sched: str

    def state(self, timeout: float = 2.0) -> dict:
        """A fresh snapshot of every servo: asks the simulator to rewrite its state file and reads it.

        Two rounds, because the first rewrite may come from a loop pass that started before the
        host's last bytes reached the pty; the second one starts after them.
        """
        deadline = time.monotonic() + timeout
        state = _read_json(self.state_file)
        for _ in range(2):
            if self.process.poll() is not None:
                raise RuntimeError(f"simulator exited with code {self.process.returncode}")
            seq = state.get("seq", 0)
            self.process.send_signal(signal.SIGUSR1)
            while (state := _read_json(self.state_file)).get("seq", 0) <= seq:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"simulator did not refresh {self.state_file} within {timeout} s")
                time.sleep(0.001)
        return state

    def servo(self, servo_id: int) -> dict:
        return next(s for s in self.state()["servos"] if s["id"] == servo_id)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def command(
    link: str,
    ids: Iterable[int],
    *,
    baud: int,
    wire_time: bool,
    turnaround_us: float,
    faults: Iterable[str],
    seed: int,
    initial_positions: Iterable[float] | None,
    state_file: str | None,
    physics: tuple[str, ...] | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "rynn_edge.runtime.sim",
        "--link",
        link,
        "--ids",
        ",".join(map(str, ids)),
        "--baud",
        str(baud),
        "--seed",
        str(seed),
        "--exit-on-stdin-eof",
    ]
    if wire_time:
        cmd += ["--wire-time", "--turnaround-us", str(turnaround_us)]
    for spec in faults:
        cmd += ["--fault", spec]
    if initial_positions:
        cmd += ["--initial-positions", ",".join(map(str, initial_positions))]
    if state_file:
        cmd += ["--state-file", state_file]
    if physics is not None:
        cmd += ["--physics", *physics]
    return cmd


@contextlib.contextmanager
def launch(
    link: str | os.PathLike[str] | None = None,
    ids: Iterable[int] = (1, 2, 3, 4, 5, 6),
    *,
    baud: int = 1_000_000,
    wire_time: bool = False,
    turnaround_us: float = 0.0,
    faults: Iterable[str] = (),
    seed: int = 0,
    initial_positions: Iterable[float] | None = None,
    state_file: str | os.PathLike[str] | None = None,
    ready_timeout: float = 10.0,
    rt_priority: int | None = None,
    physics: tuple[str, ...] | None = None,
) -> Iterator[SimPort]:
    """Run `rynn-edge sim` as a subprocess; yield its port path once it is listening; stop it on exit.

    `link=None` publishes the port in a fresh temporary folder (safe for parallel tests). The state
    file (default: next to the link in that folder) backs `SimPort.state()`. `rt_priority` runs the
    simulator SCHED_FIFO (benchmarks: real servos answer in hardware and are never starved of CPU);
    `SimPort.sched` says whether that was granted. `physics` (e.g. `()` or `("--scene", "table")`) runs
    the physics twin with those extra arguments; its cameras are `--camera NAME=sim:PORT`.
    """
    tmp = tempfile.mkdtemp(prefix="rynn-edge-sim-")
    link = str(link) if link is not None else os.path.join(tmp, "ttySO100")
    state_file = str(state_file) if state_file is not None else os.path.join(tmp, "state.json")
    cmd = command(
        link,
        ids,
        baud=baud,
        wire_time=wire_time,
        turnaround_us=turnaround_us,
        faults=faults,
        seed=seed,
        initial_positions=initial_positions,
        state_file=state_file,
        physics=physics,
    )
    stderr_path = Path(tmp, "stderr.log")
    with open(stderr_path, "w") as stderr:
        # stdin is a pipe only this process holds: if it dies without cleaning up, the simulator sees EOF.
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        _wait_ready(proc, ready_timeout, stderr_path)
        port = SimPort(link)
        port.process, port.state_file = proc, state_file
        port.sched = _set_realtime(proc.pid, rt_priority) if rt_priority is not None else "normal"
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _set_realtime(pid: int, priority: int) -> str:
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as err:
        return f"normal (SCHED_FIFO refused: {err})"
    return f"SCHED_FIFO {priority}"


def _wait_ready(proc: subprocess.Popen[str], timeout: float, stderr_path: Path) -> None:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout):
            line = proc.stdout.readline()
            if line.startswith(READY_PREFIX):
                return
    proc.kill()
    proc.wait()
    raise RuntimeError(f"simulator did not start ({' '.join(proc.args)}):\n{stderr_path.read_text()}")
