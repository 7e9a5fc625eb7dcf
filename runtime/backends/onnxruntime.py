"""The onnxruntime backend: the exported graphs of an artifact folder, same surface as the torch backend.

CPU everywhere; the CUDA and TensorRT execution providers are used first when this onnxruntime build
has them. The decode graph returns only the new tokens' keys/values; the cache of `capacity` slots
lives here (numpy) and every step passes an explicit mask over [cache slots, new tokens].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rynn_edge.runtime.backends.artifact import Artifact

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def session_options(**settings: Any) -> Any:
    """Quiet SessionOptions (plus `settings`, e.g. enable_profiling=True) that compute what the graph says.
    onnxruntime fuses an int4 block DequantizeLinear + MatMul into MatMulNBits, which on the CPU by default
    (accuracy level 4) quantizes the activations to int8: W4A8, not the W4A16 graph TensorRT builds, and
    6% of int4's effect on the hidden states of the tiny checkpoint came from it. Level 1 keeps the fused
    kernel with fp32 activations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    for key, value in settings.items():
        setattr(options, key, value)
    return options


def providers() -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available]


class OrtStepModel:
    """`decoding.StepModel` over the backbone_decode graph (batch 1)."""

    def __init__(self, session: Any, layers: int, heads: int, head_dim: int):
        self.session = session
        past = next(i for i in session.get_inputs() if i.name == "past_k")
        self.dtype = _NUMPY[past.type]
        self.shape = (layers, 1, heads, head_dim)
        self.k: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def _run(self, ids: Sequence[int], positions: Sequence[int], mask: np.ndarray, slot: int) -> np.ndarray:
        logits, k, v = self.session.run(
            None,
            {
                "ids": np.asarray([ids], dtype=np.int64),
                "positions": np.asarray([positions], dtype=np.int64),
                "past_k": self.k,
                "past_v": self.v,
                "attn_mask": mask[None],
            },
        )
        self.k[:, :, :, slot : slot + len(ids)] = k
        self.v[:, :, :, slot : slot + len(ids)] = v
        return logits[0]

    def begin(self, prompt_ids: Sequence[int], capacity: int) -> np.ndarray:
        layers, batch, heads, head_dim = self.shape
        self.k = np.zeros((layers, batch, heads, capacity, head_dim), dtype=self.dtype)
        self.v = np.zeros_like(self.k)
        n = len(prompt_ids)
        mask = np.zeros((n, capacity + n), dtype=bool)
        mask[:, capacity:] = np.tril(np.ones((n, n), dtype=bool))  # empty cache; causal among the prompt
        return self._run(prompt_ids, range(n), mask, 0)

    def step(self, token: int, position: int, key_mask: np.ndarray) -> np.ndarray:
        if self.k is None:
            raise RuntimeError("step() before begin()")
        capacity = self.k.shape[3]
        mask = np.zeros((1, capacity + 1), dtype=bool)
        mask[0, :capacity] = key_mask[:capacity]
        mask[0, position] = False  # this token's slot is written after the step; it attends as "new"
        mask[0, capacity] = key_mask[position]
        return self._run([token], [position], mask, position)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, artifact: Artifact, provider_list: Sequence[str] | None = None):
        self.artifact = artifact
        self.providers = list(provider_list or providers())
        model = artifact.model
        self.time_horizon = int(model["time_horizon"])
        self.max_positions = int(model.get("max_position_embeddings") or 4096)
        self.action_dim = int(model["action_dim"])
        self._layers = int(model["num_hidden_layers"])
        self._heads = int(model["num_attention_heads"])
        self._head_dim = int(model["hidden_size"]) // self._heads
        self._sessions: dict[str, Any] = {}

    def session(self, stage: str) -> Any:
        if stage not in self._sessions:
            import onnxruntime as ort

            path = self.artifact.stage_file(stage)
            self._sessions[stage] = ort.InferenceSession(
                str(path), session_options(), providers=self.providers
            )
        return self._sessions[stage]

    def vq_encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels float32 [B, 3, S, S] in [-1, 1] -> codes int64 [B, (S/16)^2]."""
        size = pixels.shape[-1]
        (codes,) = self.session(f"vq_encoder_{size}").run(None, {"images": np.ascontiguousarray(pixels)})
        return codes.astype(np.int64)

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Final-norm hidden states float32 [1, L, H] of one prompt."""
        ids = np.asarray([prompt_ids], dtype=np.int64)
        feeds = {"ids": ids, "positions": np.arange(ids.shape[1])[None], "key_mask": np.ones_like(ids, bool)}
        return self.session("backbone_prefill").run(None, feeds)[0]

    def actions(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """One prefill (no lm_head) + the action head -> normalized actions float32 [T, A]."""
        hidden = self.prefill(prompt_ids)
        valid = np.ones(hidden.shape[:2], dtype=bool)
        (actions,) = self.session("action_head").run(None, {"hidden": hidden, "valid": valid})
        return actions[0]

    def step_model(self) -> OrtStepModel:
        return OrtStepModel(self.session("backbone_decode"), self._layers, self._heads, self._head_dim)

    def vq_decode(self, codes: np.ndarray) -> np.ndarray:
        """codes int64 [B, h, w] -> images uint8 [B, 16h, 16w, 3]."""
        (images,) = self.session("vq_decoder").run(None, {"codes": np.asarray(codes, dtype=np.int32)})
        return images
