"""The five stages as stand-alone calls with realistic inputs, for `rynn-edge profile`.

Inputs come from one synthetic query (two views, the predictor's real prompt layout): vq_encoder encodes
the views, backbone_prefill runs the prompt, action_head its hidden states, backbone_decode is one step
after the prompt (key mask = prompt + the new slot), vq_decoder decodes the views' codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rynn_edge.runtime.backends.tensorrt import bucket, max_dims
from rynn_edge.runtime.backends.torch import TorchBackend
from rynn_edge.runtime.bench.chunk_runners import DTYPES, query_inputs
from rynn_edge.runtime.bench.profiling import (
    StageProfile,
    profile_onnxruntime,
    profile_tensorrt,
    profile_torch,
)
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.predictor import Predictor, open_predictor


def torch_profiles(
    model: Path,
    tokenizer: Path | None,
    vq: Path | None,
    *,
    precision: str,
    device: str,
    runs: int,
    stages: list[str],
) -> list[StageProfile]:

    if tokenizer is None or vq is None:
        raise UserError("--tokenizer DIR and --vq DIR are required with a raw checkpoint")
    if precision not in DTYPES:
        raise UserError(f"torch profiles {', '.join(DTYPES)}")
    backend = TorchBackend(model, vq, dtype=DTYPES[precision])
    ids, pixels = query_inputs(Predictor.open(backend, tokenizer, vq))
    dev = torch.device(device)
    backbone, head, vq = backend.backbone.to(dev), backend.head.to(dev), backend.vqgan.to(dev)
    ids_t = torch.tensor([ids], device=dev)
    positions = torch.arange(len(ids), device=dev)[None]
    valid = torch.ones_like(ids_t, dtype=torch.bool)
    pixels_t = torch.from_numpy(pixels).to(dev)
    with torch.inference_mode():
        codes = vq.encode(pixels_t)
        hidden, k, v = backbone.prefill_with_kv(ids_t, positions, valid)
    side = int(codes.shape[1] ** 0.5)
    capacity = len(ids) + 1
    cache_k = torch.zeros((*k.shape[:3], capacity, k.shape[-1]), dtype=k.dtype, device=dev)
    cache_v = torch.zeros_like(cache_k)
    cache_k[:, :, :, : len(ids)], cache_v[:, :, :, : len(ids)] = k, v
    token = torch.tensor([[ids[-1]]], device=dev)
    where = torch.tensor([[len(ids)]], device=dev)
    mask = torch.ones(1, capacity, dtype=torch.bool, device=dev)
    calls = {
        "vq_encoder": (lambda: vq.encode(pixels_t).cpu(), {"vq": vq}),
        "backbone_prefill": (lambda: backbone.prefill(ids_t, positions, valid).cpu(), {"backbone": backbone}),
        "action_head": (lambda: head(hidden, valid).cpu(), {"head": head}),
        "backbone_decode": (
            lambda: backbone.decode_step_kv(token, where, cache_k, cache_v, len(ids), mask)[0].cpu(),
            {"backbone": backbone},
        ),
        "vq_decoder": (lambda: vq.decode(codes.view(-1, side, side)).cpu(), {"vq": vq}),
    }
    return [profile_torch(s, *calls[s], runs, device) for s in stages]


def onnxruntime_profiles(artifact_dir: Path, stages: list[str], runs: int) -> list[StageProfile]:

    predictor = open_predictor(artifact_dir, backend="onnxruntime")
    backend = predictor.backend
    ids, pixels = query_inputs(predictor)
    artifact = backend.artifact
    size = pixels.shape[-1]
    feeds = {
        f"vq_encoder_{size}": lambda: {"images": pixels},
        "backbone_prefill": lambda: {
            "ids": np.asarray([ids]),
            "positions": np.arange(len(ids))[None],
            "key_mask": np.ones((1, len(ids)), dtype=bool),
        },
        "action_head": lambda: {"hidden": backend.prefill(ids), "valid": np.ones((1, len(ids)), dtype=bool)},
        "backbone_decode": lambda: _decode_feeds(backend, ids),
        "vq_decoder": lambda: {
            "codes": backend.vq_encode(pixels).reshape(len(pixels), size // 16, -1).astype(np.int32)
        },
    }
    out = []
    for stage in stages:
        graph = f"vq_encoder_{size}" if stage == "vq_encoder" else stage
        path = artifact.stage_file(graph)
        profiled = profile_onnxruntime(stage, path, feeds[graph](), backend.providers, runs)
        out.append(profiled)
    return out


def tensorrt_profiles(artifact_dir: Path, stages: list[str], runs: int) -> list[StageProfile]:
    """Each engine bound at the query's prompt bucket and view count (other dimensions at the profile
    maximum), inputs left as bound (TensorRT layer times do not depend on the values), run synchronously
    on the backend's stream. Needs engines built with detailed profiling verbosity (export does)."""

    predictor = open_predictor(artifact_dir, backend="tensorrt")  # refuses without CUDA, first thing
    backend = predictor.backend
    ids, pixels = query_inputs(predictor)
    known = {"B": len(pixels), "L": bucket(len(ids), backend.artifact.stages()["backbone_prefill"])}
    out = []
    for stage in stages:
        engine = backend.engine(f"vq_encoder_{pixels.shape[-1]}" if stage == "vq_encoder" else stage)
        dims = max_dims(engine.entry)
        engine.bind(dims | {name: value for name, value in known.items() if name in dims})

        def execute(engine=engine) -> None:
            engine.enqueue()
            backend.stream.synchronize()

        out.append(profile_tensorrt(stage, engine.context, execute, runs))
    return out


def _decode_feeds(backend, ids: list[int]) -> dict[str, np.ndarray]:
    """One step after the prompt: cache of L+1 slots holding the prompt, the new token attends to all."""
    step = backend.step_model()
    step.begin(ids, len(ids) + 1)
    capacity = len(ids) + 1
    mask = np.ones((1, 1, capacity + 1), dtype=bool)
    mask[0, 0, len(ids) : capacity] = False
    return {
        "ids": np.asarray([[ids[-1]]]),
        "positions": np.asarray([[len(ids)]]),
        "past_k": step.k,
        "past_v": step.v,
        "attn_mask": mask,
    }
