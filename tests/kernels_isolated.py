"""Run a snippet against the C extension in a fresh interpreter, so that a crash (the defect some tests pin
down) fails that one test with its signal and stderr instead of killing the whole session."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = '''
import os
from rynn_edge.kernels import _native as fe


class Clearing:
    """An int whose __index__ empties the list or dict the extension is parsing it from."""

    def __init__(self, value, victim):
        self.value, self.victim = value, victim

    def __index__(self):
        self.victim.clear()
        return self.value

    def __hash__(self):
        return hash(self.value)


def pty_bus():
    """A Bus on a pty nobody answers: enough to build loops and time out quickly."""
    _, slave = os.openpty()
    return fe.Bus(os.ttyname(slave), timeout_ms=1.0, retries=0)
'''


def run_isolated(code: str, timeout: float = 60.0) -> str:
    script = PRELUDE + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout
