"""The Python environment Triton's Python backend runs in, prepared by `rynn-edge serve` on first use.

Why a second environment: the Python-backend stub of the `nvidia-pytriton` wheel (the `tritonserver`
binary + Python backend) embeds the first `python3` on PATH and needs numpy<2 (with numpy 2 every model
loads READY but returns empty outputs), and the wheel pins numpy<2, which rynn-edge's own environment
cannot take (OpenCV needs numpy 2). So this is a small venv holding only the wheel and numpy<2, layered
over the running environment with a `.pth` file: the server runs the very rynn-edge, onnxruntime and
torch the robot side runs, with numpy 1.x in front. Made once per environment and reused (a lock keeps
two first starts from racing).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from rynn_edge.runtime.errors import UserError

PYTRITON = "nvidia-pytriton==0.7.0"
NUMPY = "numpy<2"
READY = ".rynn-edge-ready"


@dataclass(frozen=True)
class ServerEnv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def site(self) -> Path:
        return Path(sysconfig.get_path("purelib", vars={"base": str(self.root), "platbase": str(self.root)}))

    @property
    def tritonserver(self) -> Path:
        return self.site / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.site / "pytriton" / "tritonserver" / "backends"

    def environ(self) -> dict[str, str]:
        """The server's environment: this venv's python3 first on PATH (the stub embeds it)."""
        env = dict(os.environ)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        libs = str(self.site / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH")) if p)
        env.pop("PYTHONHOME", None)
        return env


def default_root() -> Path:
    base = Path(os.environ.get("RYNN_EDGE_TRITON_ENV") or Path.home() / ".cache" / "rynn-edge" / "triton-env")
    key = hashlib.sha256(f"{sys.prefix}|{PYTRITON}|{NUMPY}".encode()).hexdigest()[:10]
    return base / f"py{sys.version_info[0]}{sys.version_info[1]}-{key}"


def prepare(root: Path | None = None, log=print) -> ServerEnv:
    """The server environment, made on first use (says so) and reused afterwards."""
    env = ServerEnv(root or default_root())
    if (env.root / READY).is_file():
        return env
    env.root.parent.mkdir(parents=True, exist_ok=True)
    with open(env.root.parent / f"{env.root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env.root / READY).is_file():
            return env
        log(f"preparing the Triton server environment once in {env.root} ({PYTRITON}, {NUMPY}) ...")
        shutil.rmtree(env.root, ignore_errors=True)
        _run([sys.executable, "-m", "venv", "--without-pip", str(env.root)], "create a venv")
        _run(
            [sys.executable, "-m", "pip", "--python", str(env.bin / "python"), "install", "-q",
             "--no-deps", PYTRITON, NUMPY],
            f"install {PYTRITON} and {NUMPY} (needs the package index, or pip's cache)",
        )  # fmt: skip
        # Our environment's packages (rynn-edge, onnxruntime, torch, ...) behind the venv's own numpy.
        base = sysconfig.get_path("purelib")
        (env.site / "zz_rynn_edge_base.pth").write_text(f"import site; site.addsitedir({base!r})\n")
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = env.site / "pytriton" / "tritonserver" / "python_backend_stubs" / version
        if not (stub / "triton_python_backend_stub").is_file():
            raise UserError(f"{PYTRITON} has no Python-backend stub for Python {version}")
        # Same depth below the wheel's root as the stubs folder, so its rpath still finds the wheel's libs.
        shutil.copy2(stub / "triton_python_backend_stub", env.backends / "python")
        (env.root / READY).write_text(f"{PYTRITON}\n{NUMPY}\n{base}\n")
    return env


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise UserError(f"cannot prepare the Triton server environment: failed to {what}:\n{tail}")
