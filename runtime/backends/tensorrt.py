"""The TensorRT backend: an artifact's engines (TensorRT 10.x and 11.x), same surface as the other backends.

No TensorRT object is created unless CUDA works: the lean/RTX runtimes return a broken Runtime and then
segfault when CUDA cannot initialise, so CUDA is probed (through torch) before `import tensorrt`.

Buffers are torch CUDA tensors, not cuda-python allocations: torch is already a runtime dependency,
its caching allocator gives stable addresses for `set_tensor_address`, its ops do the small glue on
the same stream (LUT gather, KV-cache writes, padding) without host round trips, and
`torch.cuda.CUDAGraph` captures `execute_async_v3` together with that glue. Every I/O tensor gets one
flat buffer sized for the optimization profile's maximum; a shape binds a contiguous view of it. All
work runs on one non-default stream; the continuous step (prefill + action head, bound to share the
hidden/valid buffers) is captured as one CUDA graph per length bucket after a first plain execution
(which flushes TensorRT's deferred shape-dependent setup).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rynn_edge.runtime.backends.artifact import Artifact
from rynn_edge.runtime.backends.shapes import LENGTH_BUCKET, concrete, round_up
from rynn_edge.runtime.errors import UserError

TORCH_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")


def require_cuda() -> None:
    """Raise (before any TensorRT import) unless torch sees a usable CUDA device."""

    if not torch.cuda.is_available():
        raise UserError(
            "--backend tensorrt needs a working NVIDIA GPU and driver (CUDA is not usable here), and no "
            "TensorRT object is created without one. Use --backend onnxruntime with an onnxruntime artifact."
        )


def dim_ranges(entry: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Symbolic dim -> (min, max) of a manifest stage entry: from the ONNX-time profile
    ({dim: [min, opt, max]}) or, once engines are built, from per-input shapes ({input: [min, opt, max]})."""
    profile = entry.get("profile", {})
    ranges: dict[str, tuple[int, int]] = {}
    for key, value in profile.items():
        if key in entry["io"]:
            for axis, dim in enumerate(entry["io"][key]["shape"]):
                if isinstance(dim, str) and dim.isidentifier():
                    ranges[dim] = (value[0][axis], value[2][axis])
        else:
            ranges[key] = (value[0], value[2])
    return ranges


def plan_shapes(entry: dict[str, Any], dims: dict[str, int]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Concrete (shape, dtype) of every I/O tensor of a stage for the given dims; refuses dims outside
    the optimization profile, naming the range."""
    for name, (low, high) in dim_ranges(entry).items():
        if name in dims and not low <= dims[name] <= high:
            raise UserError(
                f"{name}={dims[name]} is outside the engine's optimization profile [{low}, {high}]. "
                "Re-export with prompts like this one (rynn-edge export --calibration-data)."
            )
    return {name: (concrete(io["shape"], dims), io["dtype"]) for name, io in entry["io"].items()}


def max_dims(entry: dict[str, Any]) -> dict[str, int]:
    return {name: high for name, (_, high) in dim_ranges(entry).items()}


def bucket(length: int, entry: dict[str, Any], dim: str = "L") -> int:
    """Prompt length padded up to a bucket, clamped into the profile."""
    low, high = dim_ranges(entry)[dim]
    if length > high:
        raise UserError(f"prompt of {length} tokens exceeds the engine profile's maximum {high}; re-export")
    return min(max(round_up(length, LENGTH_BUCKET), low), high)


class Engine:
    """One deserialized engine + execution context with max-size device buffers per I/O tensor."""

    def __init__(self, trt: Any, runtime: Any, path: str, entry: dict[str, Any], stream: Any):

        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise UserError(f"{path}: TensorRT could not deserialize the engine (see the log above)")
        self.context = self.engine.create_execution_context()
        self.entry, self.stream, self.trt = entry, stream, trt
        self.inputs = {
            self.engine.get_tensor_name(i)
            for i in range(self.engine.num_io_tensors)
            if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT
        }
        biggest = plan_shapes(entry, max_dims(entry))
        self.buffers = {
            name: torch.zeros(math.prod(shape), dtype=getattr(torch, dtype), device="cuda")
            for name, (shape, dtype) in biggest.items()
        }

    def bind(self, dims: dict[str, int], shared: dict[str, Any] | None = None) -> dict[str, Any]:
        """Set input shapes and tensor addresses for `dims`; `shared` binds names to given tensors
        (another engine's output) instead of this engine's own buffers. Returns the bound views."""
        views = {}
        for name, (shape, _) in plan_shapes(self.entry, dims).items():
            view = (shared or {}).get(name)
            if view is None:
                view = self.buffers[name][: math.prod(shape)].view(shape)
            if name in self.inputs:
                self.context.set_input_shape(name, shape)
            self.context.set_tensor_address(name, view.data_ptr())
            views[name] = view
        return views

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, artifact: Artifact):
        require_cuda()
        import tensorrt as trt

        self.torch, self.artifact = torch, artifact
        model = artifact.model
        self.time_horizon, self.action_dim = int(model["time_horizon"]), int(model["action_dim"])
        self.max_positions = int(model.get("max_position_embeddings") or 4096)
        self.stream = torch.cuda.Stream()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            name: Engine(trt, self.runtime, str(artifact.stage_file(name, "engine")), entry, self.stream)
            for name, entry in artifact.stages().items()
            if "engine" in entry
        }
        self.graphs: dict[int, tuple[Any, dict[str, Any]]] = {}

    def engine(self, name: str) -> Engine:
        if name not in self.engines:
            raise UserError(f"{self.artifact.path}: no {name} engine; re-export with --target tensorrt")
        return self.engines[name]

    def vq_encode(self, pixels: np.ndarray) -> np.ndarray:
        engine = self.engine(f"vq_encoder_{pixels.shape[-1]}")
        with self.torch.cuda.stream(self.stream):
            views = engine.bind({"B": pixels.shape[0]})
            views["images"].copy_(self.torch.from_numpy(pixels))
            engine.enqueue()
            return views["codes"].cpu().numpy().astype(np.int64)

    def _continuous(self, length: int) -> tuple[Any, dict[str, Any]]:
        """Prefill + head bound to shared buffers for one bucket, run once, then captured as a graph."""
        if length not in self.graphs:
            prefill, head = self.engine("backbone_prefill"), self.engine("action_head")
            torch = self.torch
            with torch.cuda.stream(self.stream):
                views = prefill.bind({"L": length})
                views["positions"].copy_(torch.arange(length))
                views.update(
                    head.bind({"L": length}, {"hidden": views["hidden"], "valid": views["key_mask"]})
                )
                prefill.enqueue()
                head.enqueue()
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                prefill.enqueue()
                head.enqueue()
            self.graphs[length] = (graph, views)
        return self.graphs[length]

    def actions(self, prompt_ids: Sequence[int]) -> np.ndarray:
        n = len(prompt_ids)
        graph, views = self._continuous(bucket(n, self.artifact.stages()["backbone_prefill"]))
        torch = self.torch
        with torch.cuda.stream(self.stream):
            views["ids"].zero_()
            views["ids"][0, :n].copy_(torch.as_tensor(list(prompt_ids)))
            views["key_mask"].copy_(torch.arange(views["ids"].shape[1], device="cuda")[None] < n)
            graph.replay()
            return views["actions"][0].float().cpu().numpy()

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Final-norm hidden states float32 [1, L, H] of one prompt at its exact length (for `verify`)."""
        n, engine, torch = len(prompt_ids), self.engine("backbone_prefill"), self.torch
        with torch.cuda.stream(self.stream):
            views = engine.bind({"L": n})
            views["ids"].copy_(torch.as_tensor([list(prompt_ids)]))
            views["positions"].copy_(torch.arange(n)[None])
            views["key_mask"].fill_(True)
            engine.enqueue()
            return views["hidden"].float().cpu().numpy()

    def head_actions(self, hidden: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The action head engine on given hidden states [1, L, H] -> normalized actions [T, A]."""
        engine, torch = self.engine("action_head"), self.torch
        with torch.cuda.stream(self.stream):
            views = engine.bind({"L": hidden.shape[1]})
            views["hidden"].copy_(torch.from_numpy(hidden))
            views["valid"].copy_(torch.from_numpy(valid))
            engine.enqueue()
            return views["actions"][0].float().cpu().numpy()

    def step_model(self) -> TensorRTStepModel:
        return TensorRTStepModel(self)

    def vq_decode(self, codes: np.ndarray) -> np.ndarray:
        engine = self.engine("vq_decoder")
        b, h, w = codes.shape
        with self.torch.cuda.stream(self.stream):
            views = engine.bind({"B": b, "h": h, "w": w})
            views["codes"].copy_(self.torch.from_numpy(np.asarray(codes, dtype=np.int32)))
            engine.enqueue()
            return views["images"].cpu().numpy()


class TensorRTStepModel:
    """`decoding.StepModel` over the backbone_decode engine: the KV cache (torch, on the device) is owned
    here; the engine returns the new tokens' k/v, written at their slots on the same stream. No
    `step_many`: the exported decode graph returns only the last new token's logits, so discrete chunks
    decode sequentially here until the export emits logits for every new token."""

    def __init__(self, backend: TensorRTBackend):
        self.backend = backend
        self.engine = backend.engine("backbone_decode")
        self.k: Any = None
        self.v: Any = None

    def _run(self, tokens: Sequence[int], positions: Sequence[int], mask: np.ndarray) -> np.ndarray:
        torch = self.backend.torch
        capacity, n = self.k.shape[3], len(tokens)
        with torch.cuda.stream(self.backend.stream):
            views = self.engine.bind({"S": capacity, "N": n}, {"past_k": self.k, "past_v": self.v})
            views["ids"].copy_(torch.as_tensor([list(tokens)]))
            views["positions"].copy_(torch.as_tensor([list(positions)]))
            views["attn_mask"].copy_(torch.from_numpy(mask[None]))
            self.engine.enqueue()
            slots = torch.as_tensor(list(positions), device="cuda")
            self.k.index_copy_(3, slots, views["present_k"])
            self.v.index_copy_(3, slots, views["present_v"])
            return views["logits"].float().cpu().numpy()

    def begin(self, prompt_ids: Sequence[int], capacity: int) -> np.ndarray:
        torch = self.backend.torch
        shape, dtype = plan_shapes(self.engine.entry, {"S": capacity, "N": 1})["past_k"]
        self.k = torch.zeros(shape, dtype=getattr(torch, dtype), device="cuda")
        self.v = torch.zeros_like(self.k)
        n = len(prompt_ids)
        mask = np.zeros((n, capacity + n), dtype=bool)
        mask[:, capacity:] = np.tril(np.ones((n, n), dtype=bool))
        return self._run(prompt_ids, range(n), mask)[0]

    def step(self, token: int, position: int, key_mask: np.ndarray) -> np.ndarray:
        """The cache slots of key_mask (its own slot excluded: written after the step) plus itself."""
        capacity = self.k.shape[3]
        mask = np.zeros((1, capacity + 1), dtype=bool)
        mask[0, :capacity] = key_mask[:capacity]
        mask[0, position] = False
        mask[0, capacity] = True
        return self._run([token], [position], mask)[0]
