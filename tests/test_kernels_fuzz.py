"""A short seeded pass of the C servo layer's fuzzer (tests/kernels_fuzz.py) under ASan and UBSan.

`make fuzz` runs the same fuzzer longer; FUZZ_SEED / FUZZ_SECONDS choose the seed and the budget there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).with_name("kernels_fuzz.py")
SECONDS = 40  # with the sanitized build, well under a minute of a 2-core CI box


def test_fuzz_pass_under_sanitizers(tmp_path: Path) -> None:
    cmd = [sys.executable, str(FUZZER), "--seed=16", f"--seconds={SECONDS}", f"--build={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 240)
    report = f"{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    assert proc.returncode == 0, report  # a sanitizer report, a crash, a hang or a wrong value
    assert "receive:" in proc.stdout and "loop:" in proc.stdout, report
