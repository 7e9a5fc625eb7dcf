"""Fault injection: the `--fault` spec language and a seeded, repeatable schedule."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim import control_table as ct

SPEC_HELP = """\
fault spec: KIND[:ARG[:RATE]][@T]   (repeat --fault; T = seconds after the ready line, default 0)
  drop[:RATE]       the bus loses a request: no servo executes it, nobody answers (host: timeout)
  corrupt[:RATE]    a status packet goes out with a wrong checksum (host: corrupt packet)
  truncate[:RATE]   a status packet is cut off after half its bytes (host: timeout or corrupt)
  late:MS[:RATE]    a reply is held back MS milliseconds (longer than the host timeout: a stale reply)
  silent:ID         servo ID stops hearing and answering (cut cable); it keeps its last goal
  overload:ID       servo ID latches error bit 0x20 in Status and every status packet and drops torque
  overheat:ID       like overload with bit 0x04 and a temperature above Max_Temperature_Limit
  echo              the adapter echoes every host byte back (half-duplex wiring)
  model:ID:NUMBER   servo ID is another model: Model_Number reads NUMBER (a wrong servo on the bus)
  RATE is P (probability 0..1, drawn from --seed) or 1/N (every Nth event); default: every event.
  Latched errors clear only on REBOOT (0x08) / RESET (0x06), as a power cycle would.
  examples: --fault drop:0.05 --fault corrupt:1/10 --fault silent:3@2.5 --fault late:80:0.1"""

PER_EVENT = ("drop", "corrupt", "truncate", "late")
PER_SERVO = {"silent": 0, "overload": ct.ERR_OVERLOAD, "overheat": ct.ERR_OVERHEAT}
KINDS = (*PER_EVENT, *PER_SERVO, "echo", "model")


@dataclass
class Fault:
    kind: str
    start: float = 0.0
    servo_id: int = 0
    model: int = 0
    delay_ms: float = 0.0
    probability: float = 1.0
    every: int = 0
    rng: random.Random = field(default_factory=random.Random)
    count: int = 0

    def fires(self, now: float) -> bool:
        """One event happened (a request, a reply): does this fault hit it? Consumes the schedule."""
        if now < self.start:
            return False
        self.count += 1
        if self.every:
            return self.count % self.every == 0
        return self.probability >= 1.0 or self.rng.random() < self.probability


def _rate(text: str, spec: str) -> tuple[float, int]:
    try:
        if text.startswith("1/"):
            every = int(text[2:])
            if every >= 1:
                return 1.0, every
        else:
            probability = float(text)
            if 0.0 <= probability <= 1.0:
                return probability, 0
    except ValueError:
        pass
    raise UserError(f"fault {spec!r}: rate {text!r} must be a probability 0..1 or 1/N")


def parse_fault(spec: str, seed: int, index: int) -> Fault:
    body, _, at = spec.partition("@")
    kind, *args = body.split(":")
    if kind not in KINDS:
        raise UserError(f"fault {spec!r}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    try:
        start = float(at) if at else 0.0
    except ValueError:
        raise UserError(f"fault {spec!r}: @T must be seconds, e.g. silent:3@2.5") from None
    # Each fault draws from its own stream, so adding a fault never changes another one's schedule.
    fault = Fault(kind, start=start, rng=random.Random(f"{seed}/{index}/{kind}"))
    if kind == "late":
        if not args:
            raise UserError(f"fault {spec!r}: late needs a delay in ms, e.g. late:80")
        try:
            fault.delay_ms = float(args.pop(0))
        except ValueError:
            raise UserError(f"fault {spec!r}: delay must be milliseconds") from None
    if kind in PER_SERVO:
        if len(args) != 1 or not args[0].isdigit():
            raise UserError(f"fault {spec!r}: {kind} needs one servo id, e.g. {kind}:3")
        fault.servo_id = int(args.pop())
    if kind == "model":
        if len(args) != 2 or not all(a.isdigit() for a in args) or int(args[1]) > 0xFFFF:
            raise UserError(f"fault {spec!r}: model needs a servo id and a model number, e.g. model:3:1060")
        fault.servo_id, fault.model = int(args.pop(0)), int(args.pop())
    if kind in PER_EVENT and args:
        fault.probability, fault.every = _rate(args.pop(0), spec)
    if args:
        raise UserError(f"fault {spec!r}: unexpected {':'.join(args)!r}\n{SPEC_HELP}")
    return fault


class FaultPlan:
    def __init__(self, specs: list[str] | tuple[str, ...], seed: int = 0) -> None:
        self.faults = [parse_fault(spec, seed, i) for i, spec in enumerate(specs)]
        self._latched: set[int] = set()

    def _of(self, kind: str) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind]

    @property
    def echo(self) -> bool:
        return bool(self._of("echo"))

    def hits(self, kind: str, now: float) -> bool:
        """Does a drop / corrupt / truncate fault hit this event?"""
        return any([f.fires(now) for f in self._of(kind)])  # a list, not a generator: every schedule advances

    def late_s(self, now: float) -> float:
        return max([f.delay_ms / 1000.0 for f in self._of("late") if f.fires(now)], default=0.0)

    def models(self) -> dict[int, int]:
        """Servo id -> the model number it reports instead of the STS3215's (from power-on)."""
        return {f.servo_id: f.model for f in self._of("model")}

    def muted(self, now: float) -> frozenset[int]:
        return frozenset(f.servo_id for f in self._of("silent") if now >= f.start)

    def due_errors(self, now: float) -> list[tuple[int, int]]:
        """(servo id, error bits) of latching faults whose time has come, each returned once."""
        due = []
        for i, f in enumerate(self.faults):
            if PER_SERVO.get(f.kind) and now >= f.start and i not in self._latched:
                self._latched.add(i)
                due.append((f.servo_id, PER_SERVO[f.kind]))
        return due
