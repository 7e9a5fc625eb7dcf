"""A scriptable Feetech bus on a pseudo-terminal, for the C kernels tests and the fuzzer (kernels_fuzz.py).

The host (the C `Bus`) opens `FakeBus.port`, a real pty; a thread here reads the request packets it writes
and answers with the bytes `answer(request)` returns, which may be anything a broken or malicious bus sends:
a servo's status packets, noise, stray headers, a reply split into late pieces, silence. `echo=True` makes
it an adapter that copies every host byte back first (after `before_echo()` bytes of noise).

`Servos` is the well-behaved part: STS3215s with a model number, a present position and an ERR byte,
answering PING, READ, WRITE, SYNC_READ and SYNC_WRITE (goals are logged, positions stay put unless
`follow`).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import os
import pty
import select
import threading
import time
import tty
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

PING, READ, WRITE, REG_WRITE, ACTION, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x82, 0x83
MODEL = 777  # STS3215 model number, register 3
PRESENT_POSITION, GOAL_POSITION = 56, 42

# What `answer` returns: bytes to send at once, or (delay_s, bytes) pieces sent one after the other.
Answer = bytes | Iterable[tuple[float, bytes]]


class Request(NamedTuple):
    id: int
    instruction: int
    params: bytes
    raw: bytes


def checksum(body: bytes) -> int:
    return ~sum(body) & 0xFF


def status(servo_id: int, error: int, data: bytes = b"") -> bytes:
    """A status packet: FF FF id len err data chk."""
    body = bytes([servo_id, len(data) + 2, error]) + data
    return b"\xff\xff" + body + bytes([checksum(body)])


def u16(value: int) -> bytes:
    """A position register value (sign-magnitude, bit 15) as the 2 bytes a servo sends."""
    raw = (-value & 0x7FFF) | 0x8000 if value < 0 else value & 0x7FFF
    return raw.to_bytes(2, "little")


def split_requests(buf: bytes) -> tuple[list[Request], bytes]:
    """Host packets in buf (the host never sends garbage) and the unfinished rest."""
    out = []
    while len(buf) >= 4 and buf[:2] == b"\xff\xff":
        total = buf[3] + 4
        if len(buf) < total:
            break
        out.append(Request(buf[2], buf[4], bytes(buf[5 : total - 1]), bytes(buf[:total])))
        buf = buf[total:]
    return out, buf


def from_u16(data: bytes) -> int:
    raw = int.from_bytes(data[:2], "little")
    return -(raw & 0x7FFF) if raw & 0x8000 else raw


def sync_write_goals(request: Request) -> dict[int, int]:
    """{id: goal} of a SYNC_WRITE of 2-byte values."""
    body = request.params[2:]
    return {body[k]: from_u16(body[k + 1 : k + 3]) for k in range(0, len(body), 3)}


@dataclass
class Servos:
    """Well-behaved STS3215s. `position(id)` may be replaced to make them report something else."""

    positions: dict[int, int]
    error: int = 0
    follow: bool = False  # present position jumps to each goal written
    goals: list[dict[int, int]] = field(default_factory=list)  # every SYNC_WRITE / WRITE of goals, in order
    reads: int = 0  # position reads answered

    def position(self, servo_id: int) -> int:
        return self.positions[servo_id]

    def register(self, servo_id: int, addr: int, length: int) -> bytes:
        if addr == PRESENT_POSITION:
            self.reads += 1
            return u16(self.position(servo_id))[:length].ljust(length, b"\0")
        if addr == 3:
            return MODEL.to_bytes(2, "little")[:length].ljust(length, b"\0")
        return bytes(length)

    def write_goal(self, goals: dict[int, int]) -> None:
        self.goals.append(goals)
        if self.follow:
            self.positions.update({i: g for i, g in goals.items() if i in self.positions})

    def __call__(self, request: Request) -> Answer:
        i, ins, p = request.id, request.instruction, request.params
        if ins == SYNC_WRITE and p[:2] == bytes([GOAL_POSITION, 2]):
            self.write_goal(sync_write_goals(request))
        if ins == SYNC_READ:
            return b"".join(
                status(j, self.error, self.register(j, p[0], p[1])) for j in p[2:] if j in self.positions
            )
        if i not in self.positions:
            return b""
        if ins == PING:
            return status(i, self.error)
        if ins == READ:
            return status(i, self.error, self.register(i, p[0], p[1]))
        if ins == WRITE:
            if p[0] == GOAL_POSITION and len(p) == 3:
                self.write_goal({i: from_u16(p[1:])})
            return status(i, self.error)
        return b""


class FakeBus:
    """A pty whose far end is `answer`; use as a context manager. `requests` logs what the host sent.

    One thread, never blocked: requests are read (and echoed) the moment they arrive, answers go out when
    they are due, a flood as fast as the pty takes it. `sent` is what went onto the wire, in order."""

    def __init__(
        self,
        answer: Callable[[Request], Answer],
        *,
        echo: bool = False,
        before_echo: Callable[[], bytes] = lambda: b"",
    ) -> None:
        self.answer = answer
        self.echo = echo
        self.before_echo = before_echo
        self.requests: list[Request] = []
        self.sent: list[tuple[str, bytes]] = []  # ("servo" | "echo", bytes) in wire order
        self.error: BaseException | None = None
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF mangling: raw bytes both ways
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave)
        self._ready: collections.deque[tuple[str, bytes]] = collections.deque()  # (kind, bytes) due, in order
        self._later: list[tuple[float, int, bytes]] = []  # heap of (due, seq, bytes): late pieces
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-bus", daemon=True)

    def __enter__(self) -> FakeBus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        os.close(self.master)
        os.close(self._slave)
        if self.error is not None:
            raise self.error

    def _schedule(self, answer: Answer, now: float) -> None:
        if isinstance(answer, bytes):
            answer = [(0.0, answer)]
        for delay, piece in answer:
            now += delay
            self._seq += 1
            heapq.heappush(self._later, (now, self._seq, piece))

    def _take(self, chunk: bytes, pending: bytes, now: float) -> bytes:
        if self.echo:
            self._ready.append(("servo", self.before_echo()))
            self._ready.append(("echo", chunk))
        requests, pending = split_requests(pending + chunk)
        for request in requests:
            self.requests.append(request)
            self._schedule(self.answer(request), now)
        return pending

    def _write_some(self) -> None:
        kind, data = self._ready.popleft()
        if kind:  # logged before the host can read it; the rest of a partial write goes next, unlogged
            self.sent.append((kind, data))
        try:
            n = os.write(self.master, data) if data else 0
        except BlockingIOError:
            n = 0
        if n < len(data):
            self._ready.appendleft(("", data[n:]))

    def _serve(self) -> None:
        pending = b""
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    self._ready.append(("servo", heapq.heappop(self._later)[2]))
                wait = min(0.02, max(0.0, self._later[0][0] - now)) if self._later else 0.02
                out = [self.master] if self._ready else []
                readable, writable, _ = select.select([self.master], out, [], 0.0 if out else wait)
                if readable:
                    with contextlib.suppress(BlockingIOError):
                        pending = self._take(os.read(self.master, 4096), pending, time.monotonic())
                if writable:
                    self._write_some()
                elif out and not readable:
                    select.select([self.master], out, [], wait)  # the pty is full: wait for the host
        except BaseException as err:  # surfaced by close(): a broken fake must fail the test
            self.error = err
