"""The whole-step model's tensors on the wire, shared by the exporter (config.pbtxt), the server-side
model and the robot-side client, so the three cannot disagree.

One request is one control step: the raw camera frames (uint8, padded to the largest view, with each
view's real size beside them; the server resizes exactly as in-process), the state (float64, so
binning and goals are the same arithmetic as in-process), the instruction, and optionally the mode.
The server keeps the tokenizer, the tables and the KV cache; nothing per token crosses the network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rynn_edge.runtime.errors import UserError

STEP_MODEL = "rynn_step"
# The config.pbtxt parameter holding the model's description as JSON (robot, T, A, image size, stats).
METADATA_KEY = "rynn_edge"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's name: UINT8, INT32, INT64, FP32, FP64, BYTES, BOOL
    dims: tuple[int, ...]  # -1 = dynamic
    optional: bool = False


STEP_INPUTS = (
    Tensor("images", "UINT8", (-1, -1, -1, 3)),  # [views, H, W, 3] RGB, padded to the largest view
    Tensor("image_sizes", "INT32", (-1, 2)),  # [views, (h, w)]
    Tensor("state", "FP64", (-1,)),
    Tensor("instruction", "BYTES", (1,)),
    Tensor("mode", "BYTES", (1,), optional=True),  # continuous (default) | discrete
    Tensor("max_new_tokens", "INT32", (1,), optional=True),  # discrete cap (default 300)
    Tensor("sequential", "BOOL", (1,), optional=True),  # discrete: reference order, not batched blocks
)
STEP_OUTPUTS = (
    Tensor("prompt_ids", "INT64", (-1,)),
    Tensor("vq_codes", "INT64", (-1, -1)),
    Tensor("actions_normalized", "FP64", (-1, -1)),  # float32 values in continuous mode, exact in float64
    Tensor("actions", "FP64", (-1, -1)),
    Tensor("goals", "FP64", (-1, -1)),  # [0, A] where the robot's actions are not joint positions
    Tensor("generated_tokens", "INT64", (-1,)),  # [0] in continuous mode
)
NUMPY = {"UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64,
         "BOOL": np.bool_, "BYTES": np.object_}  # fmt: skip


def pack_images(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 uint8 views of any sizes -> (padded [N, Hmax, Wmax, 3], sizes int32 [N, 2])."""
    views = [np.asarray(image) for image in images]
    for i, view in enumerate(views):
        if view.dtype != np.uint8 or view.ndim != 3 or view.shape[2] != 3:
            raise UserError(f"image {i}: expected an HxWx3 uint8 array, got {view.dtype} {view.shape}")
    sizes = np.asarray([v.shape[:2] for v in views], dtype=np.int32).reshape(-1, 2)
    height, width = sizes.max(axis=0) if len(views) else (0, 0)
    padded = np.zeros((len(views), height, width, 3), dtype=np.uint8)
    for view, out in zip(views, padded, strict=True):
        out[: view.shape[0], : view.shape[1]] = view
    return padded, sizes


def unpack_images(padded: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    if padded.ndim != 4 or sizes.shape != (len(padded), 2):
        raise UserError(f"images {padded.shape} and image_sizes {sizes.shape} do not describe the same views")
    if (sizes < 1).any() or (sizes > padded.shape[1:3]).any():
        raise UserError(f"image_sizes {sizes.tolist()} do not fit the padded frames {padded.shape[1:3]}")
    return [np.ascontiguousarray(view[:h, :w]) for view, (h, w) in zip(padded, sizes.tolist(), strict=True)]


def metadata(robot: str, time_horizon: int, action_dim: int, image_size: int, stats: dict) -> str:
    fields = {"robot": robot, "time_horizon": time_horizon, "action_dim": action_dim}
    return json.dumps({**fields, "image_size": image_size, "stats": stats})


def read_metadata(text: str) -> dict[str, Any]:
    return json.loads(text)


def step_inputs(
    images: Sequence[np.ndarray],
    state: np.ndarray,
    instruction: str,
    mode: str = "continuous",
    max_new_tokens: int | None = None,
    parallel: bool = True,
) -> dict[str, np.ndarray]:
    """The request of one step, as arrays named and typed as in STEP_INPUTS."""
    padded, sizes = pack_images(images)
    out = {
        "images": padded,
        "image_sizes": sizes,
        "state": np.asarray(state, dtype=np.float64).reshape(-1),
        "instruction": np.asarray([instruction.encode()], dtype=np.object_),
        "mode": np.asarray([mode.encode()], dtype=np.object_),
        "sequential": np.asarray([not parallel]),
    }
    if max_new_tokens is not None:
        out["max_new_tokens"] = np.asarray([max_new_tokens], dtype=np.int32)
    return out


def step_arguments(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A request's arrays -> `Predictor.predict` keyword arguments (server side)."""

    def text(name: str, default: str) -> str:
        value = arrays.get(name)
        return default if value is None or value.size == 0 else bytes(value.reshape(-1)[0]).decode()

    missing = [t.name for t in STEP_INPUTS if not t.optional and t.name not in arrays]
    if missing:
        raise UserError(f"request is missing input(s) {', '.join(missing)}")
    out: dict[str, Any] = {
        "images": unpack_images(arrays["images"], arrays["image_sizes"]),
        "state": arrays["state"].astype(np.float64).reshape(-1),
        "instruction": text("instruction", ""),
        "mode": text("mode", "continuous"),
    }
    if "max_new_tokens" in arrays:
        out["max_new_tokens"] = int(arrays["max_new_tokens"].reshape(-1)[0])
    if "sequential" in arrays:
        out["parallel"] = not bool(arrays["sequential"].reshape(-1)[0])
    return out


def step_outputs(prediction: Any, action_dim: int) -> dict[str, np.ndarray]:
    """A `Prediction` -> the response arrays of STEP_OUTPUTS."""
    goals = prediction.goals if prediction.goals is not None else np.zeros((0, action_dim))
    tokens = prediction.generated_tokens if prediction.generated_tokens is not None else []
    return {
        "prompt_ids": np.asarray(prediction.prompt_ids, dtype=np.int64),
        "vq_codes": np.asarray(prediction.vq_codes, dtype=np.int64),
        "actions_normalized": np.asarray(prediction.actions_normalized, dtype=np.float64),
        "actions": np.asarray(prediction.actions, dtype=np.float64),
        "goals": np.asarray(goals, dtype=np.float64).reshape(-1, action_dim),
        "generated_tokens": np.asarray(tokens, dtype=np.int64),
    }


def prediction_fields(arrays: dict[str, np.ndarray], mode: str, has_goals: bool) -> dict[str, Any]:
    """Response arrays -> `Prediction` keyword arguments (robot side); `has_goals`: the robot's actions
    are joint positions (an empty chunk still has goals then, [0, A])."""
    return {
        "prompt_ids": arrays["prompt_ids"].tolist(),
        "vq_codes": arrays["vq_codes"],
        "mode": mode,
        "actions_normalized": arrays["actions_normalized"],
        "actions": arrays["actions"],
        "goals": arrays["goals"] if has_goals else None,
        "generated_tokens": arrays["generated_tokens"].tolist() if mode == "discrete" else None,
    }


def model_parameters(config: dict[str, Any]) -> dict[str, str]:
    """A model config's `parameters` as plain strings (Triton nests each in {"string_value": ...})."""
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def respond_with_error(pb: Any, err: Exception) -> Any:
    """The failed request's response: a UserError's message as it is (it names the problem), anything
    else with its type, so the robot side shows the server's reason."""
    message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
    return pb.InferenceResponse(error=pb.TritonError(message))
