"""Feetech packets from the C extension: research-doc vectors, byte identity with scservo_sdk, encodings."""

from __future__ import annotations

import os
import pty
import select
import tty

import pytest
from kernels_isolated import run_isolated

from rynn_edge.kernels import _native as fe

scs = pytest.importorskip("scservo_sdk")

IDS = [1, 2, 3, 4, 5, 6]

# research/so100-feetech.md §1.7
VECTORS = {
    "ping": ("FF FF 01 02 01 FB", lambda: fe.encode_packet(1, fe.INST_PING, b"")),
    "read": ("FF FF 01 04 02 38 02 BE", lambda: fe.encode_packet(1, fe.INST_READ, bytes([56, 2]))),
    "write": ("FF FF 01 04 03 28 01 CE", lambda: fe.encode_packet(1, fe.INST_WRITE, bytes([40, 1]))),
    "sync_read": ("FF FF FE 0A 82 38 02 01 02 03 04 05 06 26", lambda: fe.encode_sync_read(56, 2, IDS)),
    "sync_write": (
        "FF FF FE 16 83 2A 02 01 00 08 02 00 08 03 00 08 04 00 08 05 00 08 06 00 08 F7",
        lambda: fe.encode_sync_write(42, 2, {i: bytes([0x00, 0x08]) for i in IDS}),
    ),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_research_doc_vectors(name: str) -> None:
    expected, build = VECTORS[name]
    assert build() == bytes.fromhex(expected)


def test_status_vectors_parse() -> None:
    stream = bytes.fromhex("FF FF 01 02 00 FC") + bytes.fromhex("FF FF 01 04 00 00 08 F2")
    packets, bad, garbage = fe.parse_status_stream(stream)
    assert packets == [(1, 0, b""), (1, 0, b"\x00\x08")]
    assert (bad, garbage) == (0, 0)


class SdkCapture:
    """The real SDK PortHandler on a pty slave; we read what it writes from the master side."""

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.slave = slave
        self.port = scs.PortHandler(os.ttyname(slave))
        assert self.port.openPort()
        self.ph = scs.PacketHandler(0)

    def take(self) -> bytes:
        self.port.is_using = False  # TX-only calls leave the SDK's busy flag set for an rxPacket we skip
        out = b""
        while select.select([self.master], [], [], 0.05)[0]:
            out += os.read(self.master, 4096)
        return out

    def close(self) -> None:
        self.port.closePort()
        os.close(self.slave)
        os.close(self.master)


@pytest.fixture
def sdk() -> SdkCapture:
    cap = SdkCapture()
    yield cap
    cap.close()


def test_byte_identical_to_sdk_unicast(sdk: SdkCapture) -> None:
    ph, port = sdk.ph, sdk.port
    for servo_id in (1, 6, 253):
        ph.txPacket(port, [0, 0, servo_id, 2, scs.INST_PING, 0])
        assert sdk.take() == fe.encode_packet(servo_id, fe.INST_PING, b"")
        ph.readTx(port, servo_id, 56, 2)
        assert sdk.take() == fe.encode_packet(servo_id, fe.INST_READ, bytes([56, 2]))
        ph.writeTxOnly(port, servo_id, 42, 2, [0x34, 0x88])
        assert sdk.take() == fe.encode_packet(servo_id, fe.INST_WRITE, bytes([42, 0x34, 0x88]))
        ph.regWriteTxOnly(port, servo_id, 40, 1, [1])
        assert sdk.take() == fe.encode_packet(servo_id, fe.INST_REG_WRITE, bytes([40, 1]))
    ph.action(port, scs.BROADCAST_ID)
    assert sdk.take() == fe.encode_packet(fe.BROADCAST_ID, fe.INST_ACTION, b"")


@pytest.mark.parametrize(("addr", "length"), [(42, 2), (41, 7), (40, 1)])
def test_byte_identical_to_sdk_sync_write(sdk: SdkCapture, addr: int, length: int) -> None:
    group = scs.GroupSyncWrite(sdk.port, sdk.ph, addr, length)
    data = {i: bytes((17 * i + j) % 256 for j in range(length)) for i in IDS}
    for i, payload in data.items():
        assert group.addParam(i, list(payload))
    assert group.txPacket() == scs.COMM_SUCCESS
    assert sdk.take() == fe.encode_sync_write(addr, length, data)


@pytest.mark.parametrize(("addr", "length", "ids"), [(56, 2, IDS), (56, 8, IDS), (3, 2, [5, 1, 3])])
def test_byte_identical_to_sdk_sync_read(sdk: SdkCapture, addr: int, length: int, ids: list[int]) -> None:
    group = scs.GroupSyncRead(sdk.port, sdk.ph, addr, length)
    for i in ids:
        assert group.addParam(i)
    assert group.txPacket() == scs.COMM_SUCCESS
    assert sdk.take() == fe.encode_sync_read(addr, length, ids)


def test_checksum_matches_definition() -> None:
    body = bytes([1, 4, 2, 56, 2])
    assert fe.checksum(body) == (~sum(body)) & 0xFF == 0xBE


@pytest.mark.parametrize(
    ("value", "bit", "raw"),
    [(-100, 15, 0x8064), (-709, 11, 0x0AC5), (2047, 11, 0x07FF), (0, 15, 0), (-1, 10, 0x401)],
)
def test_sign_magnitude_vectors(value: int, bit: int, raw: int) -> None:
    assert fe.encode_sign_magnitude(value, bit) == raw
    assert fe.decode_sign_magnitude(raw, bit) == value


@pytest.mark.parametrize("bit", [10, 11, 15])
def test_sign_magnitude_round_trip(bit: int) -> None:
    limit = (1 << bit) - 1
    for value in range(-limit, limit + 1, max(1, limit // 997)):
        raw = fe.encode_sign_magnitude(value, bit)
        assert 0 <= raw < (1 << (bit + 1))
        assert fe.decode_sign_magnitude(raw, bit) == value
    with pytest.raises(ValueError, match="exceeds"):
        fe.encode_sign_magnitude(limit + 1, bit)


def test_two_complement_is_not_sign_magnitude() -> None:
    assert fe.decode_sign_magnitude(0xFF9C, 15) == -0x7F9C  # -100 in two's complement is NOT -100 here


def test_checksum_rejection_and_resync() -> None:
    good = bytes.fromhex("FF FF 02 04 00 00 08 F1")
    corrupt = bytearray(bytes.fromhex("FF FF 01 04 00 00 08 F2"))
    corrupt[-1] ^= 0x01
    stream = b"\x00\x13\xff" + bytes(corrupt) + good
    packets, bad, _ = fe.parse_status_stream(stream)
    assert bad == 1
    assert packets == [(2, 0, b"\x00\x08")]
    # a flipped data bit is caught the same way
    flipped = bytearray(good)
    flipped[5] ^= 0x40
    assert fe.parse_status_stream(bytes(flipped))[0:2] == ([], 1)


def test_parser_skips_echoed_broadcast_requests() -> None:
    echo = fe.encode_sync_write(42, 2, {1: b"\xff\x0f"}) + fe.encode_sync_read(56, 2, [1])
    reply = bytes.fromhex("FF FF 01 04 00 00 08 F2")
    packets, bad, _ = fe.parse_status_stream(echo + reply)
    assert packets == [(1, 0, b"\x00\x08")] and bad == 0


def test_encoder_limits() -> None:
    with pytest.raises(ValueError):
        fe.encode_packet(255, fe.INST_PING, b"")
    with pytest.raises(ValueError):
        fe.encode_packet(1, fe.INST_WRITE, bytes(250))
    with pytest.raises(ValueError):
        fe.encode_sync_read(56, 2, [1, 1])


def test_parser_resyncs_past_a_header_that_never_completes() -> None:
    """FF FF 01 F6 00 promises 250 bytes the stream does not hold: the packets inside are still found."""
    good = bytes.fromhex("FF FF 01 04 00 00 08 F2")
    packets, bad, garbage = fe.parse_status_stream(bytes.fromhex("FF FF 01 F6 00") + good + good)
    assert packets == [(1, 0, b"\x00\x08")] * 2 and bad == 0


@pytest.mark.parametrize("error", [0x10, 0x40, 0x80, 0x82])
def test_err_byte_with_a_bit_no_sts_servo_sets_is_not_a_status_packet(error: int) -> None:
    body = bytes([1, 4, error, 0x00, 0x08])
    packet = b"\xff\xff" + body + bytes([fe.checksum(body)])
    assert fe.parse_status_stream(packet)[0] == []


def test_index_that_clears_the_container_being_parsed() -> None:
    """Each item's __index__ empties the list or dict mid-parse: the extension must not use freed items."""
    run_isolated(
        """
        ids = []
        ids += [Clearing(1, ids), 2, 3]
        assert fe.encode_sync_read(56, 2, ids) == fe.encode_sync_read(56, 2, [1, 2, 3])
        mapping = {}
        mapping[Clearing(1, mapping)] = b"\\x00\\x08"
        mapping[2] = b"\\x01\\x08"
        expected = fe.encode_sync_write(42, 2, {1: b"\\x00\\x08", 2: b"\\x01\\x08"})
        assert fe.encode_sync_write(42, 2, mapping) == expected
        bus = pty_bus()
        ids = []
        ids += [Clearing(1, ids), 2]
        assert bus.sync_read(ids, 56, 2) == [(None, -1), (None, -1)]
        """
    )
