"""The real `tritonserver` process: a serving repository, ports, readiness, a clean stop.

`serve` never edits the artifact (its files are hashed): it lays out a serving repository in a temporary
folder, each model's config.pbtxt rewritten for `--instances` and its version folder a link to the
artifact's, and starts the server of `server_env` on it.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.serving.server_env import ServerEnv

LOAD_ERROR = re.compile(r"failed to load '([^']+)'[^:]*: (.*)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int, flag: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise UserError(
                f"{flag} {port}: {host}:{port} is in use or not bindable ({err.strerror})"
            ) from None


def serving_repository(repository: Path, instances: int) -> Path:
    """A temporary repository over `repository`'s models, `instances` per model."""
    if not (repository / "config.pbtxt").exists() and not any(repository.glob("*/config.pbtxt")):
        raise UserError(
            f"{repository}: no Triton model repository; export with `rynn-edge export ... --format triton`"
        )
    out = Path(tempfile.mkdtemp(prefix="rynn-edge-triton-"))
    for config in sorted(repository.glob("*/config.pbtxt")):
        model = out / config.parent.name
        model.mkdir()
        text = re.sub(r"(instance_group \[ \{ count: )\d+", rf"\g<1>{instances}", config.read_text())
        (model / "config.pbtxt").write_text(text)
        for version in config.parent.iterdir():
            if version.is_dir():
                (model / version.name).symlink_to(version.resolve(), target_is_directory=True)
    return out


def _die_with_parent() -> None:
    """In the child: SIGTERM when `serve` dies, even by SIGKILL (Linux), so no server is left behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class TritonServer:
    env: ServerEnv
    repository: Path  # the artifact's triton/ folder
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    instances: int = 1
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    _serving: Path | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def models(self) -> list[str]:
        return sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))

    def start(self, timeout_s: float = 300.0) -> None:
        if not self.env.tritonserver.is_file():
            raise UserError(f"no tritonserver in {self.env.root}; remove that folder and start again")
        check_port(self.host, self.http_port, "--http-port")
        check_port(self.host, self.grpc_port, "--grpc-port")
        self._serving = serving_repository(self.repository, self.instances)
        if self.log_path is None:
            self.log_path = Path(tempfile.gettempdir()) / f"rynn-edge-tritonserver-{self.http_port}.log"
        cmd = [
            str(self.env.tritonserver), f"--model-repository={self._serving}",
            f"--backend-directory={self.env.backends}", f"--http-address={self.host}",
            f"--http-port={self.http_port}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", "--exit-timeout-secs=10",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env.environ(),
                start_new_session=True,  # Ctrl-C reaches `serve`, which stops the server in order
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(self._failure(f"tritonserver exited with code {self.process.returncode}"))
            if self._get("/v2/health/ready") == 200:
                return
            time.sleep(0.2)
        raise UserError(self._failure(f"the server was not ready after {timeout_s:.0f} s"))

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as reply:
                return reply.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return None

    def _failure(self, what: str) -> str:
        log = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
        reasons = [f"  {m.group(1)}: {_reason(m.group(2))}" for m in LOAD_ERROR.finditer(log)]
        if not reasons:
            reasons = [f"  {line}" for line in log.strip().splitlines()[-8:]]
        return f"{what}; models not READY:\n" + "\n".join(reasons) + f"\n(server log: {self.log_path})"

    def model_states(self) -> dict[str, str]:
        """Each model's state as the server reports it (READY, UNAVAILABLE, ...)."""
        request = urllib.request.Request(self.http_url + "/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return {m["name"]: m.get("state", "") for m in json.loads(reply.read())}

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests), SIGKILL after `timeout_s`; removes the temp repo."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        elif self.process is not None:
            code = self.process.returncode
        if self._serving is not None:
            shutil.rmtree(self._serving, ignore_errors=True)
        return code


def _reason(logged: str) -> str:
    """A load error as Triton logs it -> the message alone: its escaped newlines unescaped, and the
    Python backend's stack ("At: ...") dropped (the message already names the file and the problem)."""
    text = logged.strip().removesuffix('"').replace("\\n", "\n")
    return text.split("\n\nAt:\n", 1)[0].strip().replace("\n", "\n    ")
