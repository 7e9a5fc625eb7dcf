"""The simulator's own packet codec and parser against the test vectors of research/so100-feetech.md §1.7."""

from __future__ import annotations

import pytest

from rynn_edge.runtime.sim import control_table as ct
from rynn_edge.runtime.sim import protocol as p
from rynn_edge.runtime.sim.bus import Bus
from rynn_edge.runtime.sim.faults import FaultPlan
from rynn_edge.runtime.sim.servo import Servo

GOALS_2048 = b"".join(bytes([i, 0x00, 0x08]) for i in range(1, 7))
SYNC_READ_1_6 = "FF FF FE 0A 82 38 02 01 02 03 04 05 06 26"
SYNC_WRITE_2048 = "FF FF FE 16 83 2A 02 01 00 08 02 00 08 03 00 08 04 00 08 05 00 08 06 00 08 F7"


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (p.encode_instruction(1, p.PING), "FF FF 01 02 01 FB"),
        (p.encode_status(1, 0), "FF FF 01 02 00 FC"),
        (p.encode_instruction(1, p.READ, bytes([56, 2])), "FF FF 01 04 02 38 02 BE"),
        (p.encode_status(1, 0, (2048).to_bytes(2, "little")), "FF FF 01 04 00 00 08 F2"),
        (p.encode_instruction(1, p.WRITE, bytes([40, 1])), "FF FF 01 04 03 28 01 CE"),
        (p.encode_instruction(0xFE, p.SYNC_READ, bytes([56, 2, 1, 2, 3, 4, 5, 6])), SYNC_READ_1_6),
        (p.encode_instruction(0xFE, p.SYNC_WRITE, bytes([42, 2]) + GOALS_2048), SYNC_WRITE_2048),
    ],
)  # fmt: skip
def test_test_vectors(packet: bytes, expected: str) -> None:
    assert packet == bytes.fromhex(expected)


def test_parser_ignores_write_boundaries_noise_and_bad_checksums() -> None:
    good = bytes.fromhex(SYNC_WRITE_2048)
    ping = p.encode_instruction(3, p.PING)
    bad = bytearray(p.encode_instruction(2, p.PING))
    bad[-1] ^= 1
    stream = b"\x00\xff\x13" + bytes(bad) + good + b"\xff" + ping
    parser = p.Parser()
    got = []
    for i in range(len(stream)):  # one byte per write
        got += parser.feed(stream[i : i + 1], now=0.0)
    assert [(g.id, g.code) for g in got] == [(0xFE, p.SYNC_WRITE), (3, p.PING)]
    assert got[0].params == good[5:-1]
    assert parser.bad_packets >= 1


def test_parser_drops_a_packet_interrupted_by_an_idle_line() -> None:
    ping = p.encode_instruction(1, p.PING)
    parser = p.Parser()
    assert parser.feed(ping[:3], now=0.0) == []
    assert parser.feed(ping[3:] + ping, now=1.0) == [p.Instruction(1, p.PING, b"")]


def test_sign_magnitude() -> None:
    assert ct.encode_signed(-100, 15) == 0x8064
    assert ct.encode_signed(-709, 11) == 0x0AC5
    assert ct.decode_signed(0x0AC5, 11) == -709
    assert ct.decode_signed(0x0400 | 250, 10) == -250
    assert ct.encode_signed(5000, 11) == 2047  # saturates at the magnitude range


def test_register_semantics_without_a_pty() -> None:
    servo = Servo(1, position=1000.0)
    bus = Bus([servo])
    # Read-only: version and feedback registers ignore writes.
    servo.write(ct.MODEL_NUMBER, b"\x00\x00", now=0.0)
    servo.write(ct.PRESENT_POSITION, b"\x00\x00", now=0.0)
    assert servo.get(ct.MODEL_NUMBER) == 777 and servo.get(ct.PRESENT_POSITION) == 1000
    # Homing offset: Present = Actual - offset; the physical position does not move.
    servo.write(ct.HOMING_OFFSET, ct.encode_signed(-200, 11).to_bytes(2, "little"), now=0.0)
    assert servo.present_position() == 1200
    # Torque_Enable = 128 re-centres: Present reads 2048, the offset absorbs the difference.
    servo.write(ct.TORQUE_ENABLE, bytes([128]), now=0.0)
    assert servo.present_position() == 2048 and servo.get(ct.HOMING_OFFSET) == 1000 - 2048
    assert servo.regs[ct.TORQUE_ENABLE] == 0
    # EPROM Lock: with Lock = 1 a write takes effect but does not survive a power cycle.
    servo.write(ct.MAX_POSITION_LIMIT, (3000).to_bytes(2, "little"), now=0.0)
    servo.power_cycle(now=0.0)
    assert servo.get(ct.MAX_POSITION_LIMIT) == 4095
    servo.write(ct.LOCK, b"\x00", now=0.0)
    servo.write(ct.MAX_POSITION_LIMIT, (3000).to_bytes(2, "little"), now=0.0)
    servo.power_cycle(now=0.0)
    assert servo.get(ct.MAX_POSITION_LIMIT) == 3000 and servo.regs[ct.LOCK] == 1
    # Response_Status_Level 0: WRITE is silent, READ and PING still answer.
    servo.write(ct.RESPONSE_STATUS_LEVEL, b"\x00", now=0.0)
    assert bus.handle(p.Instruction(1, p.WRITE, bytes([ct.ACCELERATION, 10])), 0.0) == []
    assert len(bus.handle(p.Instruction(1, p.READ, bytes([ct.ACCELERATION, 1])), 0.0)) == 1
    assert len(bus.handle(p.Instruction(1, p.PING, b""), 0.0)) == 1


def test_fault_schedule_parsing() -> None:
    plan = FaultPlan(["drop:1/3", "late:80:0.5@1", "silent:4@2.5", "overload:2"], seed=1)
    assert [plan.hits("drop", 0.0) for _ in range(6)] == [False, False, True, False, False, True]
    assert plan.late_s(0.5) == 0.0
    assert plan.muted(2.0) == frozenset() and plan.muted(2.6) == {4}
    assert plan.due_errors(0.0) == [(2, ct.ERR_OVERLOAD)] and plan.due_errors(1.0) == []
    for bad in ["nope", "drop:2", "silent", "late", "silent:x", "drop:1/0", "corrupt:0.1:3"]:
        with pytest.raises(Exception, match="fault"):
            FaultPlan([bad])
