"""Instruction semantics of a bus of STS3215 servos: who executes a packet and who answers, in what order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rynn_edge.runtime.sim import control_table as ct
from rynn_edge.runtime.sim import protocol as p
from rynn_edge.runtime.sim.servo import Servo


@dataclass
class Reply:
    servo: Servo
    packet: bytes

    @property
    def delay_s(self) -> float:
        """Return_Delay_Time: the servo waits 2 us per unit before it drives the line."""
        return self.servo.regs[ct.RETURN_DELAY_TIME] * 2e-6


class Bus:
    def __init__(self, servos: Iterable[Servo], baud: int = 1_000_000) -> None:
        self.servos = list(servos)
        self.baud = baud

    def listening(self, muted: frozenset[int]) -> list[Servo]:
        """Servos that can hear the host: not muted by a fault and set to the bus baud rate."""
        return [
            s
            for s in sorted(self.servos, key=lambda s: s.id)
            if s.id not in muted and ct.BAUD_RATES.get(s.regs[ct.BAUD_RATE]) == self.baud
        ]

    def tick(self, now: float) -> None:
        for servo in self.servos:
            servo.advance(now)

    def handle(self, ins: p.Instruction, now: float, muted: frozenset[int] = frozenset()) -> list[Reply]:
        servos = self.listening(muted)
        if ins.code == p.SYNC_WRITE:
            self._sync_write(servos, ins.params, now)
            return []
        if ins.code == p.SYNC_READ:
            return self._sync_read(servos, ins.params, now)
        broadcast = ins.id == p.BROADCAST_ID
        replies = []
        for servo in servos:
            if broadcast or servo.id == ins.id:
                reply = self._unicast(servo, ins, now, broadcast)
                if reply is not None:
                    replies.append(reply)
        return replies

    @staticmethod
    def _unicast(servo: Servo, ins: p.Instruction, now: float, broadcast: bool) -> Reply | None:
        code, params = ins.code, ins.params
        data = b""
        if code == p.PING:
            return Reply(servo, p.encode_status(servo.id, servo.error))
        if code == p.READ:
            if len(params) != 2 or broadcast:
                return None
            data = servo.read(params[0], params[1], now)
        elif code == p.WRITE and len(params) >= 2:
            servo.write(params[0], params[1:], now)
        elif code == p.REG_WRITE and len(params) >= 2:
            servo.reg_write(params[0], params[1:])
        elif code == p.ACTION:
            servo.action(now)
        elif code == p.RESET:
            servo.factory_reset(now)
        elif code == p.REBOOT:
            servo.power_cycle(now)
        else:
            return None  # unknown or malformed: a real servo stays silent
        if code != p.READ and (broadcast or servo.regs[ct.RESPONSE_STATUS_LEVEL] == 0):
            return None
        return Reply(servo, p.encode_status(servo.id, servo.error, data))

    @staticmethod
    def _sync_write(servos: list[Servo], params: bytes, now: float) -> None:
        if len(params) < 2:
            return
        address, length = params[0], params[1]
        by_id = {s.id: s for s in servos}
        for i in range(2, len(params) - length, length + 1):
            servo = by_id.get(params[i])
            if servo is not None:
                servo.write(address, params[i + 1 : i + 1 + length], now)

    @staticmethod
    def _sync_read(servos: list[Servo], params: bytes, now: float) -> list[Reply]:
        if len(params) < 3:
            return []
        address, length = params[0], params[1]
        by_id = {s.id: s for s in servos}
        return [
            Reply(by_id[i], p.encode_status(i, by_id[i].error, by_id[i].read(address, length, now)))
            for i in params[2:]
            if i in by_id
        ]
