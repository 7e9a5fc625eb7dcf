"""Episode log size per hour at a 100 Hz loop: the log `run` writes (gzip, compact records) against the plain
JSON Lines of earlier versions and the other candidates, all encoding the records of one real run (the demo:
tiny random SO100 model, bus simulator, synthetic cameras), measured in the same run.

    python benchmarks/episode_log_size.py [--seconds 60]

The records are taken as the supervisor hands them to the log (EpisodeLog.write, recorded by a subclass), so
"before" is exactly what the earlier writer stored. Each candidate is synced every 100 ms of the run's own
clock, as the writer does. Also measured: the CPU time to write the records through EpisodeLog and to read
them back with `plot`'s reader (load_trace), per hour of log. Writes benchmarks/results/episode_log_size.*.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from bus_cycle import machine, write_report  # same folder

from rynn_edge.runtime.cli import main as rynn_edge
from rynn_edge.runtime.robot import control
from rynn_edge.runtime.robot.episode_log import (
    COMPRESSION_LEVEL,
    GZIP_WBITS,
    SYNC_INTERVAL_S,
    EpisodeLog,
    _plain,
    compact,
)
from rynn_edge.runtime.robot.episode_metrics import load_trace

HOUR_S = 3600.0


class RecordingLog(EpisodeLog):
    """The episode log `run` writes, keeping a copy of every record it is given."""

    given: list[tuple[str, dict[str, Any]]] = []

    def write(self, kind: str, **fields: Any) -> None:
        RecordingLog.given.append((kind, copy.deepcopy(fields)))
        super().write(kind, **fields)


def encoded(records: list[tuple[str, dict]], compacted: bool) -> list[tuple[int, bytes]]:
    """(t_ns, JSON line) per record: as given (the earlier writer) or as the writer now stores it."""
    out = []
    for kind, fields in records:
        stored = compact(kind, fields, units_rebuilt=True) if compacted else fields
        line = json.dumps({"kind": kind, **stored}, default=_plain, separators=(",", ":"))
        out.append((int(fields["t_ns"]), line.encode() + b"\n"))
    return out


def encoded_size(lines: list[tuple[int, bytes]], level: int | None) -> int:
    """Bytes on disk: plain (level None), or gzip synced every SYNC_INTERVAL_S of record time."""
    if level is None:
        return sum(len(line) for _, line in lines)
    zip_ = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    size, batch, last = 0, [], lines[0][0]
    for t_ns, line in lines:
        batch.append(line)
        if t_ns - last >= SYNC_INTERVAL_S * 1e9:
            size += len(zip_.compress(b"".join(batch)) + zip_.flush(zlib.Z_SYNC_FLUSH))
            batch, last = [], t_ns
    return size + len(zip_.compress(b"".join(batch)) + zip_.flush(zlib.Z_FINISH))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the demo run (60)")
    args = parser.parse_args(argv)
    control.EpisodeLog = RecordingLog  # the supervisor's log, recording what it is given
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        assert rynn_edge(["demo", "--workdir", str(work), "--duration", str(args.seconds), "--json"]) == 0
        log = work / "episode.jsonl.gz"
        written = log.stat().st_size
        records = RecordingLog.given
        span_s = (records[-1][1]["t_ns"] - records[0][1]["t_ns"]) / 1e9
        per_hour = HOUR_S / span_s
        t0 = time.process_time()
        trace = load_trace(log)
        read_cpu_s = time.process_time() - t0
        t0 = time.process_time()
        with EpisodeLog(work / "rewrite.jsonl.gz") as out:
            for kind, fields in records:
                out.write(kind, **fields)
        write_cpu_s = time.process_time() - t0
    full, compacted = encoded(records, compacted=False), encoded(records, compacted=True)
    candidates = [
        ("plain JSON Lines, full records (before)", full, None),
        ("plain JSON Lines, compact records", compacted, None),
        ("gzip-6, full records", full, 6),
        ("gzip-1, compact records", compacted, 1),
        (f"gzip-{COMPRESSION_LEVEL}, compact records (chosen)", compacted, COMPRESSION_LEVEL),
        ("gzip-9, compact records", compacted, 9),
    ]
    baseline = encoded_size(full, None)
    rows = []
    for name, lines, level in candidates:
        size = encoded_size(lines, level)
        rows.append(
            {
                "format": name,
                "bytes": size,
                "bytes_per_step": round(size / trace.steps.n, 1),
                "mb_per_hour": round(size * per_hour / 1e6, 2),
                "ratio_to_plain_full": round(baseline / size, 2),
            }
        )
    report = {
        "machine": machine(),
        "run": {
            "source": f"rynn-edge demo --duration {args.seconds:g} (tiny random SO100 model, bus simulator)",
            "loop_rate_hz": trace.config["loop_rate_hz"],
            "time_horizon": trace.config["time_horizon"],
            "span_s": round(span_s, 3),
            "steps": trace.steps.n,
            "chunks": len(trace.chunks),
            "records": len(records),
            "log_bytes_as_written": written,
            "log_mb_per_hour_as_written": round(written * per_hour / 1e6, 2),
        },
        "cpu_s_per_hour": {
            "write_episode_log": round(write_cpu_s * per_hour, 1),
            "read_for_plot": round(read_cpu_s * per_hour, 1),
        },
        "formats": rows,
    }
    print(json.dumps(report, indent=2))
    write_report("episode_log_size", report, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
