"""What `rynn-edge bench` times: one action chunk per call, for a chunk length T and a mode.

A chunk = VQ-encode the views of one query (front + wrist) + the policy on a fixed prompt of that query
(built once by the predictor from synthetic frames; tokenising is host work, cached per instruction):
* continuous: one backbone prefill (no lm_head) + the action head built for T;
* discrete-sequential: prefill + T(A+2) one-token decode steps (action mask row + argmax each step);
* discrete-parallel: prefill + A+2 steps of T tokens each (the T blocks as one batch).
Discrete steps are teacher-forced with well-formed blocks [10004, A values, 15004], so the step count is
exactly that of a real chunk whatever random weights predict (greedy stops at 8710 or a malformed block).

The head for T: the checkpoint's own queries where T equals its time_horizon (`queries: checkpoint`),
otherwise the same weights with synthetic queries, N(0, std of the real ones) (`queries: synthetic`);
an onnxruntime artifact's head graph has T baked in, so other T run a head graph exported here with
random weights (same shapes and precision; latency does not depend on the values).

Over a Triton server (`--backend triton`) a chunk is one whole `rynn_step` request from the robot side:
the frames, state and instruction up, the actions back, with everything above (VQ encode, the prompt,
the networks, parsing) on the server and the network round trip included. Only the served model's T
runs, and discrete modes are real greedy queries there (not teacher-forced: random weights may stop
early at 8710 or a malformed block, so their step count is the model's, not T(A+2)).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.cuda import CudaBackend
from rynn_edge.runtime.backends.torch import TorchBackend
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.action_head import ActionHead
from rynn_edge.runtime.predictor import Predictor, open_predictor
from rynn_edge.runtime.tokens import vocab as V
from rynn_edge.runtime.tokens.images import to_model_input

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INSTRUCTION = "pick up the cube and place it in the box"


def synthetic_views(n: int, size: int = 256) -> list[np.ndarray]:
    """Deterministic camera-like frames (gradients + blocks), uint8 [size, size, 3]."""
    y, x = np.mgrid[0:size, 0:size]
    views = []
    for i in range(n):
        img = np.stack([x, y, (x + y + 64 * i) % 256], axis=-1).astype(np.uint8)
        img[40 * i : 40 * i + 64, 96:160] = (200, 30 + 50 * i, 90)
        views.append(img)
    return views


def action_blocks(time_horizon: int, action_dim: int) -> list[int]:
    """T well-formed action blocks [10004, A values, 15004] (values mid-range)."""
    values = [V.ACTION_VALUE_OFFSET + 128 + a for a in range(action_dim)]
    return [V.ACTION_START_ID, *values, V.ACTION_END_ID] * time_horizon


def sequential_chunk(
    model: decoding.StepModel, prompt_ids: Sequence[int], time_horizon: int, action_dim: int
):
    """begin + T(A+2) steps, as greedy_actions runs them (mask row per step, argmax of every logits)."""
    forced = action_blocks(time_horizon, action_dim)
    sequence = list(prompt_ids)
    capacity = len(sequence) + len(forced) + 1
    np.argmax(model.begin(sequence, capacity))
    mask = np.zeros(capacity, dtype=bool)
    for token in forced:
        sequence.append(token)
        position = len(sequence) - 1
        mask[: position + 1] = decoding.action_mask_row(sequence)
        np.argmax(model.step(token, position, mask))


def parallel_chunk(model, prompt_ids: Sequence[int], time_horizon: int, action_dim: int):
    """begin + A+2 `step_many` passes of T tokens: block k in slots L + k(A+2) + j, prompt + own block."""
    width, length = action_dim + 2, len(prompt_ids)
    capacity = length + time_horizon * width
    row = decoding.action_mask_row(list(prompt_ids))
    np.argmax(model.begin(list(prompt_ids), capacity))
    starts = length + width * np.arange(time_horizon)
    mask = np.zeros((time_horizon, capacity), dtype=bool)
    mask[:, :length] = row
    block = action_blocks(1, action_dim)
    for j in range(width):
        mask[np.arange(time_horizon), starts + j] = True
        np.argmax(model.step_many([block[j]] * time_horizon, (starts + j).tolist(), mask), axis=-1)


def head_for(native: ActionHead, time_horizon: int, seed: int = 0) -> tuple[ActionHead, str]:
    """The checkpoint's head at its own T, else the same weights with synthetic queries."""
    if time_horizon == native.time_horizon:
        return native, "checkpoint"
    param = next(native.parameters())
    head = ActionHead(native.hidden_size, native.width, time_horizon, native.action_dim)
    state = {k: v for k, v in native.state_dict().items() if k != "action_token_embeddings.weight"}
    head.load_state_dict(state, strict=False)
    std = float(native.action_token_embeddings.weight.float().std())
    generator = torch.Generator().manual_seed(seed + time_horizon)
    with torch.no_grad():
        head.action_token_embeddings.weight.normal_(0.0, std, generator=generator)
    return head.to(device=param.device, dtype=param.dtype).eval(), "synthetic"


@dataclass
class Timed:
    """What a bench row says of the runner it times (every runner has these)."""

    backend: str
    precision: str
    device: str
    time_horizon: int
    action_dim: int
    prompt_ids: list[int]
    pixels: np.ndarray
    weights: str


@dataclass
class ChunkRunner(Timed):
    """One backend/precision over one model: `chunk(T, mode)` -> (callable, queries label) or a reason."""

    encode: Callable[[], object]
    continuous: Callable[[int], tuple[Callable[[], object], str] | str]  # str: why T cannot run
    step_model: Callable[[], Any]  # parallel decoding where its model has `step_many`

    @classmethod
    def over(
        cls,
        backend: Any,
        name: str,
        precision: str,
        device: str,
        ids: list[int],
        pixels: np.ndarray,
        weights: str,
        continuous: Callable[[int], Any],
    ) -> ChunkRunner:
        """A runner whose encode and decode steps are the backend's own."""
        return cls(
            name,
            precision,
            device,
            backend.time_horizon,
            backend.action_dim,
            ids,
            pixels,
            weights,
            lambda: backend.vq_encode(pixels),
            continuous,
            backend.step_model,
        )

    def chunk(self, time_horizon: int, mode: str) -> tuple[Callable[[], object], str] | str:
        if mode == "continuous":
            made = self.continuous(time_horizon)
            if isinstance(made, str):
                return made
            policy, queries = made
        elif mode == "discrete-sequential":
            model, queries = self.step_model(), "n/a"

            def policy() -> None:
                sequential_chunk(model, self.prompt_ids, time_horizon, self.action_dim)
        elif mode == "discrete-parallel":
            model, queries = self.step_model(), "n/a"
            if not hasattr(model, "step_many"):
                return f"{self.backend} has no batched decode step (step_many) yet"

            def policy() -> None:
                parallel_chunk(model, self.prompt_ids, time_horizon, self.action_dim)
        else:
            raise UserError(f"unknown mode {mode!r}: use continuous, discrete-sequential, discrete-parallel")

        def call() -> None:
            self.encode()
            policy()

        return call, queries


@dataclass
class ServedRunner(Timed):
    """Whole steps on a Triton server: `chunk(T, mode)` like ChunkRunner's, one request per call."""

    predictor: Predictor
    views: list[np.ndarray]
    state: np.ndarray

    def chunk(self, time_horizon: int, mode: str) -> tuple[Callable[[], object], str] | str:
        if time_horizon != self.time_horizon:
            return f"the served model's action head is built for T={self.time_horizon}"
        if mode not in ("continuous", "discrete-sequential", "discrete-parallel"):
            raise UserError(f"unknown mode {mode!r}: use continuous, discrete-sequential, discrete-parallel")
        kind = "continuous" if mode == "continuous" else "discrete"

        def call() -> None:
            self.predictor.predict(
                self.views, self.state, INSTRUCTION, kind, parallel=mode != "discrete-sequential"
            )

        return call, "checkpoint" if kind == "continuous" else "n/a"


def synthetic_query(predictor: Predictor) -> tuple[list[np.ndarray], np.ndarray]:
    """The views (as many as the robot's first image count) and the mid-range state of every timed query."""
    views = synthetic_views(predictor.embodiment.image_counts[0])
    return views, (predictor.stats.state.min + predictor.stats.state.max) / 2


def query_inputs(predictor) -> tuple[list[int], np.ndarray]:
    views, state = synthetic_query(predictor)
    ids, _ = predictor.vla_prompt(views, state, INSTRUCTION)
    return ids, to_model_input(views, predictor.image_size).numpy()


def triton_runner(server: str, model: Path, timeout_s: float) -> ServedRunner:
    """The served `rynn_step` (MODEL: the artifact folder, or the served model's name)."""
    predictor = open_predictor(model, backend="triton", server=server, server_timeout=timeout_s)
    backend = predictor.backend
    views, state = synthetic_query(predictor)
    ids = predictor.predict(views, state, INSTRUCTION).prompt_ids  # also checks the query is served
    pixels = to_model_input(views, predictor.image_size).numpy()
    # weights: labelled by the caller (the server states its hidden size)
    return ServedRunner("triton", backend.precision, "server", backend.time_horizon, backend.action_dim,
                        ids, pixels, "unknown", predictor, views, state)  # fmt: skip


def _check_raw(tokenizer: Path | None, vq: Path | None, precision: str) -> None:
    if precision not in DTYPES:
        raise UserError(f"torch/cuda run {', '.join(DTYPES)}; {precision} needs an exported artifact")
    if tokenizer is None or vq is None:
        raise UserError("--tokenizer DIR and --vq DIR are required with a raw checkpoint")


def torch_runner(
    model: Path, tokenizer: Path | None, vq: Path | None, precision: str, device: str, weights: str
) -> ChunkRunner:

    _check_raw(tokenizer, vq, precision)
    backend = TorchBackend(model, vq, dtype=DTYPES[precision])
    ids, pixels = query_inputs(Predictor.open(backend, tokenizer, vq))
    dev = torch.device(device)
    backend.backbone.to(dev)
    backend.head.to(dev)
    backend.vqgan.to(dev)
    ids_t = torch.tensor([ids], device=dev)
    positions = torch.arange(len(ids), device=dev)[None]
    valid = torch.ones_like(ids_t, dtype=torch.bool)
    pixels_t = torch.from_numpy(pixels).to(dev)

    @torch.inference_mode()
    def encode() -> None:
        backend.vqgan.encode(pixels_t).cpu()

    def continuous(time_horizon: int) -> tuple[Callable[[], object], str]:
        head, queries = head_for(backend.head, time_horizon)

        @torch.inference_mode()
        def run() -> None:
            head(backend.backbone.prefill(ids_t, positions, valid), valid).float().cpu()

        return run, queries

    runner = ChunkRunner.over(backend, "torch", precision, device, ids, pixels, weights, continuous)
    # On a GPU this times the plain modules; decoding there belongs to the cuda backend.
    step_model = backend.step_model if dev.type == "cpu" else _no_gpu_steps
    return replace(runner, encode=encode, step_model=step_model)


def cuda_runner(
    model: Path, tokenizer: Path | None, vq: Path | None, precision: str, weights: str
) -> ChunkRunner:
    """The torch CUDA fast backend (issue 5): CUDA graphs per shape; a head for another T gets its own
    backend over the same backbone and VQGAN (graphs are cached per backend). UserError without a GPU."""

    _check_raw(tokenizer, vq, precision)
    backend = CudaBackend.open(model, vq, device="cuda", dtype=DTYPES[precision])
    ids, pixels = query_inputs(Predictor.open(backend, tokenizer, vq))

    def continuous(time_horizon: int) -> tuple[Callable[[], object], str]:
        head, queries = head_for(backend.head, time_horizon)
        chunk = backend
        if queries == "synthetic":
            config = replace(backend.config, time_horizon=time_horizon)
            chunk = CudaBackend(
                config, backend.backbone, head, backend.vqgan, device=backend.device, dtype=backend.dtype
            )
        return (lambda: chunk.actions(ids)), queries

    return ChunkRunner.over(backend, "cuda", precision, "cuda", ids, pixels, weights, continuous)


def _no_gpu_steps():
    raise UserError("discrete modes on GPU: use --backend cuda (CUDA graphs), or --modes continuous")


def onnxruntime_runner(artifact_dir: Path, precision: str | None, weights: str) -> ChunkRunner:
    import onnxruntime as ort

    from rynn_edge.runtime.backends.onnxruntime import session_options

    predictor = open_predictor(artifact_dir, backend="onnxruntime")
    backend = predictor.backend
    stages = backend.artifact.stages()
    have = stages["backbone_prefill"]["precision"]
    if precision not in (None, have):
        raise UserError(f"{artifact_dir} was exported at {have}; re-export with --precision {precision}")
    ids, pixels = query_inputs(predictor)
    head_precision = stages["action_head"]["precision"]
    folder = Path(tempfile.mkdtemp(prefix="rynn-bench-head-"))

    def continuous(time_horizon: int) -> tuple[Callable[[], object], str]:
        if time_horizon == backend.time_horizon:
            session, queries = backend.session("action_head"), "checkpoint"
        else:
            path = _export_head(backend.artifact.model, time_horizon, head_precision, folder)
            session = ort.InferenceSession(str(path), session_options(), providers=backend.providers)
            queries = "synthetic"

        def run() -> None:
            hidden = backend.prefill(ids)
            session.run(None, {"hidden": hidden, "valid": np.ones(hidden.shape[:2], dtype=bool)})

        return run, queries

    device = "cpu" if backend.providers[0].startswith("CPU") else "cuda"
    return ChunkRunner.over(backend, "onnxruntime", have, device, ids, pixels, weights, continuous)


def tensorrt_runner(artifact_dir: Path, precision: str | None, weights: str) -> ChunkRunner:
    """Engines as built: the head engine has the checkpoint's T baked in, so other T are skipped (with
    the reason); the exported decode graph returns last-position logits, so no parallel decoding."""

    predictor = open_predictor(artifact_dir, backend="tensorrt")  # refuses without CUDA, first thing
    backend = predictor.backend
    have = backend.artifact.stages()["backbone_prefill"]["precision"]
    if precision not in (None, have):
        raise UserError(f"{artifact_dir} was exported at {have}; re-export with --precision {precision}")
    ids, pixels = query_inputs(predictor)

    def continuous(time_horizon: int) -> tuple[Callable[[], object], str] | str:
        if time_horizon != backend.time_horizon:
            return f"the action_head engine is built for T={backend.time_horizon}"
        return (lambda: backend.actions(ids)), "checkpoint"

    return ChunkRunner.over(backend, "tensorrt", have, "cuda", ids, pixels, weights, continuous)


def _export_head(model: dict, time_horizon: int, precision: str, folder: Path) -> Path:
    """An action-head graph for another T: random weights, the artifact's shapes, I/O names and precision."""
    hidden_size = int(model["hidden_size"])
    torch.manual_seed(time_horizon)
    head = ActionHead(hidden_size, hidden_size // 4, time_horizon, int(model["action_dim"])).eval()
    dtype = torch.float32 if precision == "fp32" else torch.float16
    hidden = torch.zeros(1, 16, hidden_size, dtype=dtype)
    valid = torch.ones(1, 16, dtype=torch.bool)
    path = folder / f"action_head_T{time_horizon}.onnx"
    torch.onnx.export(
        head.to(dtype),
        (hidden, valid),
        str(path),
        input_names=["hidden", "valid"],
        output_names=["actions"],
        dynamic_axes={"hidden": {1: "L"}, "valid": {1: "L"}},
        dynamo=False,
        opset_version=17,
    )
    return path
