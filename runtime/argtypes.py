"""Argument parsing shared by every command: numeric ranges checked at parse time, negative number lists.

A flag's type is a `Number` (or `NumberList`): it knows its range, refuses values outside it (argparse
then exits 2 naming the flag) and `ArgumentParser` appends the range to the flag's help. Light on
purpose: `rynn-edge --help` imports this and must not import torch.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# A number or a comma-separated list of numbers that starts with a minus: `-40,60.5,150` or `-1e-3`.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NEGATIVE_NUMBERS = re.compile(rf"-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:\s*,\s*{_NUMBER})*\s*,?")


def _fmt(value: float) -> str:
    return f"{value:g}"


class Number:
    """`type=` for a number in [lo, hi] (or (lo, hi) where open): the error names the range."""

    def __init__(
        self,
        kind: type = float,
        lo: float | None = None,
        hi: float | None = None,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
        multiple_of: int | None = None,
    ):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.multiple_of = multiple_of
        self.__name__ = "integer" if kind is int else "number"  # argparse names the type in its errors

    @property
    def range_text(self) -> str:
        bounds = self._bounds_text()
        return f"{bounds}, a multiple of {self.multiple_of}" if self.multiple_of else bounds

    def _bounds_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return "any finite number"

    def check(self, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number ({self.range_text}), got {value}")
        low_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if low_bad or high_bad or (self.multiple_of and value % self.multiple_of):
            raise argparse.ArgumentTypeError(f"must be {self.range_text}, got {value:g}")
        return value

    def parse(self, text: str) -> Any:
        try:
            return self.kind(text.strip())
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what} ({self.range_text}), got {text!r}") from None

    def __call__(self, text: str) -> Any:
        return self.check(self.parse(text))


def positive(kind: type = float) -> Number:
    return Number(kind, 0, lo_open=True) if kind is float else Number(kind, 1)


def non_negative(kind: type = float) -> Number:
    return Number(kind, 0)


class NumberList(Number):
    """`type=` for comma-separated numbers, each in the range, optionally exactly `count` of them."""

    def __init__(self, kind: type = float, lo: float | None = None, hi: float | None = None, *, count=None):
        super().__init__(kind, lo, hi)
        self.count = count

    @property
    def range_text(self) -> str:
        each = "" if self.lo is None and self.hi is None else f", each {super().range_text}"
        return f"{self.count or 'comma-separated'} {'integers' if self.kind is int else 'numbers'}{each}"

    def __call__(self, text: str) -> list[Any]:
        values = [self.check(self.parse(v)) for v in text.split(",") if v.strip()]
        if not values or (self.count is not None and len(values) != self.count):
            raise argparse.ArgumentTypeError(f"expected {self.range_text}, got {len(values)}: {text!r}")
        return values


def _joins_negative_values(args: Sequence[str], value_flags: set[str]) -> list[str]:
    """`--state -40,60` -> `--state=-40,60` for flags that take one value: argparse would read the
    value as an unknown option (it only knows plain negative numbers, not lists)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if token in value_flags and nxt is not None and _NEGATIVE_NUMBERS.fullmatch(nxt):
            out.append(f"{token}={nxt}")
            i += 2
            continue
        if token == "--":
            out.extend(args[i:])
            break
        out.append(token)
        i += 1
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the two additions above; subparsers made from it are of this class too."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        import sys

        args = list(sys.argv[1:] if args is None else args)
        value_flags = {
            flag
            for action in self._actions
            if action.nargs is None and action.option_strings
            for flag in action.option_strings
            if flag.startswith("--")
        }
        return super().parse_known_args(_joins_negative_values(args, value_flags), namespace)

    def add_argument(self, *args, **kwargs):  # type: ignore[override]
        kind = kwargs.get("type")
        help_text = kwargs.get("help")
        if isinstance(kind, Number) and help_text and help_text is not argparse.SUPPRESS:
            kwargs["help"] = f"{help_text}; valid: {kind.range_text}"
        return super().add_argument(*args, **kwargs)


def _blocking_parent(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is not a folder (nothing can be created there)."""
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def output_folder(text: str) -> Path:
    """`type=` for a folder to write into: refused at parse time when it, or a parent, is a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; expected a folder")
    blocking = _blocking_parent(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{path}: {blocking} is a file, not a folder")
    return path


def output_file(text: str) -> Path:
    """`type=` for a file to write: refused at parse time when it is a folder or a parent is a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; expected a file name")
    blocking = _blocking_parent(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{path}: {blocking} is a file, not a folder")
    return path


def output_image(text: str) -> Path:
    """`type=` for a picture to write: an `output_file` whose suffix Pillow writes an RGB image as, checked
    at parse time (with a 1x1 trial save), before any work whose result it would hold."""
    import io

    from PIL import Image

    path = output_file(text)
    Image.init()
    image_format = Image.registered_extensions().get(path.suffix.lower())
    try:
        if image_format is None:
            raise ValueError
        Image.new("RGB", (1, 1)).save(io.BytesIO(), image_format)
    except (ValueError, OSError, KeyError):
        raise argparse.ArgumentTypeError(
            f"{path}: Pillow cannot write an RGB image as {path.suffix or '(no suffix)'}; name it .png "
            "(or .jpg, .webp, .bmp, .tiff)"
        ) from None
    return path


_DEVICE = re.compile(r"cpu|cuda(?::\d+)?")


def torch_device(text: str) -> str:
    """`type=` for --device: cpu, cuda or cuda:N (whether that GPU exists is checked once torch is loaded)."""
    if not _DEVICE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text.strip()
