"""The GPU proof script's logic, run on the CPU (the cuda backend runs eagerly there), so that the one
device call a lent GPU gets is not spent on a script that broke when the code moved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_proof.py"


def test_gpu_proof_checks_pass_on_the_cpu(tmp_path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    proc = subprocess.run([*cmd, "--device", "cpu", "--cases", "tiny"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out" / "gpu_proof.json").read_text())
    names = [r["check"] for r in result["checks"]]
    assert result["passed"] and len(names) == 10
    assert any("parallel blocks == sequential" in n for n in names)
    assert sum("graph == eager" in n for n in names) == 5
