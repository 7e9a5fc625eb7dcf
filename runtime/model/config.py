"""The model's shape, read from upstream's config.json (next to the network, as gpt-fast keeps ModelArgs)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rynn_edge.runtime.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float
    action_dim: int
    time_horizon: int
    max_position_embeddings: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise UserError(
                f"{path}: not found. Pass the checkpoint folder written by save_pretrained "
                "(it holds config.json and model*.safetensors)."
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}: not valid JSON ({e}). Restore the file from the original checkpoint."
            ) from e
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> ModelConfig:
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "rms_norm_eps",
            "rope_theta",
            "action_dim",
            "time_horizon",
        )
        missing = [k for k in required if raw.get(k) is None]
        if missing:
            raise UserError(
                f"{source}: missing key(s) {', '.join(missing)}. Add them (the RynnVLA-002 training "
                "run's values; action_dim/time_horizon are 6/20 for SO100, 7/5 or 7/10 for LIBERO)."
            )
        cfg = cls(
            vocab_size=_number(raw, "vocab_size", int, source),
            hidden_size=_number(raw, "hidden_size", int, source),
            intermediate_size=_number(raw, "intermediate_size", int, source),
            num_hidden_layers=_number(raw, "num_hidden_layers", int, source),
            num_attention_heads=_number(raw, "num_attention_heads", int, source),
            num_key_value_heads=_number(
                {"num_key_value_heads": raw.get("num_key_value_heads") or raw["num_attention_heads"]},
                "num_key_value_heads",
                int,
                source,
            ),
            rms_norm_eps=_number(raw, "rms_norm_eps", float, source),
            rope_theta=_number(raw, "rope_theta", float, source),
            action_dim=_number(raw, "action_dim", int, source),
            time_horizon=_number(raw, "time_horizon", int, source),
            max_position_embeddings=_number(
                {"max_position_embeddings": raw.get("max_position_embeddings") or 4096},
                "max_position_embeddings",
                int,
                source,
            ),
        )
        unsupported = {  # key: (value the runtime implements, value found)
            "hidden_act": ("silu", raw.get("hidden_act", "silu")),
            "swin_norm": (False, raw.get("swin_norm", False)),
            "model_parallel_size": (1, raw.get("model_parallel_size", 1)),
            "rope_scaling": (None, raw.get("rope_scaling")),
            "attention_bias": (False, raw.get("attention_bias", False)),
            "mlp_bias": (False, raw.get("mlp_bias", False)),
            "num_key_value_heads": (cfg.num_attention_heads, cfg.num_key_value_heads),
        }
        bad = [
            f"{k}={found!r} (supported: {want!r})"
            for k, (want, found) in unsupported.items()
            if found != want
        ]
        if cfg.hidden_size % cfg.num_attention_heads:
            bad.append(
                f"hidden_size={cfg.hidden_size} not divisible by "
                f"num_attention_heads={cfg.num_attention_heads}"
            )
        if bad:
            raise UserError(
                f"{source}: unsupported architecture: {'; '.join(bad)}. rynn-edge runs the Chameleon-7B "
                "pre-norm layout of RynnVLA-002; check that this is a RynnVLA-002 checkpoint."
            )
        return cfg


def _number(raw: dict, key: str, kind: type, source: str) -> int | float:
    """A positive int or float config value; anything else names the key, the value and the fix."""
    value = raw[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok or not math.isfinite(value) or value <= 0:
        want = "a positive integer" if kind is int else "a positive number"
        raise UserError(f"{source}: {key} is {value!r}; it must be {want}. Fix config.json.")
    return kind(value)
