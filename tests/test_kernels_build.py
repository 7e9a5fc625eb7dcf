"""The C sources compile without a warning under -Wall -Wextra -Wconversion (setup.py builds with them)."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "kernels" / "csrc"
WARNINGS = ["-Wall", "-Wextra", "-Wconversion", "-Werror"]
FLAGS = ["-O2", "-std=c11", "-D_GNU_SOURCE", *WARNINGS, "-c", "-o", os.devnull]


@pytest.mark.parametrize("source", sorted(p.name for p in CSRC.glob("*.c")))
def test_compiles_warning_free(source: str) -> None:
    includes = ["-I", sysconfig.get_paths()["include"], "-I", str(CSRC)]
    proc = subprocess.run(["gcc", *FLAGS, *includes, str(CSRC / source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
