"""The committed benchmark README and the generated tables of the docs/ pages are exactly what
benchmarks/make_readme_table.py generates from the recorded result files, and every recorded run is in them
(the numbers cannot drift or be typed by hand)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


def block(page: str, name: str) -> str:
    return (DOCS / page).read_text().split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]


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
    bench = block("benchmarks.md", "bench")
    assert "| mode | T |" in bench and "Control-loop jitter" in bench
    assert "](../benchmarks/results/README.md)" in bench and "bench.png)" in bench
    assert "| precision | method |" in block("export.md", "precision")
    assert "| path | p50 ms |" in block("serving.md", "serving")


def test_memory_tables_are_generated_from_the_recorded_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import make_readme_table

    recorded = json.loads((RESULTS / "memory" / "memory.json").read_text())
    memory = block("engines-and-memory.md", "memory")
    assert "| precision, robot (prompt) |" in memory and "Orin Nano 8 GB" in memory
    assert recorded["runtime"]["rows"][0]["Orin Nano 8 GB"] in memory
    assert "## Memory" in (RESULTS / "README.md").read_text()

    recorded["runtime"]["rows"][0]["Orin Nano 8 GB"] = "fits (0.123 GiB)"
    measured = next(p for p in recorded["points"] if "peak_rss_gib" in p)
    measured["peak_rss_gib"] = 98.765
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.json").write_text(json.dumps(recorded))
    monkeypatch.setattr(make_readme_table, "RESULTS", tmp_path)
    changed = make_readme_table.memory_block()
    assert "fits (0.123 GiB)" in changed and "fits (0.123 GiB)" not in memory
    assert "98.77" in make_readme_table.memory_section(make_readme_table.memory_result(), full=True)


def test_a_page_without_its_markers_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import make_readme_table

    for name in make_readme_table.PAGES:
        (tmp_path / name).write_text((DOCS / name).read_text())
    stale = "# Export\n\n<!-- precision:begin -->\n<!-- precision:end -->\n"
    (tmp_path / "export.md").write_text(stale)
    (tmp_path / "serving.md").write_text("# Serving\n\n<!-- serving:end -->\n<!-- serving:begin -->\n")
    monkeypatch.setattr(make_readme_table, "DOCS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["make_readme_table.py"])
    assert make_readme_table.main() == 2
    refusal = capsys.readouterr().err
    assert "serving.md has no <!-- serving:begin --> ... <!-- serving:end --> block" in refusal
    assert (tmp_path / "export.md").read_text() == stale  # nothing written
    assert make_readme_table.updated_page(stale, *make_readme_table.PAGES["export.md"]) != stale
