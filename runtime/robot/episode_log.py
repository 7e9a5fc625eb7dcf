"""Episode log: gzip-compressed JSON Lines, one record per line, append-only, synced every ~100 ms.

Each sync compresses the records since the last one, ends them with a zlib sync flush (the stream up
to that point decompresses to whole lines), writes and fsyncs them. A crash or power cut loses at most
the last sync interval and the file never needs repair: `iter_episode` reads a stream cut short (no
gzip trailer, `zcat` warns but prints every line) and skips a truncated final line, the only place a
torn write can be; damage anywhere else is rejected. A write that fails (disk full, file too large)
truncates the file back to the end of the last complete sync, so the log still ends on a whole record;
the log takes no more records after that. Plain (uncompressed) logs of earlier versions read the same.

Record kinds (field `kind`): `start` (configuration, and the calibration), `step` (one servo-loop
cycle: timestamps, raw present and goal ticks, chunk id, held), `query` (an observation sent to the
policy: its time budget and the K rows left), `chunk` (one inference: observation time, latency,
goals, the plan), `bus` (cumulative bus timeouts / checksum errors, every ~0.5 s), `end` (exit reason
and summary). Kept small (benchmarks/episode_log_size.py): a step's `state` and `goal` in joint units
are not stored when the start record carries the calibration (readers rebuild them from the raw ticks
with the conversion the run used: the very values it computed), nor its `t_ns` (the time the cycle was
drained, not when it ran); a chunk's float arrays are rounded to CHUNK_DECIMALS. Camera frames, when
asked for, go to JPEG files in `<log>.frames/`, named in the record of the query that used them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.calibration import JointMap, MotorCalibration, NormMode

SYNC_INTERVAL_S = 0.1
COMPRESSION_LEVEL = 6  # level 9 saves ~3% more for more CPU (benchmarks/episode_log_size.py)
GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 16 + zlib.MAX_WBITS
DERIVED = {"state": "present_raw", "goal": "goal_raw"}  # step field in units <- its raw ticks
STEP_DRAIN_TIME = "t_ns"  # when the supervisor drained a cycle (its own times: deadline_ns, read_ns)
CHUNK_DECIMALS = 6  # chunk float arrays to 1e-6 of their unit (a servo tick is 0.088 deg)
READ_BLOCK = 1 << 16
UNZIP_STEP = 1 << 10


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot log {type(value).__name__}")


def _rounded(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return np.round(value, CHUNK_DECIMALS)
    return value


def compact(kind: str, fields: dict[str, Any], units_rebuilt: bool) -> dict[str, Any]:
    """What is stored of a record (the module docstring says what is left out and why)."""
    if kind == "step":
        left_out = {STEP_DRAIN_TIME, *DERIVED} if units_rebuilt else {STEP_DRAIN_TIME}
        return {k: v for k, v in fields.items() if k not in left_out}
    if kind == "chunk":
        return {k: _rounded(v) for k, v in fields.items()}
    return fields


class EpisodeLog:
    def __init__(self, path: str | Path, sync_interval_s: float = SYNC_INTERVAL_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise UserError(
                f"episode log {self.path} already exists; pick a new path (logs are never overwritten)"
            ) from None
        self._zip = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        self._pending: list[bytes] = []
        self._whole = 0  # bytes on disk that decompress to whole records
        self._failed = False
        self._units_rebuilt = False  # the start record carries the calibration
        self._sync_interval_s = sync_interval_s
        self._last_sync = time.monotonic()
        self.records = 0

    def write(self, kind: str, **fields: Any) -> None:
        if kind == "start":
            self._units_rebuilt = "calibration" in fields
        fields = compact(kind, fields, self._units_rebuilt)
        line = json.dumps({"kind": kind, **fields}, default=_plain, separators=(",", ":"))
        self._pending.append(line.encode() + b"\n")
        self.records += 1
        if time.monotonic() - self._last_sync >= self._sync_interval_s:
            self.sync()

    def save_frames(self, stem: str, images: dict[str, np.ndarray]) -> list[str]:
        """Camera frames (RGB) as JPEG files in `<log>.frames/`; returns their paths relative to the log."""
        import cv2

        folder = self.path.with_name(self.path.name + ".frames")
        folder.mkdir(exist_ok=True)
        names = []
        for camera, image in images.items():
            name = f"{stem}_{camera}.jpg"
            cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            names.append(f"{folder.name}/{name}")
        return names

    def sync(self) -> None:
        data = self._zip.compress(b"".join(self._pending)) + self._zip.flush(zlib.Z_SYNC_FLUSH)
        self._pending.clear()
        self._put(data)
        self._last_sync = time.monotonic()

    def _put(self, data: bytes) -> None:
        """Write and fsync data; on failure cut the file back to its last whole record and re-raise."""
        if self._failed:
            raise OSError(f"episode log {self.path}: an earlier write failed; no more records are taken")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            self._failed = True
            with contextlib.suppress(OSError):  # the first error is the one to report
                os.ftruncate(self._fd, self._whole)
            raise
        self._whole += len(data)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if not self._failed:
                self.sync()
                self._put(self._zip.flush(zlib.Z_FINISH))  # the gzip trailer: a log that ended cleanly
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EpisodeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CorruptLogError(ValueError):
    """A record before the last one does not parse: the file was damaged, not just cut short."""


def _blocks(path: str | Path) -> Iterator[bytes]:
    """The log's bytes, decompressed if it is gzip; zlib.error for damaged compressed data."""
    with open(path, "rb") as fh:
        compressed = fh.read(2) == GZIP_MAGIC
        fh.seek(0)
        unzip = zlib.decompressobj(GZIP_WBITS)
        for block in iter(lambda: fh.read(READ_BLOCK), b""):
            if not compressed:
                yield block
                continue
            for at in range(0, len(block), UNZIP_STEP):  # small steps: damage is placed near its line
                if unzip.eof:
                    raise zlib.error("data after the end of the compressed stream")
                yield unzip.decompress(block[at : at + UNZIP_STEP])
            if unzip.unused_data:
                raise zlib.error("data after the end of the compressed stream")


def _lines(path: str | Path, on_torn: Callable[[int], None] | None) -> Iterator[tuple[int, bytes]]:
    """(number, line) of each complete line; a last line without its newline is a torn write."""
    rest, number = b"", 0
    try:
        for block in _blocks(path):
            *whole, rest = (rest + block).split(b"\n")
            for line in whole:
                number += 1
                yield number, line
    except zlib.error as err:
        raise CorruptLogError(
            f"{path}: line {number + 1} onward is damaged (compressed data: {err})"
        ) from None
    if rest and on_torn is not None:
        on_torn(number + 1)


def _units(path: str | Path, start: dict[str, Any]) -> JointMap:
    """The run's raw-ticks -> units conversion, from its start record (line 1)."""
    try:
        config, calibration = start["config"], start["calibration"]
        modes = {
            name: NormMode(mode) for name, mode in zip(config["motors"], config["norm_modes"], strict=True)
        }
        return JointMap({name: MotorCalibration(**calibration[name]) for name in modes}, modes)
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptLogError(
            f"{path}: line 1: the start record's calibration is malformed ({err!r})"
        ) from None


def iter_episode(path: str | Path, on_torn: Callable[[int], None] | None = None) -> Iterator[dict]:
    """The records of a log, streamed, steps with `state` and `goal`; a truncated last line is skipped
    (`on_torn(line number)`)."""
    units: JointMap | None = None
    for number, line in _lines(path, on_torn):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptLogError(f"{path}: line {number} is not a JSON record: {err}") from None
        if number == 1 and isinstance(record, dict) and "calibration" in record:
            units = _units(path, record)
        elif units is not None and isinstance(record, dict) and record.get("kind") == "step":
            try:
                record.update({name: units.to_units(record[raw]).tolist() for name, raw in DERIVED.items()})
            except (KeyError, TypeError, ValueError) as err:
                raise CorruptLogError(
                    f"{path}: line {number}: step record without its raw ticks ({err!r})"
                ) from None
        yield record


def read_episode(path: str | Path) -> list[dict]:
    """All complete records; a truncated last record is dropped."""
    return list(iter_episode(path))
