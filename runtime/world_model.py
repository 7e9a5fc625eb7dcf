"""The world model: image(s) + one action -> the next image(s), as tokens and decoded pixels.

By default the decode is structure-forced (image start, size tokens, row ends, image end are
forced; every code slot takes the argmax over image ids only), so the output is always a
well-formed image. `unconstrained` decodes exactly as the reference does (plain greedy, causal
mask, stop at 8710) for token-by-token comparison; malformed images are then reported, not drawn.
One function for every backend: over a Triton server the same query runs on the server
(`rynn_step` in mode world_model), in-process it runs here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from rynn_edge.runtime import decoding
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.predictor import Predictor
from rynn_edge.runtime.tokens import prompt
from rynn_edge.runtime.tokens.image_layout import codes_from_image_tokens
from rynn_edge.runtime.tokens.stats import load_stats
from rynn_edge.runtime.tokens.text import WORLD_MODEL_EVAL_SENTENCE, WORLD_MODEL_TRAIN_SENTENCE

SENTENCES = {"libero": WORLD_MODEL_EVAL_SENTENCE, "lerobot": WORLD_MODEL_TRAIN_SENTENCE}
WORLD_MODEL_VIEWS = (1, 2)  # the current frame: one view, or front and wrist
# Reference world-model decoding cap (max_new_tokens 3000).
UNCONSTRAINED_MAX_NEW_TOKENS = 3000


@dataclass(frozen=True)
class Imagined:
    prompt_ids: list[int]
    vq_codes: np.ndarray  # int64 [images, h*w], the input views' codes
    generated_tokens: list[int]
    images: np.ndarray  # uint8 [N, H, W, 3], the well-formed generated images decoded; N may be 0
    problems: list[str]  # one line per malformed generated image (only an unconstrained decode has any)


def check_views(count: int) -> None:
    if count not in WORLD_MODEL_VIEWS:
        raise UserError(f"a world-model query takes one or two views (front [, wrist]), got {count}")


def default_sentence(robot: str) -> str:
    return "lerobot" if robot == "so100" else "libero"


def default_image_size(sentence: str) -> int:
    """LIBERO world models were trained at 512 px, the LeRobot one at 256."""
    return 256 if sentence == "lerobot" else 512


def imagine(
    predictor: Predictor,
    images: Sequence[Image.Image | np.ndarray],
    action: Sequence[float],
    *,
    sentence: str | None = None,
    image_size: int | None = None,
    unconstrained: bool = False,
    max_new_tokens: int | None = None,
    stats: str | None = None,
) -> Imagined:
    """One world-model query; `stats` (a name or a file) defaults to the robot's world-model stats."""
    sentence = sentence or default_sentence(predictor.robot)
    if sentence not in SENTENCES:
        raise UserError(f"world-model sentence {sentence!r}: use {' or '.join(SENTENCES)}")
    check_views(len(images))
    size = image_size or default_image_size(sentence)
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if hasattr(predictor.backend, "imagine"):  # the server holds the world-model stats and runs it all
        if stats is not None:
            raise UserError("--stats: over --backend triton the server's world-model stats are used; drop it")
        fields = predictor.backend.imagine(images, action, sentence, size, unconstrained, max_new_tokens)
        return Imagined(**fields)
    world_stats = load_stats(stats or ("libero_world" if predictor.robot == "libero" else "so100"))
    if action.shape != (len(world_stats.action.min),):
        raise UserError(
            f"--action has {action.size} values, the world-model stats expect {len(world_stats.action.min)}"
        )
    codes = predictor.encode_images(images, size)
    ids = prompt.world_model_prompt(
        predictor.text, list(codes), action, world_stats, predictor.vocab, sentence=SENTENCES[sentence]
    )
    model = predictor.backend.step_model()
    grid = size // 16
    if unconstrained:
        tokens = decoding.greedy_causal(model, ids, max_new_tokens or UNCONSTRAINED_MAX_NEW_TOKENS)
    else:
        tokens = decoding.greedy_images(model, ids, predictor.vocab.code_to_id, grid, grid, len(images))
    grids, problems = [], []
    for i, span in enumerate(decoding.image_spans(tokens)):
        try:
            grids.append(codes_from_image_tokens(np.asarray(span), predictor.vocab, f"generated image {i}"))
        except UserError as err:
            problems.append(str(err))
    if len({g.shape for g in grids}) > 1:
        raise UserError("generated images differ in size; drop --unconstrained to force the structure")
    pixels = predictor.backend.vq_decode(np.stack(grids)) if grids else np.zeros((0, 0, 0, 3), np.uint8)
    return Imagined(ids, np.asarray(codes), tokens, np.asarray(pixels, dtype=np.uint8), problems)
