"""Seeded fuzzer of the C servo layer, built with AddressSanitizer and UBSan.

    python tests/kernels_fuzz.py [--seed N] [--seconds S] [--build DIR] [--phase receive|loop]   (make fuzz)

Compiles kernels/csrc/*.c with -fsanitize=address,undefined -fno-sanitize-recover=undefined into DIR
(never over the in-place extension), then runs itself again under the sanitizer runtime: a Python
interpreter is not linked against libasan, so LD_PRELOAD brings it (and libubsan) in first, and
ASAN_OPTIONS=detect_leaks=0 because CPython's own allocations at exit are not leaks of ours. For S
seconds it then drives, through a fake bus on a pty (kernels_fakebus), with seed N:

  receive  every instruction against replies drawn from garbage, floods, split, truncated and late
           packets, bad checksums, wrong ids and lengths, impossible ERR bytes, stray headers,
           silence, replies identical to the request, behind an adapter that echoes after noise;
           several threads share one bus and one of them may close it.
  loop     a ControlLoop while threads submit odd, empty, NaN, huge and numpy chunks, hold, start
           and stop from several threads, drain records and read status, the bus turning silent,
           hostile or lying now and then.

It fails (non-zero exit) on a sanitizer report (the child aborts), a crash, a hang (watchdog), an
unexpected exception, a value decoded that the fake servo never sent, or a goal outside the limits
or a step larger than max_step.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import faulthandler
import importlib.util
import os
import random
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from kernels_fakebus import (  # noqa: E402 (the folder is not a package)
    FakeBus,
    Request,
    Servos,
    checksum,
    status,
    u16,
)

ROOT = Path(__file__).resolve().parent.parent
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
IDS = [1, 2, 3]


# --- build and run under the sanitizers ---------------------------------------------------------------------


def build(out_dir: Path) -> Path:
    """The extension, sanitized, as out_dir/_native<EXT_SUFFIX>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ("_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    sources = sorted(str(p) for p in (ROOT / "kernels" / "csrc").glob("*.c"))
    flags = ["-O1", "-g", "-std=c11", "-D_GNU_SOURCE", "-fPIC", "-shared", "-Wall", "-Wextra", *SANITIZE]
    includes = ["-I", sysconfig.get_paths()["include"], "-I", str(ROOT / "kernels" / "csrc")]
    subprocess.run(["gcc", *flags, *includes, *sources, "-lpthread", "-lrt", "-o", str(target)], check=True)
    return target


def sanitizer_env() -> dict[str, str]:
    def runtime(name: str) -> str:
        return subprocess.run(
            ["gcc", f"-print-file-name={name}"], capture_output=True, text=True
        ).stdout.strip()

    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{runtime('libasan.so')}:{runtime('libubsan.so')}"
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("rynn_edge.kernels._native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the oracle: what the fake servo really sent ------------------------------------------------------------


class Sent:
    """Every complete, valid status packet (id, err, data) inside the bytes the fake servo sent, echoes
    excluded: an echo starts a new run (the host drops it and all before it)."""

    def __init__(self, fake: FakeBus) -> None:
        self.fake = fake
        self.seen = 0
        self.run = b""
        self.packets: set[tuple[int, int, bytes]] = set()

    def update(self) -> set[tuple[int, int, bytes]]:
        sent = self.fake.sent[: len(self.fake.sent)]
        for kind, data in sent[self.seen :]:
            if kind == "echo":
                self.run = b""
                continue
            start = max(0, len(self.run) - 256)
            self.run += data
            self._scan(start)
            self.run = self.run[-256:]
        self.seen = len(sent)
        return self.packets

    def _scan(self, start: int) -> None:
        run = self.run
        i = start - 1
        while (i := run.find(b"\xff\xff", i + 1)) >= 0 and i + 5 < len(run):
            total = run[i + 3] + 4
            body = run[i + 2 : i + total - 1]
            if i + total <= len(run) and run[i + 3] >= 2 and checksum(body) == run[i + total - 1]:
                self.packets.add((run[i + 2], run[i + 4], bytes(run[i + 5 : i + total - 1])))


class Failure(AssertionError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failure(what)


# --- a hostile bus ------------------------------------------------------------------------------------------


class Adversary:
    """Answers each request like a broken or malicious bus would, drawn from its own seeded stream."""

    def __init__(self, rng: random.Random, servos: Servos, hostility: float = 1.0) -> None:
        self.rng = rng
        self.servos = servos
        self.hostility = hostility
        self.moves: tuple[str, ...] = tuple(m for m in dir(self) if m.startswith("reply_"))

    def __call__(self, request: Request):
        good = self.servos(request)
        if self.rng.random() >= self.hostility:
            return good
        return getattr(self, self.rng.choice(self.moves))(request, good)

    def noise(self, n: int) -> bytes:
        return bytes(self.rng.choice((0xFF, 0xFF, 0x00, self.rng.randrange(256))) for _ in range(n))

    def some_packet(self, request: Request) -> bytes:
        servo = self.rng.choice((request.id, *IDS, self.rng.randrange(254)))
        data = bytes(self.rng.randrange(256) for _ in range(self.rng.choice((0, 1, 2, 2, 2, 4))))
        return status(servo, self.rng.choice((0, 0, 0x01, 0x02, 0x20, 0x2F)), data)

    def reply_good(self, request: Request, good: bytes) -> bytes:
        return good

    def reply_silence(self, request: Request, good: bytes) -> bytes:
        return b""

    def reply_garbage(self, request: Request, good: bytes) -> bytes:
        return self.noise(self.rng.randrange(1, 64)) + good + self.noise(self.rng.randrange(0, 8))

    def reply_flood(self, request: Request, good: bytes) -> bytes:
        return self.noise(self.rng.randrange(1000, 6000))

    def reply_split(self, request: Request, good: bytes) -> list[tuple[float, bytes]]:
        cuts = sorted(self.rng.randrange(len(good) + 1) for _ in range(3))
        pieces = [good[a:b] for a, b in zip([0, *cuts], [*cuts, len(good)], strict=True)]
        return [(self.rng.random() * 0.002, p) for p in pieces]

    def reply_truncated(self, request: Request, good: bytes) -> bytes:
        return good[: self.rng.randrange(len(good) + 1)]

    def reply_bad_checksum(self, request: Request, good: bytes) -> bytes:
        return good[:-1] + bytes([good[-1] ^ 0x5A]) if good else good

    def reply_other_packets(self, request: Request, good: bytes) -> bytes:
        return b"".join(self.some_packet(request) for _ in range(self.rng.randrange(1, 5))) + good

    def reply_impossible_err(self, request: Request, good: bytes) -> bytes:
        return status(request.id, self.rng.choice((0x10, 0x40, 0x80, 0x82, 0x83)), u16(1234)) + good

    def reply_stray_header(self, request: Request, good: bytes) -> bytes:
        return bytes([0xFF, 0xFF, request.id % 254, self.rng.randrange(2, 250), 0]) + good

    def reply_copy_of_request(self, request: Request, good: bytes) -> bytes:
        return request.raw + good if self.rng.random() < 0.5 else request.raw

    def reply_late(self, request: Request, good: bytes) -> list[tuple[float, bytes]]:
        return [(0.01 + 0.02 * self.rng.random(), good)]

    def reply_twice(self, request: Request, good: bytes) -> bytes:
        return good + self.some_packet(request) + good


# --- receive path -------------------------------------------------------------------------------------------


def random_ids(rng: random.Random) -> list[int]:
    return rng.sample([*IDS, 7, 200, 253], rng.randrange(1, 5))


def random_op(rng: random.Random, fe: ModuleType) -> tuple[str, tuple]:
    servo = rng.choice([*IDS, *IDS, 9, 253, fe.BROADCAST_ID])
    addr = rng.choice((56, 56, 3, 40, 42, rng.randrange(256)))
    n = rng.choice((1, 2, 2, 4, 8))
    ids = random_ids(rng)
    rows = [bytes(rng.randrange(256) for _ in range(n)) for _ in ids]
    return rng.choice(
        [
            ("ping", (servo,)),
            ("read", (servo if servo != fe.BROADCAST_ID else 1, addr, n)),
            ("write", (servo, addr, rows[0])),
            ("reg_write", (servo, addr, rows[0])),
            ("action", (servo,)),
            ("sync_read", (ids, addr, n)),
            ("sync_write", (ids, addr, rows)),
            ("sync_write_read", (ids, 42, rows, 56, 2)),
            ("torque_off", (ids,)),
            ("read", (servo, addr, rng.choice((0, 300)))),  # refused: ValueError
            ("sync_read", ([1, 1], addr, n)),  # refused: ValueError
        ]
    )


def check_result(name: str, args: tuple, result: object, sent: set) -> None:
    """Every value the host decoded must be a packet the fake servo sent."""
    if name == "read":
        data, err = result
        check((args[0], err, data) in sent, f"read{args} -> {result} was never sent")
    elif name in ("write", "reg_write") and args[0] != 0xFE:
        check((args[0], result, b"") in sent, f"{name}{args[:2]} -> {result} was never sent")
    elif name == "ping":
        model, err = result
        reads = {e for i, e, d in sent if i == args[0] and d == model.to_bytes(2, "little")}
        pings = {0} | {e for i, e, d in sent if i == args[0] and d == b""}
        check(any(e1 | e2 == err for e1 in pings for e2 in reads), f"ping{args} -> {result} was never sent")
    elif name in ("sync_read", "sync_write_read"):
        for servo, (data, err) in zip(args[0], result, strict=True):
            good = data is None and err in (-1, -2) or (servo, err, data) in sent
            check(good, f"{name} id {servo} -> {(data, err)} was never sent")


def receive_session(fe: ModuleType, rng: random.Random, ops: int) -> int:
    servos = Servos({i: rng.randrange(4096) for i in IDS}, error=rng.choice((0, 0, 0, 0x01, 0x20)))
    echo = rng.random() < 0.4
    adversary = Adversary(random.Random(rng.random()), servos)
    noise = (lambda: adversary.noise(rng.randrange(0, 4))) if echo else (lambda: b"")
    with FakeBus(adversary, echo=echo, before_echo=noise) as fake:
        bus = fe.Bus(fake.port, timeout_ms=rng.choice((1.0, 2.0, 4.0)), retries=rng.randrange(3))
        sent = Sent(fake)
        lock = threading.Lock()  # the checks only: the bus itself is shared unguarded
        done = [0]
        closer_at = rng.randrange(ops) if rng.random() < 0.3 else -1

        def worker(seed: float) -> None:
            wrng = random.Random(seed)
            for k in range(ops):
                if k == closer_at:
                    bus.close()
                name, args = random_op(wrng, fe)
                t0 = time.monotonic()
                try:
                    result = getattr(bus, name)(*args)
                except (fe.BusTimeoutError, fe.BusError, ValueError):
                    result = None
                check(time.monotonic() - t0 < 5.0, f"{name}{args} took {time.monotonic() - t0:.1f} s")
                with lock:
                    if result is not None:
                        check_result(name, args, result, sent.update())
                    done[0] += 1

        seeds = [rng.random() for _ in range(rng.choice((1, 1, 2, 3)))]
        run_threads([lambda s=s: worker(s) for s in seeds], 60.0)
        bus.close()
    return done[0]


# --- control loop -------------------------------------------------------------------------------------------


class LoopCase:
    """One ControlLoop on a fake bus, the goal oracle, and the hostile threads around it."""

    def __init__(self, fe: ModuleType, rng: random.Random) -> None:
        self.fe = fe
        self.rng = rng
        k = rng.randrange(1, len(IDS) + 1)
        self.ids = IDS[:k]
        self.lower = [rng.randrange(0, 1500) for _ in self.ids]
        self.upper = [lo + rng.randrange(0, 2500) for lo in self.lower]
        self.step = [rng.choice((1, 5, 20, 200, 4000)) for _ in self.ids]
        start = [rng.randrange(lo - 10, hi + 10) for lo, hi in zip(self.lower, self.upper, strict=True)]
        self.servos = Servos(dict(zip(self.ids, start, strict=True)), follow=True)
        self.servos.position = self.position
        self.lying = False
        self.lies = random.Random(rng.random())
        self.adversary = Adversary(random.Random(rng.random()), self.servos, hostility=0.0)
        self.rate = rng.choice((50.0, 100.0, 200.0, 500.0))
        self.stop = threading.Event()
        self.outcomes: collections.Counter[str] = collections.Counter()  # of start() / stop() calls

    def check_goals_written(self) -> None:
        for goals in self.servos.goals[:]:
            for i, g in goals.items():
                k = self.ids.index(i)
                check(
                    self.lower[k] <= g <= self.upper[k],
                    f"goal {g} of id {i} outside {self.lower[k], self.upper[k]}",
                )

    def check_records(self, records: bytes, dtype: dict, previous: list, sent: set) -> None:
        for rec in np.frombuffer(records, dtype=np.dtype(dtype)):
            goal, cycle = rec["goal"].tolist(), int(rec["cycle"])
            if previous and cycle == previous[0] + 1:
                steps = [abs(a - b) for a, b in zip(goal, previous[1], strict=True)]
                check(
                    all(s <= m for s, m in zip(steps, self.step, strict=True)), f"step {steps} > {self.step}"
                )
            for k, i in enumerate(self.ids):
                check(
                    self.lower[k] <= goal[k] <= self.upper[k], f"record goal {goal[k]} of id {i} off limits"
                )
                if rec["flags"][k] & self.fe.RECORD_VALID:
                    p = int(rec["present"][k])
                    check((i, int(rec["error"][k]), u16(p)) in sent, f"present {p} of id {i} was never sent")
            previous[:] = [cycle, goal]

    def position(self, servo_id: int) -> int:
        return self.lies.randrange(-100, 4200) if self.lying else self.servos.positions[servo_id]

    def weather(self) -> None:
        """Now and then the bus turns silent or hostile, or the servos lie about where they are."""
        while not self.stop.wait(self.rng.random() * 0.2):
            self.adversary.hostility = self.rng.choice((0.0, 0.0, 0.05, 0.3, 1.0))
            self.lying = self.rng.random() < 0.2

    def submitter(self, loop) -> None:
        rng, n = random.Random(self.rng.random()), len(self.ids)
        chunks: list[Callable[[], tuple]] = [
            lambda: (time.monotonic_ns(), [[rng.randrange(-500, 4600) for _ in range(n)] for _ in range(40)]),
            lambda: (time.monotonic_ns(), np.full((rng.randrange(1, 50), n), rng.randrange(4096))),
            lambda: (time.monotonic_ns(), []),
            lambda: (time.monotonic_ns(), [[float("nan")] * n]),
            lambda: (time.monotonic_ns(), [[2**40] * n]),
            lambda: (time.monotonic_ns(), [[1] * (n + 1)]),
            lambda: (rng.choice((-(2**63), -1, 2**62 + 1, 2**63 - 1)), [[2048] * n]),
            lambda: (time.monotonic_ns() + rng.randrange(10**9), [[rng.randrange(4096)] * n] * 3),
        ]
        while not self.stop.wait(rng.random() * 0.01):
            if rng.random() < 0.1:
                loop.hold()
                continue
            t0, rows = rng.choice(chunks)()
            with contextlib.suppress(ValueError, TypeError, OverflowError):  # refused, as they should be
                loop.submit_chunk(t0, rows, rng.randrange(-5, 1000))

    def lifecycle(self, loop) -> None:
        rng = random.Random(self.rng.random())
        while not self.stop.wait(rng.random() * 0.2):
            try:
                loop.start() if rng.random() < 0.6 else loop.stop()
                self.outcomes["ok"] += 1
            except RuntimeError as err:
                check("already" in str(err), f"start(): {err}")
                self.outcomes["already"] += 1
            except self.fe.BusError as err:  # also BusTimeoutError: start refused, or stop() came meanwhile
                self.outcomes[errno.errorcode.get(err.errno or 0, type(err).__name__)] += 1

    def reader(self, loop, sent: Sent) -> int:
        rng, previous, n = random.Random(self.rng.random()), [], 0
        while not self.stop.wait(rng.random() * 0.01):
            status = loop.status()
            check(len(status["goal"]) == len(self.ids), "status() shape")
            records = loop.drain_records(rng.choice((None, 0, 1, 100)))
            self.check_records(records, loop.record_dtype, previous, sent.update())
            n += len(records) // loop.record_dtype["itemsize"]
        return n


def loop_session(fe: ModuleType, rng: random.Random, seconds: float) -> tuple[int, collections.Counter]:
    case = LoopCase(fe, rng)
    with FakeBus(case.adversary) as fake:
        bus = fe.Bus(fake.port, timeout_ms=2.0, retries=rng.randrange(3))
        loop = fe.ControlLoop(
            bus,
            case.ids,
            case.rate,
            rng.choice((5.0, 30.0, 100.0)),
            case.lower,
            case.upper,
            case.step,
            max_missed_cycles=rng.choice((2, 10, 50)),
            rt_priority=0,
        )
        sent = Sent(fake)
        records = [0]
        jobs = [
            case.weather,
            lambda: case.submitter(loop),
            lambda: case.lifecycle(loop),
            lambda: case.lifecycle(loop),
            lambda: records.__setitem__(0, case.reader(loop, sent)),
        ]
        threading.Timer(seconds, case.stop.set).start()
        run_threads(jobs, seconds + 30.0)
        loop.stop()
        check(not loop.running, "running after stop()")
        case.check_goals_written()
        bus.close()
    return records[0], case.outcomes


# --- driver -------------------------------------------------------------------------------------------------


def run_threads(jobs: list[Callable[[], object]], timeout_s: float) -> None:
    """Runs jobs in threads; re-raises the first failure; a thread still alive after timeout_s is a hang."""
    errors: list[BaseException] = []

    def guard(job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=guard, args=(job,), daemon=True) for job in jobs]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    check(not any(t.is_alive() for t in threads), "hang: a thread did not finish")
    if errors:
        raise errors[0]


def fuzz(fe: ModuleType, seed: int, seconds: float, phases: list[str]) -> None:
    rng = random.Random(seed)
    if "receive" in phases:
        fuzz_receive(fe, rng, seconds / len(phases))
    if "loop" in phases:
        fuzz_loop(fe, rng, seconds / len(phases))


def fuzz_receive(fe: ModuleType, rng: random.Random, seconds: float) -> None:
    t_end = time.monotonic() + seconds
    sessions = ops = 0
    while time.monotonic() < t_end:
        ops += receive_session(fe, random.Random(rng.random()), 40)
        sessions += 1
    print(f"receive: {sessions} sessions, {ops} operations", flush=True)


def fuzz_loop(fe: ModuleType, rng: random.Random, seconds: float) -> None:
    t_end = time.monotonic() + seconds
    sessions = records = 0
    outcomes: collections.Counter[str] = collections.Counter()
    while time.monotonic() < t_end:
        n, calls = loop_session(fe, random.Random(rng.random()), min(3.0, max(0.5, t_end - time.monotonic())))
        records += n
        outcomes += calls
        sessions += 1
    print(f"loop: {sessions} sessions, {records} records checked, start/stop: {dict(outcomes)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "fuzz")
    parser.add_argument("--phase", choices=("receive", "loop"), action="append", help="default: both")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the sanitized extension to fuzz
    args = parser.parse_args()
    if args.child:
        faulthandler.dump_traceback_later(args.seconds + 120.0, exit=True)  # a hang ends as a failure
        sys.setswitchinterval(1e-4)  # the fake bus is a Python thread: keep it as prompt as a wire
        try:
            fuzz(load(args.child), args.seed, args.seconds, args.phase or ["receive", "loop"])
        except Failure as err:
            print(f"FUZZ FAILURE (seed {args.seed}): {err}", file=sys.stderr)
            return 1
        return 0
    ext = build(args.build)
    cmd = [sys.executable, __file__, f"--child={ext}", f"--seed={args.seed}", f"--seconds={args.seconds}"]
    cmd += [f"--phase={phase}" for phase in args.phase or []]
    print(f"fuzzing {ext.name} under ASan+UBSan, seed {args.seed}, {args.seconds:g} s", flush=True)
    return subprocess.run(cmd, env=sanitizer_env(), timeout=args.seconds + 180.0).returncode


if __name__ == "__main__":
    sys.exit(main())
