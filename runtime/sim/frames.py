"""Shared-memory slots between the twin's processes: the joint state (simulator -> renderer) and the
rendered camera frames (renderer -> cameras of a run).

A slot is a memory-mapped file holding one array and a header. The single writer overwrites it in place
under a sequence lock: the sequence number is odd while the array is being written, so a reader that
sees it odd or changed across its copy reads again. Shared memory rather than a socket: the writer
never blocks on a slow reader or keeps per-client state (the simulator's loop also answers the servo
bus), a reader always gets the latest value, and a 230 KB frame costs one copy on each side.

Header (little-endian): magic, sequence, simulated time (ns), cost (ns: the render time of a frame),
the array's dimensions (up to three), their count and its numpy dtype string (e.g. |u1, <f8).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"RYNNSLT1"
HEADER = struct.Struct("<8sQQQ3IB3s")
MAX_READ_TRIES = 10_000  # a writer killed mid-write leaves the sequence odd: give up, not spin forever


def frames_dir(link: str | os.PathLike[str]) -> Path:
    """Where the twin serving the bus at `link` publishes its camera frames (NAME.rgb)."""
    path = Path(link)
    return path.with_name(f"{path.name}.frames")


@dataclass(frozen=True)
class Snapshot:
    data: np.ndarray
    seq: int
    sim_time_s: float
    cost_s: float


class SlotWriter:
    def __init__(self, path: Path, shape: tuple[int, ...], dtype: str) -> None:
        self.path = path
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.layout = (*(*shape, 1, 1, 1)[:3], len(shape), self.dtype.str.encode())
        self.seq = 0
        size = HEADER.size + int(np.prod(shape)) * self.dtype.itemsize
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.truncate(size)
        self._file = open(tmp, "r+b")  # noqa: SIM115 (kept open for the mapping's lifetime)
        self._map = mmap.mmap(self._file.fileno(), size)
        self._header(0, 0.0, 0.0)
        os.replace(tmp, path)  # readers never see a file without its header

    def _header(self, seq: int, sim_time_s: float, cost_s: float) -> None:
        times = round(sim_time_s * 1e9), round(cost_s * 1e9)
        HEADER.pack_into(self._map, 0, MAGIC, seq, *times, *self.layout)

    def publish(self, array: np.ndarray, sim_time_s: float, cost_s: float = 0.0) -> None:
        self._header(2 * self.seq + 1, sim_time_s, cost_s)  # odd: being written
        self._map[HEADER.size :] = np.ascontiguousarray(array, dtype=self.dtype).tobytes()
        self.seq += 1
        self._header(2 * self.seq, sim_time_s, cost_s)

    def close(self) -> None:
        self._map.close()
        self._file.close()
        self.path.unlink(missing_ok=True)


class SlotReader:
    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        magic, _, _, _, d0, d1, d2, ndim, code = HEADER.unpack_from(self._map, 0)
        self.shape = (d0, d1, d2)[:ndim]
        self.dtype = np.dtype(code.decode()) if magic == MAGIC and code in (b"|u1", b"<f8") else None
        size = HEADER.size + int(np.prod(self.shape)) * (self.dtype.itemsize if self.dtype else 0)
        if self.dtype is None or len(self._map) != size:
            self._map.close()
            raise ValueError(f"{path} is not a rynn-edge shared slot")

    def latest(self) -> Snapshot | None:
        """The newest complete value, None before the first one (or from a writer that died mid-write)."""
        for _ in range(MAX_READ_TRIES):
            _, seq, _, _, *_ = HEADER.unpack_from(self._map, 0)
            if seq == 0:
                return None
            if seq % 2:
                continue
            data = np.frombuffer(self._map, self.dtype, offset=HEADER.size).reshape(self.shape).copy()
            _, again, sim_ns, cost_ns, *_ = HEADER.unpack_from(self._map, 0)
            if again == seq:
                return Snapshot(data, seq // 2, sim_ns / 1e9, cost_ns / 1e9)
        return None

    def close(self) -> None:
        self._map.close()
