"""The committed benchmark READMEs are exactly what benchmarks/make_readme_table.py generates from the
recorded result files, and every recorded run is in them (the numbers cannot drift or be typed by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def test_readmes_are_regenerated_from_the_results():
    check = subprocess.run(
        [sys.executable, "benchmarks/make_readme_table.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    listing = (RESULTS / "README.md").read_text()
    runs = sorted(RESULTS.glob("*/bench.json")) + sorted(RESULTS.glob("*/profile.json"))
    assert runs, "no recorded bench/profile run"
    for path in runs:
        assert f"**{path.parent.name}**" in listing
        assert (path.parent / path.name.replace(".json", ".png")).is_file()
    block = (ROOT / "README.md").read_text().split("<!-- bench:begin -->")[1].split("<!-- bench:end -->")[0]
    assert "| mode | T |" in block and "bench.png)" in block and "Control-loop jitter" in block
