"""The torch backend: the fp32 CPU reference every other backend is checked against.

Backends share one small surface (numpy in, numpy out) so the predictor, the decoding loops and
the control loop never care which one runs: `vq_encode`, `actions`, `step_model`, `vq_decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rynn_edge.runtime.model.backbone import ChameleonBackbone, KVCache
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.model.vqgan import VQGAN


class TorchStepModel:
    """`decoding.BatchStepModel` over the backbone's explicit KV cache (batch 1): one token per `step`,
    or N tokens per `step_many` for parallel action blocks."""

    def __init__(self, backbone: ChameleonBackbone):
        self.backbone = backbone
        self.cache: KVCache | None = None

    @torch.inference_mode()
    def begin(self, prompt_ids: Sequence[int], capacity: int) -> np.ndarray:
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        hidden, k, v = self.backbone.prefill_with_kv(ids, positions, torch.ones_like(ids, dtype=torch.bool))
        self.cache = KVCache.from_prompt(k, v, capacity)
        return self.backbone.logits(hidden[:, -1]).squeeze(0).numpy()

    @torch.inference_mode()
    def step(self, token: int, position: int, key_mask: np.ndarray) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("step() before begin()")
        logits = self.backbone.decode_step(
            torch.tensor([[token]]),
            torch.tensor([[position]]),
            self.cache,
            position,
            torch.from_numpy(np.ascontiguousarray(key_mask)).unsqueeze(0),
        )
        return logits.squeeze(0).numpy()

    @torch.inference_mode()
    def step_many(self, tokens: Sequence[int], positions: Sequence[int], key_mask: np.ndarray) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("step_many() before begin()")
        where = torch.tensor(list(positions))
        logits = self.backbone.decode_tokens(
            torch.tensor([list(tokens)]),
            where[None],
            self.cache,
            where,
            torch.from_numpy(np.ascontiguousarray(key_mask)),
        )
        return logits.numpy()


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model_dir: str | Path,
        vq_dir: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        trust_pickle: bool = False,
    ):
        self.config, self.backbone, self.head = load_model(model_dir, dtype=dtype)
        self.vqgan = VQGAN.from_dir(vq_dir, trust_pickle=trust_pickle)
        self.time_horizon = self.config.time_horizon
        self.max_positions = self.config.max_position_embeddings
        self.action_dim = self.config.action_dim

    @torch.inference_mode()
    def vq_encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels float32 [B, 3, S, S] in [-1, 1] -> codes int64 [B, (S/16)^2]."""
        return self.vqgan.encode(torch.from_numpy(pixels)).numpy()

    @torch.inference_mode()
    def actions(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """One prefill (no lm_head) + the action head -> normalized actions float32 [T, A]."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        valid = torch.ones_like(ids, dtype=torch.bool)
        hidden = self.backbone.prefill(ids, positions, valid)
        return self.head(hidden, valid)[0].float().numpy()

    def step_model(self) -> TorchStepModel:
        return TorchStepModel(self.backbone)

    @torch.inference_mode()
    def vq_decode(self, codes: np.ndarray) -> np.ndarray:
        """codes int64 [B, h, w] -> images uint8 [B, 16h, 16w, 3]."""
        return self.vqgan.decode(torch.from_numpy(codes)).numpy()
