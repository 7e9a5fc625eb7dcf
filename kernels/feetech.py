"""Typed facade over the C extension `rynn_edge.kernels._native` (Feetech bus + real-time loop).

Everything here is re-exported from C; see `_native.__doc__` for the full API. The only addition is
`records_to_numpy`, which turns `ControlLoop.drain_records()` into a numpy structured array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rynn_edge.kernels._native import (
    ADDR_GOAL_POSITION,
    ADDR_PRESENT_POSITION,
    ADDR_TORQUE_ENABLE,
    BROADCAST_ID,
    ERR_CORRUPT,
    ERR_NO_REPLY,
    ERRBIT_ANGLE,
    ERRBIT_OVERELE,
    ERRBIT_OVERHEAT,
    ERRBIT_OVERLOAD,
    ERRBIT_VOLTAGE,
    INST_ACTION,
    INST_PING,
    INST_READ,
    INST_REG_WRITE,
    INST_SYNC_READ,
    INST_SYNC_WRITE,
    INST_WRITE,
    RECORD_HELD,
    RECORD_VALID,
    Bus,
    BusError,
    BusTimeoutError,
    ControlLoop,
    checksum,
    decode_sign_magnitude,
    encode_packet,
    encode_sign_magnitude,
    encode_sync_read,
    encode_sync_write,
    parse_status_stream,
)

__all__ = [
    "ADDR_GOAL_POSITION",
    "ADDR_PRESENT_POSITION",
    "ADDR_TORQUE_ENABLE",
    "BROADCAST_ID",
    "ERR_CORRUPT",
    "ERR_NO_REPLY",
    "ERRBIT_ANGLE",
    "ERRBIT_OVERELE",
    "ERRBIT_OVERHEAT",
    "ERRBIT_OVERLOAD",
    "ERRBIT_VOLTAGE",
    "INST_ACTION",
    "INST_PING",
    "INST_READ",
    "INST_REG_WRITE",
    "INST_SYNC_READ",
    "INST_SYNC_WRITE",
    "INST_WRITE",
    "RECORD_HELD",
    "RECORD_VALID",
    "Bus",
    "BusError",
    "BusTimeoutError",
    "ControlLoop",
    "checksum",
    "decode_sign_magnitude",
    "encode_packet",
    "encode_sign_magnitude",
    "encode_sync_read",
    "encode_sync_write",
    "parse_status_stream",
    "records_to_numpy",
    "encode_u16",
    "decode_u16",
]


def records_to_numpy(loop: ControlLoop, data: bytes | None = None) -> Any:
    """Drained loop records as a numpy structured array (fields: see `ControlLoop.record_dtype`)."""

    if data is None:
        data = loop.drain_records()
    return np.frombuffer(data, dtype=np.dtype(loop.record_dtype))


def encode_u16(value: int, sign_bit: int = 15) -> bytes:
    """A signed register value as 2 little-endian bytes (sign-magnitude at `sign_bit`)."""
    return encode_sign_magnitude(value, sign_bit).to_bytes(2, "little")


def decode_u16(data: bytes, sign_bit: int = 15) -> int:
    """2 little-endian bytes of a signed register back to an int."""
    return decode_sign_magnitude(int.from_bytes(data[:2], "little"), sign_bit)
