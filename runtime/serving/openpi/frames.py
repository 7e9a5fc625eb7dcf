"""openpi's msgpack-numpy frames, read without trusting them: an array is a map
`{b"__ndarray__": True, b"data": bytes, b"dtype": str, b"shape": [int...]}`, a numpy scalar
`{b"__npgeneric__": True, b"data": value, b"dtype": str}`; only numeric dtypes, sizes that match."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from rynn_edge.runtime.errors import UserError

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: never object, void or complex


def _dtype(text: Any) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        raise UserError(f"frame: array dtype {text!r} is not a numpy dtype") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise UserError(f"frame: array dtype {text!r} is not numeric")
    return dtype


def _array(obj: dict) -> np.ndarray:
    dtype = _dtype(obj.get(b"dtype"))
    shape, data = obj.get(b"shape"), obj.get(b"data")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UserError(f"frame: array shape {shape!r} is not a list of sizes")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
        raise UserError(f"frame: array data does not hold a {dtype} array of shape {tuple(shape)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return _array(obj)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"frame: {obj.get(b'data')!r} is not a {dtype} scalar") from None
    return obj


def unpack(frame: bytes | str) -> Any:
    if isinstance(frame, str):
        raise UserError("expected a binary msgpack frame, got a text frame")
    try:
        return msgpack.unpackb(frame, object_hook=_hook, strict_map_key=False)
    except UserError:
        raise
    except Exception as err:  # msgpack's many ways to say "not msgpack"
        raise UserError(f"frame is not msgpack ({type(err).__name__})") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default)
