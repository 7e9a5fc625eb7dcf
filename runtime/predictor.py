"""One query, backend-agnostic: images + state + instruction -> prompt ids -> actions (or images).

The predictor owns everything on the host side (resize, VQ code -> token table, state binning,
prompt layout, parsing and de-normalisation); a backend (torch, cuda, onnxruntime, tensorrt) only
runs the networks. It returns arrays (`Prediction`); the CLI turns them into its JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.artifact import MANIFEST, Artifact
from rynn_edge.runtime.backends.cuda import CudaBackend
from rynn_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from rynn_edge.runtime.backends.tensorrt import TensorRTBackend
from rynn_edge.runtime.backends.torch import TorchBackend
from rynn_edge.runtime.backends.triton import TritonBackend
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.robot.embodiment import Embodiment, embodiment
from rynn_edge.runtime.tokens import prompt
from rynn_edge.runtime.tokens.image_layout import ImageLayout
from rynn_edge.runtime.tokens.images import to_model_input
from rynn_edge.runtime.tokens.stats import Range, Stats, load_stats
from rynn_edge.runtime.tokens.text import TextTokenizer
from rynn_edge.runtime.tokens.vocab import ImageVocab

# The reference caps discrete decoding at action_steps (default 25) * 12 new tokens.
DISCRETE_MAX_NEW_TOKENS = 25 * 12


class Backend(Protocol):
    """What a backend runs. One that also has `chunk(pixels, template_ids, slots, code_to_id) ->
    (codes, normalized actions)` runs the whole continuous step fused, and the predictor uses it."""

    name: str
    time_horizon: int
    action_dim: int
    max_positions: int  # the model's max_position_embeddings

    def vq_encode(self, pixels: np.ndarray) -> np.ndarray: ...
    def actions(self, prompt_ids: Sequence[int]) -> np.ndarray: ...
    def step_model(self) -> decoding.StepModel: ...
    def vq_decode(self, codes: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Prediction:
    prompt_ids: list[int]
    vq_codes: np.ndarray  # int64 [images, h*w], raw codes 0..8191
    mode: str
    actions_normalized: np.ndarray  # float32 [T, A]
    actions: np.ndarray  # [T, A] de-normalised, training units
    goals: np.ndarray | None  # [T, A] absolute goals where the robot's actions are joint positions
    generated_tokens: list[int] | None = None  # discrete mode: every generated id, the final 8710 included


@dataclass
class Predictor:
    backend: Backend
    text: TextTokenizer | None  # None over a server that runs whole queries (`remote`)
    vocab: ImageVocab | None
    stats: Stats
    embodiment: Embodiment
    image_size: int = 256
    truncate_instruction: bool = False  # else a prompt longer than the model's positions is refused

    @property
    def robot(self) -> str:
        return self.embodiment.name

    @classmethod
    def open(
        cls,
        backend: Backend,
        tokenizer_dir: str | Path,
        vq_dir: str | Path,
        *,
        stats: str | Path | None = None,
        image_size: int = 256,
        robot: str | None = None,
    ) -> Predictor:
        body = embodiment(robot, backend.action_dim)
        loaded = load_stats(stats or body.name)
        if len(loaded.action.min) != backend.action_dim:
            raise UserError(
                f"stats {stats or body.name!r} have {len(loaded.action.min)} action dims but the checkpoint "
                f"has action_dim {backend.action_dim}; pass --stats so100|libero|FILE matching the checkpoint"
            )
        if loaded.state is not None and loaded.state.dim != body.state_dim:
            raise UserError(
                f"stats {stats or body.name!r} have {loaded.state.dim} state dims but a {body.name} state "
                f'has {body.state_dim}; fix the file\'s "state" ranges or pass the stats of this robot'
            )
        return cls(
            backend=backend,
            text=TextTokenizer.from_dir(tokenizer_dir),
            vocab=ImageVocab.from_file(Path(vq_dir) / "text_tokenizer.json"),
            stats=loaded,
            embodiment=body,
            image_size=image_size,
        )

    @classmethod
    def remote(cls, backend: TritonBackend, *, robot: str | None = None) -> Predictor:
        """Over a server that runs the whole query (tokenizer, tables and stats stay there); the robot
        side keeps only what it checks and plans with: the embodiment, the stats and the image size."""
        ranges = {k: Range(np.asarray(v["min"], np.float64), np.asarray(v["max"], np.float64))
                  for k, v in backend.stats.items()}  # fmt: skip
        return cls(
            backend=backend,
            text=None,
            vocab=None,
            stats=Stats(action=ranges["action"], state=ranges.get("state")),
            embodiment=embodiment(robot or backend.robot, backend.action_dim),
            image_size=backend.image_size,
        )

    def check_inputs(self, images: Sequence[Image.Image | np.ndarray], state: np.ndarray) -> None:
        counts = self.embodiment.image_counts
        if len(images) not in counts:
            want = " or ".join(map(str, counts))
            raise UserError(f"{self.robot} queries take {want} images in prompt order, got {len(images)}")
        state_dim = len(self.stats.state.min)
        if state.shape != (state_dim,):
            raise UserError(f"state has {state.size} values, the {self.robot} stats expect {state_dim}")

    def encode_images(self, images: Sequence[Image.Image | np.ndarray], size: int = 0) -> np.ndarray:
        """All views as one batch at `size` (default: the predictor's) -> raw VQ codes int64 [N, h*w]."""
        return self.backend.vq_encode(to_model_input(images, size or self.image_size).numpy())

    def vla_prompt(
        self, images: Sequence[Image.Image | np.ndarray], state: np.ndarray, instruction: str
    ) -> tuple[list[int], np.ndarray]:
        self.check_inputs(images, state)
        codes = self.encode_images(images)
        ids = self.fit(
            lambda text: prompt.vla_prompt(self.text, text, state, list(codes), self.stats, self.vocab),
            instruction,
        )
        return ids, codes

    def fit(self, build: Callable[[str], list[int]], instruction: str) -> list[int]:
        """`build(instruction)`, refused when longer than the model's positions, or with the instruction
        cut word by word until it fits when `truncate_instruction` is set (with a warning)."""
        limit = self.backend.max_positions
        ids = build(instruction)
        if len(ids) <= limit:
            return ids
        if not self.truncate_instruction:
            raise UserError(
                f"the prompt is {len(ids)} tokens but the model has {limit} positions "
                f"(max_position_embeddings); shorten --instruction ({len(instruction)} characters) or pass "
                "--truncate-instruction"
            )
        words = instruction.split()
        while len(ids) > limit and words:
            cut = max(1, len(words) * (len(ids) - limit) // len(ids))
            words = words[:-cut]
            ids = build(" ".join(words))
        if len(ids) > limit:
            raise UserError(f"even without an instruction the prompt is {len(ids)} tokens (limit {limit})")
        print(
            f"rynn-edge: warning: instruction cut to its first {len(words)} words to fit {limit} positions",
            file=sys.stderr,
        )
        return ids

    def fused_continuous(
        self, images: Sequence[Image.Image | np.ndarray], state: np.ndarray, instruction: str
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Prompt ids, codes and normalized actions from one fused backend call: the prompt is laid out
        with placeholder codes (its length and every other id do not depend on them), the backend
        encodes the views and writes their token ids at the code positions itself."""
        self.check_inputs(images, state)
        grid = self.image_size // 16
        layout = ImageLayout(grid, grid)
        placeholder = [np.zeros(grid * grid, dtype=np.int64)] * len(images)
        template = self.fit(
            lambda text: prompt.vla_prompt(self.text, text, state, placeholder, self.stats, self.vocab),
            instruction,
        )
        slots = layout.code_positions(template)
        pixels = to_model_input(images, self.image_size).numpy()
        codes, normalized = self.backend.chunk(pixels, template, slots, self.vocab.code_to_id)
        ids = np.asarray(template)
        ids[slots] = self.vocab.ids_from_codes(codes).reshape(-1)
        return ids.tolist(), codes, normalized

    def predict(
        self,
        images: Sequence[Image.Image | np.ndarray],
        state: Sequence[float],
        instruction: str,
        mode: str = "continuous",
        max_new_tokens: int = DISCRETE_MAX_NEW_TOKENS,
        parallel: bool = True,
    ) -> Prediction:
        """One query. Discrete mode decodes all action blocks as one batch where the backend can
        (identical tokens to sequential greedy decoding); `parallel=False` decodes them one by one."""
        state = np.asarray(state, dtype=np.float64)
        if hasattr(self.backend, "query"):  # the server checks the inputs and runs everything
            fields = self.backend.query(images, state, instruction, mode, max_new_tokens, parallel)
            return Prediction(**fields)
        tokens = None
        if mode == "continuous" and hasattr(self.backend, "chunk"):
            ids, codes, normalized = self.fused_continuous(images, state, instruction)
        elif mode == "continuous":
            ids, codes = self.vla_prompt(images, state, instruction)
            # float32 like the reference head output: denormalize then runs (v + 1) / 2 in float32 as upstream
            normalized = self.backend.actions(ids)
        elif mode == "discrete":
            ids, codes = self.vla_prompt(images, state, instruction)
            tokens = decoding.discrete_actions(
                self.backend.step_model(),
                ids,
                self.backend.time_horizon,
                self.backend.action_dim,
                max_new_tokens,
                parallel=parallel,
            )
            normalized = prompt.action_tokens_to_normalized(tokens, self.backend.action_dim)
        else:
            raise UserError(f"unknown mode {mode!r}: use continuous or discrete")
        actions = prompt.denormalize(normalized, self.stats.action)
        goals = None if self.embodiment.goals is None else self.embodiment.goals(actions, state)
        return Prediction(ids, np.asarray(codes), mode, normalized, actions, goals, tokens)


def open_predictor(
    model: str | Path,
    *,
    tokenizer: str | Path | None = None,
    vq: str | Path | None = None,
    backend: str = "torch",
    stats: str | Path | None = None,
    image_size: int = 256,
    trust_pickle: bool = False,
    robot: str | None = None,
    server: str | None = None,
    server_timeout: float = 30.0,
) -> Predictor:
    """A predictor over a raw checkpoint (needs the tokenizer and vq folders; backends torch, cuda),
    over an exported artifact folder (it carries the tokenizer, token table and stats; backends
    onnxruntime, tensorrt), or over a Triton server (backend triton, `server` HOST:PORT; `model` names
    the server's whole-step model, or is an artifact folder for the default `rynn_step`)."""

    if backend == "triton":
        if not server:
            raise UserError("--backend triton needs --server HOST:PORT (a `rynn-edge serve` endpoint)")
        name = "rynn_step" if Path(model).exists() else str(model)
        return Predictor.remote(TritonBackend(server, name, server_timeout), robot=robot)
    if Artifact.is_artifact(model):
        artifact_backend, artifact = _artifact_backend(model, backend)
        return Predictor.open(
            artifact_backend,
            tokenizer or artifact.asset("tokenizer"),
            vq or artifact.asset("image_vocab").parent,
            stats=stats or artifact.asset("stats"),
            image_size=image_size,
            robot=robot or artifact.manifest.get("model", {}).get("robot"),
        )
    if backend not in ("torch", "cuda"):
        missing = Path(model) / MANIFEST
        raise UserError(
            f"{missing}: not found, so {model} is not an exported artifact, which backend {backend!r} needs; "
            "make one with rynn-edge export (or use --backend torch|cuda on a raw checkpoint)"
        )
    for flag, value in (("tokenizer", tokenizer), ("vq", vq)):
        if value is None:
            raise UserError(f"--{flag} DIR is required with a raw checkpoint")
    if backend == "cuda":  # torch fast path: bf16, static shapes, CUDA graphs; refuses without a GPU
        checkpoint_backend = CudaBackend.open(model, vq, trust_pickle=trust_pickle)
    else:
        checkpoint_backend = TorchBackend(model, vq, trust_pickle=trust_pickle)
    return Predictor.open(checkpoint_backend, tokenizer, vq, stats=stats, image_size=image_size, robot=robot)


def _artifact_backend(model: str | Path, backend: str):
    """The backend over an exported artifact folder, and the verified artifact."""

    if backend == "tensorrt":
        artifact = Artifact.open(model)  # checks the engines' GPU and TensorRT version first
        return TensorRTBackend(artifact), artifact
    if backend != "onnxruntime":
        raise UserError(f"{model} is an exported artifact: run it with --backend onnxruntime or tensorrt")

    # The ONNX graphs run on any machine: the GPU/TensorRT checks only concern engines.
    artifact = Artifact.open(model, check_device=False)
    return OnnxRuntimeBackend(artifact), artifact
