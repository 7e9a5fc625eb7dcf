"""Episode log: one JSON object per line, append-only, flushed and fsync'd at least every ~100 ms.

A crash or power cut loses at most the last sync interval; the file never needs repair: `read_episode`
skips a truncated final line (the only place a torn write can be) and rejects damage anywhere else.

Record kinds (field `kind`): `start` (configuration), `step` (one servo-loop cycle: timestamps, state,
goal sent, chunk id, held), `query` (an observation sent to the policy: its time budget and the K
rows left), `chunk` (one inference: observation time, latency, goals, the plan), `bus` (cumulative bus
timeouts / checksum errors, every ~0.5 s), `end` (exit reason and summary). Camera frames, when asked
for, go to JPEG files in `<log>.frames/`, named in the record of the query that used them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.runtime.errors import UserError

SYNC_INTERVAL_S = 0.1


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot log {type(value).__name__}")


class EpisodeLog:
    def __init__(self, path: str | Path, sync_interval_s: float = SYNC_INTERVAL_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fh = open(self.path, "x", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        except FileExistsError:
            raise UserError(
                f"episode log {self.path} already exists; pick a new path (logs are never overwritten)"
            ) from None
        self._sync_interval_s = sync_interval_s
        self._last_sync = time.monotonic()
        self.records = 0

    def write(self, kind: str, **fields: Any) -> None:
        self._fh.write(json.dumps({"kind": kind, **fields}, default=_plain, separators=(",", ":")) + "\n")
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
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def __enter__(self) -> EpisodeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CorruptLogError(ValueError):
    """A record before the last one does not parse: the file was damaged, not just cut short."""


def iter_episode(path: str | Path, on_torn: Callable[[int], None] | None = None) -> Iterator[dict]:
    """The records of a log, streamed; a truncated last line is skipped (`on_torn(line number)`)."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            # A complete record ends with "\n"; a last line without one is a torn write.
            if not line.endswith(b"\n"):
                if on_torn is not None:
                    on_torn(number)
                return
            try:
                yield json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CorruptLogError(f"{path}: line {number} is not a JSON record: {err}") from None


def read_episode(path: str | Path) -> list[dict]:
    """All complete records; a truncated last record is dropped."""
    return list(iter_episode(path))
