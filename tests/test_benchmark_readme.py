"""The committed benchmark READMEs are exactly what benchmarks/make_readme_table.py generates from the
recorded result files, and every recorded run is in them (the numbers cannot drift or be typed by hand)."""

from __future__ import annotations

import json
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


def test_memory_tables_are_generated_from_the_recorded_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import make_readme_table

    recorded = json.loads((RESULTS / "memory" / "memory.json").read_text())
    block = (ROOT / "README.md").read_text().split("<!-- memory:begin -->")[1].split("<!-- memory:end -->")[0]
    assert "| precision, robot (prompt) |" in block and "Orin Nano 8 GB" in block
    assert recorded["runtime"]["rows"][0]["Orin Nano 8 GB"] in block
    assert "## Memory" in (RESULTS / "README.md").read_text()

    recorded["runtime"]["rows"][0]["Orin Nano 8 GB"] = "fits (0.123 GiB)"
    measured = next(p for p in recorded["points"] if "peak_rss_gib" in p)
    measured["peak_rss_gib"] = 98.765
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.json").write_text(json.dumps(recorded))
    monkeypatch.setattr(make_readme_table, "RESULTS", tmp_path)
    changed = make_readme_table.memory_block()
    assert "fits (0.123 GiB)" in changed and "fits (0.123 GiB)" not in block
    assert "98.77" in make_readme_table.memory_section(make_readme_table.memory_result(), full=True)
