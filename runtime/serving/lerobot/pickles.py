"""LeRobot's payloads are pickles; these are read through an allow-list, never `pickle.loads`.

A pickle may name any importable callable (`os.system`, `builtins.eval`, ...) and unpickling calls it.
`safe_loads` resolves only the exact (module, name) pairs the protocol needs: LeRobot's dataclasses
(mapped onto the plain stand-ins below, so lerobot need not be installed) and numpy's array
reconstruction. Anything else is refused and logged before it is called. `dumps` writes the stand-ins
under LeRobot's own names, so LeRobot's client reads them as its classes.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rynn_edge.runtime.errors import UserError

HELPERS = "lerobot.async_inference.helpers"
TYPES = "lerobot.configs.types"


@dataclass
class TimedObservation:
    timestamp: float
    timestep: int
    observation: dict
    must_go: bool = False


@dataclass
class TimedAction:
    timestamp: float
    timestep: int
    action: Any  # a torch.Tensor [action_dim], as LeRobot's client expects


@dataclass
class RemotePolicyConfig:
    policy_type: str
    pretrained_name_or_path: str  # logged, never loaded: the server serves its own artifact
    lerobot_features: dict
    actions_per_chunk: int
    device: str = "cpu"
    rename_map: dict = field(default_factory=dict)


class FeatureType(str, Enum):
    STATE = "STATE"
    VISUAL = "VISUAL"
    ENV = "ENV"
    ACTION = "ACTION"
    REWARD = "REWARD"
    LANGUAGE = "LANGUAGE"


@dataclass
class PolicyFeature:
    type: Any
    shape: tuple


STAND_INS = {
    (HELPERS, "TimedObservation"): TimedObservation,
    (HELPERS, "TimedAction"): TimedAction,
    (HELPERS, "RemotePolicyConfig"): RemotePolicyConfig,
    (TYPES, "FeatureType"): FeatureType,
    (TYPES, "PolicyFeature"): PolicyFeature,
}
WIRE_NAMES = {cls: names for names, cls in STAND_INS.items()}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        out[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        out[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar
        out[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return out


class Refused(UserError):
    """A pickle that names something outside the allow-list."""


class _AllowList(pickle.Unpickler):
    def __init__(self, data: bytes, allowed: dict[tuple[str, str], Any]):
        super().__init__(io.BytesIO(data))
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise Refused(
                f"refused a pickle naming {module}.{name} (not on the LeRobot protocol's allow-list)"
            )
        return found


def safe_loads(data: bytes, expected: type) -> Any:
    """Unpickle through the allow-list; the result must be an `expected` stand-in."""
    try:
        value = _AllowList(data, {**STAND_INS, **_numpy_globals()}).load()
    except Refused:
        raise
    except Exception as err:
        raise UserError(f"unreadable pickle ({type(err).__name__}: {err})") from None
    if not isinstance(value, expected):
        raise UserError(f"expected a {expected.__name__}, got {type(value).__name__}")
    return value


class _LeRobotPickler(pickle._Pickler):  # the Python pickler: its save_global can be overridden
    def save_global(self, obj: Any, name: str | None = None) -> None:
        names = WIRE_NAMES.get(obj)
        if names is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{names[0]}\n{names[1]}\n".encode())
        self.memoize(obj)


def dumps(value: Any) -> bytes:
    """Pickle with the stand-ins written under LeRobot's names (lerobot is not installed here)."""
    buffer = io.BytesIO()
    _LeRobotPickler(buffer, protocol=4).dump(value)
    return buffer.getvalue()
