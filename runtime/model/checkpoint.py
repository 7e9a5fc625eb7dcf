"""Read a RynnVLA-002 `save_pretrained` folder (config.json + bf16 safetensors, single or sharded).

Modules are built on the meta device, allocated once in the target dtype and filled tensor by tensor,
so peak memory stays near one copy of the weights. Every tensor is checked against the config first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.action_head import ActionHead
from rynn_edge.runtime.model.backbone import ChameleonBackbone
from rynn_edge.runtime.model.config import ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
IGNORED_PREFIXES = ("model.vqmodel.",)  # upstream re-creates the unused HF VQ encoder; never needed
HEAD_PREFIX = "action_head."
MAX_REPORTED = 20
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class _Stored:
    file: Path
    shape: tuple[int, ...]
    dtype: str


def _weight_files(model_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(
                f"{index}: unreadable ({e!r}); it must hold a 'weight_map'. Restore it from the "
                "original checkpoint."
            ) from e
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise UserError(
                f"{index} lists shard(s) that are not in {model_dir}: {', '.join(absent)}. "
                "Download the missing shard(s)."
            )
        return files, weight_map
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single], None
    raise UserError(
        f"{model_dir}: no {SINGLE_FILE} and no {INDEX_FILE}. Pass the checkpoint folder written by "
        "save_pretrained."
    )


def _read_headers(files: list[Path], weight_map: dict[str, str] | None) -> dict[str, _Stored]:
    stored: dict[str, _Stored] = {}
    problems = []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = f.keys()  # safe_open handles are not iterable
                for key in keys:
                    sl = f.get_slice(key)
                    if key in stored:
                        problems.append(f"{key}: stored twice, in {stored[key].file.name} and {path.name}")
                    stored[key] = _Stored(path, tuple(sl.get_shape()), sl.get_dtype())
        except (SafetensorError, OSError) as err:
            raise UserError(
                f"{path}: not a readable safetensors file ({err}); it is empty, truncated or damaged: "
                "re-download or re-save the checkpoint"
            ) from None
    for key, name in (weight_map or {}).items():
        if key not in stored or stored[key].file.name != name:
            problems.append(f"{key}: {INDEX_FILE} says {name}, but that file does not hold it")
    if problems:
        raise UserError(
            _report("inconsistent checkpoint", problems, "Re-download or re-save the checkpoint.")
        )
    return stored


def _report(what: str, problems: list[str], todo: str) -> str:
    shown = problems[:MAX_REPORTED]
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    return f"{what} ({len(problems)} problem(s)):\n  " + "\n  ".join(shown) + more + f"\n{todo}"


def _expected(backbone: nn.Module, head: nn.Module) -> dict[str, nn.Parameter]:
    params = {}
    for name, p in backbone.named_parameters():
        params[name if name.startswith("lm_head.") else f"model.{name}"] = p
    for name, p in head.named_parameters():
        params[HEAD_PREFIX + name] = p
    return params


def _head_hint(cfg: ModelConfig, stored: dict[str, _Stored]) -> str:
    """What action_dim/time_horizon the stored head tensors imply, when that can be read off them."""
    fc2 = stored.get(HEAD_PREFIX + "output_projection.model.fc2.weight")
    queries = stored.get(HEAD_PREFIX + "action_token_embeddings.weight")
    if fc2 is None or queries is None or len(fc2.shape) != 2 or len(queries.shape) != 2:
        return ""
    a = fc2.shape[0]
    t = queries.shape[1] / (a * cfg.hidden_size)
    return (
        f" The head tensors imply action_dim={a}, time_horizon={t:g}; config.json says "
        f"action_dim={cfg.action_dim}, time_horizon={cfg.time_horizon}: set config.json to match the "
        "checkpoint (or use the checkpoint trained for your robot)."
    )


def _fill(param: torch.Tensor, path: Path, key: str) -> None:
    """Copy one stored tensor into `param` in row chunks. The file is opened per chunk because the pages
    safetensors memory-maps stay resident (and count as ours) until the handle closes; this keeps the
    overhead at about two chunks instead of a whole shard."""
    row_bytes = param[0].numel() * param.element_size()  # every parameter here has at least one dim
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, param.shape[0], step):
        with safe_open(str(path), framework="pt") as f:
            param[start : start + step].copy_(f.get_slice(key)[start : start + step])


def load_model(
    model_dir: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[ModelConfig, ChameleonBackbone, ActionHead]:
    """Load backbone and action head in `dtype` on `device`, eval mode, no gradients."""
    model_dir = Path(model_dir)
    cfg = ModelConfig.from_dir(model_dir)
    files, weight_map = _weight_files(model_dir)
    stored = _read_headers(files, weight_map)

    proj = stored.get(HEAD_PREFIX + "hidden_projection.weight")
    if proj is None or len(proj.shape) != 2:
        raise UserError(
            f"{model_dir}: no tensor {HEAD_PREFIX}hidden_projection.weight [width, {cfg.hidden_size}]. "
            "This is not a RynnVLA-002 checkpoint with a continuous action head."
        )
    with torch.device("meta"):
        backbone = ChameleonBackbone(cfg).to(dtype)
        head = ActionHead(cfg.hidden_size, proj.shape[0], cfg.time_horizon, cfg.action_dim).to(dtype)
    expected = _expected(backbone, head)

    problems, head_bad = [], False
    for key, p in expected.items():
        s = stored.get(key)
        if s is None:
            problems.append(f"{key}: missing (expected shape {list(p.shape)})")
        elif s.shape != tuple(p.shape):
            problems.append(f"{key} in {s.file.name}: shape {list(s.shape)}, expected {list(p.shape)}")
        elif s.dtype not in ("BF16", "F16", "F32", "F64"):
            problems.append(f"{key} in {s.file.name}: dtype {s.dtype}, expected a float type")
        else:
            continue
        head_bad |= key.startswith(HEAD_PREFIX)
    for key, s in stored.items():
        if key not in expected and not key.startswith(IGNORED_PREFIXES):
            problems.append(f"{key} in {s.file.name}: unexpected tensor {list(s.shape)}")
    if problems:
        hint = _head_hint(cfg, stored) if head_bad else ""
        raise UserError(
            _report(
                f"{model_dir}: checkpoint does not match config.json",
                problems,
                "Use a complete RynnVLA-002 checkpoint whose config.json matches its tensors." + hint,
            )
        )

    backbone.to_empty(device=device)
    head.to_empty(device=device)
    params = _expected(backbone, head)  # to_empty replaced the meta parameters
    with torch.no_grad():
        for key, param in params.items():
            _fill(param, stored[key].file, key)
    return cfg, backbone.eval().requires_grad_(False), head.eval().requires_grad_(False)
