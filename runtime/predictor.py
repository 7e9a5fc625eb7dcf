"""One query, backend-agnostic: images + state + instruction -> prompt ids -> actions (or images).

The predictor owns everything on the host side (resize, VQ code -> token table, state binning,
prompt layout, parsing and de-normalisation); a backend (torch, onnxruntime, tensorrt) only runs
the networks. The JSON it returns is the stable `rynn-edge predict --json` contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from rynn_edge.runtime import decoding, prompt
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.images import to_model_input
from rynn_edge.runtime.stats import Stats, load_stats
from rynn_edge.runtime.text import TextTokenizer
from rynn_edge.runtime.vocab import ImageVocab

# Images per VLA query: SO100 front + wrist; LIBERO (third, wrist) without or with one step of history.
IMAGE_COUNTS = {"so100": (2,), "libero": (2, 4)}
# The reference caps discrete decoding at action_steps (default 25) * 12 new tokens.
DISCRETE_MAX_NEW_TOKENS = 25 * 12


class Backend(Protocol):
    name: str
    time_horizon: int
    action_dim: int

    def vq_encode(self, pixels: np.ndarray) -> np.ndarray: ...
    def actions(self, prompt_ids: Sequence[int]) -> np.ndarray: ...
    def step_model(self) -> decoding.StepModel: ...
    def vq_decode(self, codes: np.ndarray) -> np.ndarray: ...


def robot_for(action_dim: int) -> str:
    """SO100 checkpoints have 6-d actions, LIBERO ones 7-d."""
    return "so100" if action_dim == 6 else "libero"


@dataclass
class Predictor:
    backend: Backend
    text: TextTokenizer
    vocab: ImageVocab
    stats: Stats
    robot: str
    image_size: int = 256

    @classmethod
    def open(
        cls,
        backend: Backend,
        tokenizer_dir: str | Path,
        vq_dir: str | Path,
        *,
        stats: str | Path | None = None,
        image_size: int = 256,
    ) -> Predictor:
        robot = robot_for(backend.action_dim)
        loaded = load_stats(stats or robot)
        if len(loaded.action.min) != backend.action_dim:
            raise UserError(
                f"stats {stats or robot!r} have {len(loaded.action.min)} action dims but the checkpoint has "
                f"action_dim {backend.action_dim}; pass --stats so100|libero|FILE matching the checkpoint"
            )
        return cls(
            backend=backend,
            text=TextTokenizer.from_dir(tokenizer_dir),
            vocab=ImageVocab.from_file(Path(vq_dir) / "text_tokenizer.json"),
            stats=loaded,
            robot=robot,
            image_size=image_size,
        )

    def check_inputs(self, images: Sequence[Image.Image | np.ndarray], state: np.ndarray) -> None:
        counts = IMAGE_COUNTS[self.robot]
        if len(images) not in counts:
            want = " or ".join(map(str, counts))
            raise UserError(f"{self.robot} queries take {want} images in prompt order, got {len(images)}")
        state_dim = len(self.stats.state.min)
        if state.shape != (state_dim,):
            raise UserError(f"state has {state.size} values, the {self.robot} stats expect {state_dim}")

    def encode_images(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """All views as one batch -> raw VQ codes int64 [N, h*w]."""
        return self.backend.vq_encode(to_model_input(images, self.image_size).numpy())

    def vla_prompt(
        self, images: Sequence[Image.Image | np.ndarray], state: np.ndarray, instruction: str
    ) -> tuple[list[int], np.ndarray]:
        self.check_inputs(images, state)
        codes = self.encode_images(images)
        ids = prompt.vla_prompt(self.text, instruction, state, list(codes), self.stats, self.vocab)
        return ids, codes

    def predict(
        self,
        images: Sequence[Image.Image | np.ndarray],
        state: Sequence[float],
        instruction: str,
        mode: str = "continuous",
        max_new_tokens: int = DISCRETE_MAX_NEW_TOKENS,
        parallel: bool = True,
    ) -> dict[str, Any]:
        """One query. Discrete mode decodes all action blocks as one batch where the backend can
        (identical tokens to sequential greedy decoding); `parallel=False` decodes them one by one."""
        state = np.asarray(state, dtype=np.float64)
        ids, codes = self.vla_prompt(images, state, instruction)
        result: dict[str, Any] = {"prompt_ids": ids, "vq_codes": codes.tolist(), "mode": mode}
        if mode == "continuous":
            # float32 like the reference head output: denormalize then runs (v + 1) / 2 in float32 as upstream
            normalized = self.backend.actions(ids)
        elif mode == "discrete":
            tokens = decoding.discrete_actions(
                self.backend.step_model(),
                ids,
                self.backend.time_horizon,
                self.backend.action_dim,
                max_new_tokens,
                parallel=parallel,
            )
            result["generated_tokens"] = tokens
            normalized = prompt.action_tokens_to_normalized(tokens, self.backend.action_dim)
        else:
            raise UserError(f"unknown mode {mode!r}: use continuous or discrete")
        actions = prompt.denormalize(normalized, self.stats.action)
        result["actions_normalized"] = normalized.tolist()
        result["actions"] = actions.tolist()
        if self.robot == "so100":
            result["goals"] = prompt.so100_goals(actions, state).tolist()
        return result


def open_predictor(
    model: str | Path,
    *,
    tokenizer: str | Path | None = None,
    vq: str | Path | None = None,
    backend: str = "torch",
    stats: str | Path | None = None,
    image_size: int = 256,
    trust_pickle: bool = False,
) -> Predictor:
    """A predictor over a raw checkpoint (needs the tokenizer and vq folders; backends torch, cuda) or
    over an exported artifact folder (it carries the tokenizer, token table and stats; backends
    onnxruntime, tensorrt)."""
    from rynn_edge.runtime.artifact import Artifact

    if Artifact.is_artifact(model):
        artifact_backend, artifact = _artifact_backend(model, backend)
        return Predictor.open(
            artifact_backend,
            tokenizer or artifact.asset("tokenizer"),
            vq or artifact.asset("image_vocab").parent,
            stats=stats or artifact.asset("stats"),
            image_size=image_size,
        )
    if backend not in ("torch", "cuda"):
        raise UserError(f"backend {backend!r} needs an exported artifact folder (rynn-edge export)")
    for flag, value in (("tokenizer", tokenizer), ("vq", vq)):
        if value is None:
            raise UserError(f"--{flag} DIR is required with a raw checkpoint")
    if backend == "cuda":  # torch fast path: bf16, static shapes, CUDA graphs; refuses without a GPU
        from rynn_edge.runtime.backend_cuda import CudaBackend

        checkpoint_backend = CudaBackend.open(model, vq, trust_pickle=trust_pickle)
    else:
        from rynn_edge.runtime.backend_torch import TorchBackend

        checkpoint_backend = TorchBackend(model, vq, trust_pickle=trust_pickle)
    return Predictor.open(checkpoint_backend, tokenizer, vq, stats=stats, image_size=image_size)


def _artifact_backend(model: str | Path, backend: str):
    """The backend over an exported artifact folder, and the verified artifact."""
    from rynn_edge.runtime.artifact import Artifact

    if backend == "tensorrt":
        from rynn_edge.runtime.backend_tensorrt import TensorRTBackend

        artifact = Artifact.open(model)  # checks the engines' GPU and TensorRT version first
        return TensorRTBackend(artifact), artifact
    if backend != "onnxruntime":
        raise UserError(f"{model} is an exported artifact: run it with --backend onnxruntime or tensorrt")
    from rynn_edge.runtime.backend_onnxruntime import OnnxRuntimeBackend

    # The ONNX graphs run on any machine: the GPU/TensorRT checks only concern engines.
    artifact = Artifact.open(model, check_device=False)
    return OnnxRuntimeBackend(artifact), artifact
