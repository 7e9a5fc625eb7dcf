"""The simulator process: a pseudo-terminal behind a stable symlink, an event loop, wire timing, faults."""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import select
import signal
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim import control_table as ct
from rynn_edge.runtime.sim import protocol as p
from rynn_edge.runtime.sim.bus import Bus
from rynn_edge.runtime.sim.faults import FaultPlan
from rynn_edge.runtime.sim.servo import Servo

BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop
TICK_S = 0.02  # dynamics, timed faults
STATE_PERIOD_S = 0.1


@dataclass(frozen=True)
class PhysicsOptions:
    scene: str = "table"
    realtime_factor: float = 1.0
    camera_fps: float = 30.0  # 0: no rendering


@dataclass
class SimConfig:
    link: str
    ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    baud: int = 1_000_000
    wire_time: bool = False
    turnaround_us: float = 0.0  # firmware turnaround on top of Return_Delay_Time (wire-time mode)
    faults: tuple[str, ...] = ()
    seed: int = 0
    initial_positions: tuple[float, ...] = ()
    state_file: str | None = None
    exit_on_stdin_eof: bool = False  # set by launch(): the simulator dies with the process that started it
    physics: PhysicsOptions | None = None  # None: the kinematic servo model


@dataclass(order=True)
class _Out:
    due: float
    seq: int
    data: bytes = field(compare=False)


@contextlib.contextmanager
def _pty_link(link: str) -> Iterator[int]:
    """A raw-mode pty whose slave is published at `link`; yields the master fd, removes the link after."""
    master, slave = os.openpty()
    tty.setraw(slave)  # before any host opens it: no echo, no CR/LF translation
    os.set_blocking(master, False)
    target = os.ttyname(slave)
    path = Path(link)
    if path.exists() and not path.is_symlink():
        raise UserError(f"{link} exists and is not a symlink; choose another --link")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)  # atomic: a host never sees a missing or half-made link
    try:
        yield master
    finally:
        with contextlib.suppress(OSError):
            if os.readlink(path) == target:
                path.unlink()
        os.close(master)
        os.close(slave)  # held open all along so the master never sees EIO between host sessions


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.t0 = time.monotonic()
        positions = list(config.initial_positions) or [2048.0] * len(config.ids)
        if len(positions) != len(config.ids):
            raise UserError(f"--initial-positions has {len(positions)} values for {len(config.ids)} ids")
        baud_index = next(k for k, v in ct.BAUD_RATES.items() if v == config.baud)
        self.twin = self.cameras = None
        if config.physics is None:
            pairs = zip(config.ids, positions, strict=True)
            servos = [Servo(i, pos, self.t0, baud_index) for i, pos in pairs]
        else:
            servos = self._physics_servos(config.physics, positions, baud_index)
        self.tick_s = TICK_S if self.twin is None else self.twin.dt
        self.faults = FaultPlan(config.faults, config.seed)
        models = self.faults.models()
        self.bus = Bus((s.with_model(models[s.id]) if s.id in models else s for s in servos), config.baud)
        self.parser = p.Parser()
        self.byte_s = BITS_PER_BYTE / config.baud
        self.bus_free = 0.0
        self.out: list[_Out] = []
        self.seq = 0
        self.requests = 0
        self.state_seq = 0

    def _physics_servos(self, options: PhysicsOptions, positions: list[float], baud: int) -> list[Servo]:
        from rynn_edge.runtime.sim.physics import JOINTS, PhysicsServo, Twin
        from rynn_edge.runtime.sim.scene import build_scene

        if len(self.config.ids) != len(JOINTS):
            raise UserError(f"--physics drives the joints {', '.join(JOINTS)}: give six --ids, in that order")
        self.scene_xml = build_scene(options.scene)
        twin = Twin(self.scene_xml, self.t0, realtime_factor=options.realtime_factor, seed=self.config.seed)
        self.twin = twin
        return [
            PhysicsServo(twin, joint, i, pos, self.t0, baud)
            for joint, (i, pos) in enumerate(zip(self.config.ids, positions, strict=True))
        ]

    def _elapsed(self, now: float) -> float:
        return now - self.t0

    def _send(self, due: float, data: bytes) -> None:
        self.seq += 1
        heapq.heappush(self.out, _Out(due, self.seq, data))

    def on_bytes(self, data: bytes, now: float) -> None:
        if self.faults.echo:
            self._send(now, data)
        for ins in self.parser.feed(data, now):
            self.on_request(ins, now)

    def on_request(self, ins: p.Instruction, now: float) -> None:
        self.requests += 1
        t = self._elapsed(now)
        self.tick(now)
        if self.faults.hits("drop", t):
            return
        replies = self.bus.handle(ins, now, self.faults.muted(t))
        late = self.faults.late_s(t) if replies else 0.0
        # Wire time: the request occupies the bus, then each servo waits its return delay and sends.
        size = len(ins.params) + 6
        end = max(now, self.bus_free) + size * self.byte_s if self.config.wire_time else now
        for reply in replies:
            packet = reply.packet
            if self.faults.hits("corrupt", t):
                packet = packet[:-1] + bytes([packet[-1] ^ 0xFF])
            if self.faults.hits("truncate", t):
                packet = packet[: len(packet) // 2]
            if self.config.wire_time:
                end += reply.delay_s + self.config.turnaround_us * 1e-6 + len(packet) * self.byte_s
            self._send(end + late, packet)
        self.bus_free = end

    def tick(self, now: float) -> None:
        for servo_id, bits in self.faults.due_errors(self._elapsed(now)):
            for servo in self.bus.servos:
                if servo.id == servo_id:
                    servo.inject(bits, now)
        self.bus.tick(now)

    def state(self, now: float) -> dict[str, object]:
        self.tick(now)
        self.state_seq += 1
        muted = self.faults.muted(self._elapsed(now))
        state = {
            "seq": self.state_seq,
            "time": round(self._elapsed(now), 4),
            "requests": self.requests,
            "bad_packets": self.parser.bad_packets,
            "servos": [{**s.snapshot(), "silent": s.id in muted} for s in self.bus.servos],
        }
        if self.twin is not None:
            state["twin"] = {**self.twin.stats(now), **(self.cameras.stats() if self.cameras else {})}
        return state

    def write_state(self, now: float) -> None:
        path = self.config.state_file
        if path:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.state(now), f)
            os.replace(tmp, path)

    def serve(self, ready: Callable[[str], None]) -> None:
        """Run until SIGINT/SIGTERM. SIGUSR1 rewrites the state file at once."""
        flags = {"stop": False, "dump": False}
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)

        def on_stop(_signum: int, _frame: object) -> None:
            flags["stop"] = True

        def on_dump(_signum: int, _frame: object) -> None:
            flags["dump"] = True

        previous = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_dump)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            with self._camera_rig(), _pty_link(self.config.link) as master:  # link last: all is live
                self.t0 = time.monotonic()
                for servo in self.bus.servos:
                    servo.last = self.t0
                if self.twin is not None:
                    self.twin.start(self.t0)
                self.write_state(self.t0)
                ready(self.config.link)
                self._loop(master, wake_r, flags)
                self.write_state(time.monotonic())
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(wake_r)
            os.close(wake_w)

    @contextlib.contextmanager
    def _camera_rig(self) -> Iterator[None]:
        """The twin's rendered cameras, published beside the link while the bus is live."""
        options = self.config.physics
        if self.twin is None or options is None or options.camera_fps <= 0:
            yield
            return
        from rynn_edge.runtime.sim.frames import frames_dir
        from rynn_edge.runtime.sim.render import RenderProcess

        folder = frames_dir(self.config.link)
        self.cameras = RenderProcess(self.twin, self.scene_xml, folder, options.camera_fps)
        try:  # its first frames are there before the ready line
            yield
        finally:
            self.cameras.close()

    def _loop(self, master: int, wake_r: int, flags: dict[str, bool]) -> None:
        next_tick = next_state = time.monotonic()
        while not flags["stop"]:
            now = time.monotonic()
            wake_at = min(next_tick, self.out[0].due if self.out else next_tick)
            watched = [master, wake_r, 0] if self.config.exit_on_stdin_eof else [master, wake_r]
            readable, _, _ = select.select(watched, [], [], max(0.0, wake_at - now))
            if 0 in readable and not os.read(0, 512):
                break
            now = time.monotonic()
            if master in readable:
                with contextlib.suppress(BlockingIOError):
                    self.on_bytes(os.read(master, 4096), now)
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            while self.out and self.out[0].due <= now:
                with contextlib.suppress(BlockingIOError):  # nobody reading and the buffer is full
                    os.write(master, heapq.heappop(self.out).data)
            if now >= next_tick:
                self.tick(now)
                next_tick = now + self.tick_s
            if flags["dump"] or now >= next_state:
                flags["dump"] = False
                self.write_state(now)
                next_state = now + STATE_PERIOD_S
