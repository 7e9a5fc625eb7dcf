"""Rendered camera frames shared between the physics twin and the cameras that read them.

One memory-mapped file per camera in a folder beside the bus link (`LINK.frames/NAME.rgb`). The writer
(the simulator) overwrites it in place under a sequence lock: the sequence number is odd while a frame
is being written, so a reader that sees it odd or changed across its copy simply reads again. Shared
memory rather than a socket: the simulator never blocks on a slow reader or keeps per-client state (its
loop also answers the servo bus), a reader always gets the latest frame, and a 230 KB frame costs one
copy on each side.

Header (little-endian): magic, sequence, height, width, simulated time (ns), render time (us).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"RYNNFRM1"
HEADER = struct.Struct("<8sQIIQQ")


def frames_dir(link: str | os.PathLike[str]) -> Path:
    path = Path(link)
    return path.with_name(f"{path.name}.frames")


@dataclass(frozen=True)
class SharedFrame:
    image: np.ndarray  # HxWx3 uint8 RGB
    seq: int
    sim_time_s: float
    render_s: float


class FrameWriter:
    def __init__(self, path: Path, height: int, width: int) -> None:
        self.path = path
        self.shape = (height, width, 3)
        self.seq = 0
        size = HEADER.size + height * width * 3
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with open(tmp, "wb") as f:
            f.truncate(size)
        self._file = open(tmp, "r+b")  # noqa: SIM115 (kept open for the mapping's lifetime)
        self._map = mmap.mmap(self._file.fileno(), size)
        self._write_header(0, 0.0, 0.0)
        os.replace(tmp, path)  # readers never see a file without its header

    def _write_header(self, seq: int, sim_time_s: float, render_s: float) -> None:
        h, w, _ = self.shape
        HEADER.pack_into(self._map, 0, MAGIC, seq, h, w, round(sim_time_s * 1e9), round(render_s * 1e6))

    def publish(self, image: np.ndarray, sim_time_s: float, render_s: float) -> None:
        self._write_header(2 * self.seq + 1, sim_time_s, render_s)  # odd: being written
        self._map[HEADER.size :] = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        self.seq += 1
        self._write_header(2 * self.seq, sim_time_s, render_s)

    def close(self) -> None:
        self._map.close()
        self._file.close()
        self.path.unlink(missing_ok=True)


class FrameReader:
    """Reads the latest frame of one camera of a running twin."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        magic, _, h, w, _, _ = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or len(self._map) != HEADER.size + h * w * 3:
            self._map.close()
            raise ValueError(f"{path} is not a rynn-edge frame file")
        self.shape = (h, w, 3)

    def latest(self) -> SharedFrame | None:
        """The newest complete frame, None before the first one."""
        while True:
            _, seq, _, _, _, _ = HEADER.unpack_from(self._map, 0)
            if seq == 0:
                return None
            if seq % 2:
                continue
            pixels = np.frombuffer(self._map, np.uint8, offset=HEADER.size).reshape(self.shape).copy()
            _, again, _, _, sim_ns, render_us = HEADER.unpack_from(self._map, 0)
            if again == seq:
                return SharedFrame(pixels, seq // 2, sim_ns / 1e9, render_us / 1e6)

    def close(self) -> None:
        self._map.close()
