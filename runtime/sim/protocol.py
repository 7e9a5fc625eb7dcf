"""Feetech SCS/STS packet encoding and a byte-stream parser (servo side).

Written independently of the C driver in kernels/ on purpose: the two check each other.
Packet: FF FF ID LEN INSTR|ERR P1..PN CHK, LEN = N + 2, CHK = ~(ID + LEN + INSTR + P...) & 0xFF.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = b"\xff\xff"
BROADCAST_ID = 0xFE
MAX_PACKET = 250  # SDK TXPACKET_MAX_LEN / RXPACKET_MAX_LEN

PING = 0x01
READ = 0x02
WRITE = 0x03
REG_WRITE = 0x04
ACTION = 0x05
RESET = 0x06
REBOOT = 0x08
SYNC_READ = 0x82
SYNC_WRITE = 0x83

# A servo's receiver starts over when the line has been idle this long inside a packet.
IDLE_RESET_S = 0.02


@dataclass(frozen=True)
class Instruction:
    id: int
    code: int
    params: bytes


def checksum(body: bytes) -> int:
    """Checksum of ID, LEN, INSTR/ERR and the parameters (the FF FF header is not summed)."""
    return ~sum(body) & 0xFF


def _packet(servo_id: int, head: int, payload: bytes) -> bytes:
    body = bytes([servo_id, len(payload) + 2, head]) + payload
    return HEADER + body + bytes([checksum(body)])


def encode_instruction(servo_id: int, code: int, params: bytes = b"") -> bytes:
    return _packet(servo_id, code, params)


def encode_status(servo_id: int, error: int, data: bytes = b"") -> bytes:
    return _packet(servo_id, error, data)


class Parser:
    """Turns the host's byte stream into instruction packets, whatever the write() boundaries were.

    Bytes that do not form a valid packet (noise, bad checksum, impossible length) are skipped one at
    a time until the stream re-synchronises on the next FF FF header, as a servo's receiver does.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._last = 0.0
        self.bad_packets = 0

    def feed(self, data: bytes, now: float) -> list[Instruction]:
        if self._buf and now - self._last > IDLE_RESET_S:
            self._buf.clear()
        self._last = now
        self._buf += data
        out: list[Instruction] = []
        buf = self._buf
        while True:
            start = buf.find(HEADER)
            if start < 0:
                del buf[: len(buf) - 1 if buf.endswith(b"\xff") else len(buf)]
                return out
            del buf[:start]
            if len(buf) < 4:
                return out
            servo_id, length = buf[2], buf[3]
            if servo_id == 0xFF or length < 2 or length + 4 > MAX_PACKET:
                if servo_id != 0xFF:
                    self.bad_packets += 1
                del buf[0]
                continue
            total = length + 4
            if len(buf) < total:
                return out
            if checksum(buf[2 : total - 1]) != buf[total - 1]:
                self.bad_packets += 1
                del buf[0]
                continue
            out.append(Instruction(servo_id, buf[4], bytes(buf[5 : total - 1])))
            del buf[:total]
