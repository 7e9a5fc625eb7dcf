"""The whole-step model's tensors on the wire, shared by the exporter (config.pbtxt), the server-side
model and the robot-side client, so the three cannot disagree.

One request is one control step: the raw camera frames (uint8, padded to the largest view, with each
view's real size beside them; the server resizes exactly as in-process), the state (float64, so
binning and goals are the same arithmetic as in-process), the instruction, and optionally the mode.
Mode `world_model` is the world-model entry point instead (`rynn-edge imagine`): the frames and one
action in, the generated tokens and the decoded next image(s) out. The server keeps the tokenizer,
the tables and the KV cache; nothing per token crosses the network.
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
    Tensor("mode", "BYTES", (1,), optional=True),  # continuous (default) | discrete | world_model
    Tensor("max_new_tokens", "INT32", (1,), optional=True),  # discrete (300) / unconstrained world model cap
    Tensor("sequential", "BOOL", (1,), optional=True),  # discrete: reference order, not batched blocks
    # world_model only: the action (training units), the sentence, the model resolution, plain greedy
    Tensor("action", "FP64", (-1,), optional=True),
    Tensor("sentence", "BYTES", (1,), optional=True),  # libero | lerobot (default: by robot)
    Tensor("image_size", "INT32", (1,), optional=True),  # default: by sentence (256 lerobot, 512 libero)
    Tensor("unconstrained", "BOOL", (1,), optional=True),
)
STEP_OUTPUTS = (
    Tensor("prompt_ids", "INT64", (-1,)),
    Tensor("vq_codes", "INT64", (-1, -1)),
    Tensor("actions_normalized", "FP64", (-1, -1)),  # float32 values in continuous mode, exact in float64
    Tensor("actions", "FP64", (-1, -1)),
    Tensor("goals", "FP64", (-1, -1)),  # [0, A] where the robot's actions are not joint positions
    Tensor("generated_tokens", "INT64", (-1,)),  # [0] in continuous mode
    Tensor("generated_images", "UINT8", (-1, -1, -1, 3)),  # world_model: [N, H, W, 3]; else [0, 0, 0, 3]
    Tensor("problems", "BYTES", (1,)),  # world_model: JSON list of malformed generated images
)
WORLD_MODEL = "world_model"
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


def metadata(model: dict[str, Any], precision: str, image_size: int, stats: dict) -> str:
    """The served model as the robot side plans with it (and `bench` labels it): the manifest's model
    fields, the backbone's precision, the default image size and the stats."""
    fields = {k: model.get(k) for k in ("robot", "time_horizon", "action_dim", "hidden_size")}
    return json.dumps({**fields, "precision": precision, "image_size": image_size, "stats": stats})


def read_metadata(text: str) -> dict[str, Any]:
    return json.loads(text)


def _frames(images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    padded, sizes = pack_images(images)
    return {"images": padded, "image_sizes": sizes}


def _text(value: str) -> np.ndarray:
    return np.asarray([value.encode()], dtype=np.object_)


def step_inputs(
    images: Sequence[np.ndarray],
    state: np.ndarray,
    instruction: str,
    mode: str = "continuous",
    max_new_tokens: int | None = None,
    parallel: bool = True,
) -> dict[str, np.ndarray]:
    """The request of one step, as arrays named and typed as in STEP_INPUTS."""
    out = {
        **_frames(images),
        "state": np.asarray(state, dtype=np.float64).reshape(-1),
        "instruction": _text(instruction),
        "mode": _text(mode),
        "sequential": np.asarray([not parallel]),
    }
    if max_new_tokens is not None:
        out["max_new_tokens"] = np.asarray([max_new_tokens], dtype=np.int32)
    return out


def world_inputs(
    images: Sequence[np.ndarray],
    action: np.ndarray,
    sentence: str,
    image_size: int,
    unconstrained: bool,
    max_new_tokens: int | None,
) -> dict[str, np.ndarray]:
    """The request of one world-model query (state and instruction are required inputs: sent empty)."""
    out = {
        **_frames(images),
        "state": np.zeros(0, dtype=np.float64),
        "instruction": _text(""),
        "mode": _text(WORLD_MODEL),
        "action": np.asarray(action, dtype=np.float64).reshape(-1),
        "sentence": _text(sentence),
        "image_size": np.asarray([image_size], dtype=np.int32),
        "unconstrained": np.asarray([unconstrained]),
    }
    if max_new_tokens is not None:
        out["max_new_tokens"] = np.asarray([max_new_tokens], dtype=np.int32)
    return out


def _read_text(arrays: dict[str, np.ndarray], name: str, default: str) -> str:
    value = arrays.get(name)
    return default if value is None or value.size == 0 else bytes(value.reshape(-1)[0]).decode()


def _scalar(arrays: dict[str, np.ndarray], name: str) -> np.generic | None:
    return arrays[name].reshape(-1)[0] if name in arrays else None


def request_mode(arrays: dict[str, np.ndarray]) -> str:
    return _read_text(arrays, "mode", "continuous")


def step_arguments(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A request's arrays -> `Predictor.predict` keyword arguments (server side)."""
    missing = [t.name for t in STEP_INPUTS if not t.optional and t.name not in arrays]
    if missing:
        raise UserError(f"request is missing input(s) {', '.join(missing)}")
    out: dict[str, Any] = {
        "images": unpack_images(arrays["images"], arrays["image_sizes"]),
        "state": arrays["state"].astype(np.float64).reshape(-1),
        "instruction": _read_text(arrays, "instruction", ""),
        "mode": request_mode(arrays),
    }
    if (cap := _scalar(arrays, "max_new_tokens")) is not None:
        out["max_new_tokens"] = int(cap)
    if (sequential := _scalar(arrays, "sequential")) is not None:
        out["parallel"] = not bool(sequential)
    return out


def world_arguments(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A world-model request's arrays -> `world_model.imagine` keyword arguments (server side)."""
    if "action" not in arrays:
        raise UserError("a world_model request needs the `action` input")
    step = step_arguments(arrays)
    size = _scalar(arrays, "image_size")
    return {
        "images": step["images"],
        "action": arrays["action"].astype(np.float64).reshape(-1),
        "sentence": _read_text(arrays, "sentence", "") or None,
        "image_size": None if size is None else int(size),
        "unconstrained": bool(_scalar(arrays, "unconstrained")),
        "max_new_tokens": step.get("max_new_tokens"),
    }


def _no_images() -> np.ndarray:
    return np.zeros((0, 0, 0, 3), dtype=np.uint8)


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
        "generated_images": _no_images(),
        "problems": _text("[]"),
    }


def world_outputs(imagined: Any, action_dim: int) -> dict[str, np.ndarray]:
    """An `Imagined` -> the response arrays of STEP_OUTPUTS (no actions: [0, A])."""
    empty = np.zeros((0, action_dim), dtype=np.float64)
    return {
        "prompt_ids": np.asarray(imagined.prompt_ids, dtype=np.int64),
        "vq_codes": np.asarray(imagined.vq_codes, dtype=np.int64),
        "actions_normalized": empty,
        "actions": empty,
        "goals": empty,
        "generated_tokens": np.asarray(imagined.generated_tokens, dtype=np.int64),
        "generated_images": np.asarray(imagined.images, dtype=np.uint8),
        "problems": _text(json.dumps(imagined.problems)),
    }


def imagined_fields(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """World-model response arrays -> `Imagined` keyword arguments (robot side)."""
    return {
        "prompt_ids": arrays["prompt_ids"].tolist(),
        "vq_codes": arrays["vq_codes"],
        "generated_tokens": arrays["generated_tokens"].tolist(),
        "images": arrays["generated_images"],
        "problems": json.loads(bytes(arrays["problems"].reshape(-1)[0]).decode()),
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
