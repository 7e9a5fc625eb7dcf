"""`rynn-edge imagine`: the world model. Image(s) + an action -> the next image(s), as tokens and PNGs.

By default the decode is structure-forced (image start, size tokens, row ends, image end are
forced; every code slot takes the argmax over image ids only), so the output is always a
well-formed image. `--unconstrained` decodes exactly as the reference does (plain greedy, causal
mask, stop at 8710) for token-by-token comparison; malformed images are then reported, not drawn.
"""

from __future__ import annotations

import argparse
import json

from rynn_edge.runtime.argtypes import NumberList, output_file, positive
from rynn_edge.runtime.commands.predict import add_model_arguments, load_images, open_predictor

# Reference world-model decoding cap (max_new_tokens 3000).
UNCONSTRAINED_MAX_NEW_TOKENS = 3000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--action",
        type=NumberList(float),
        required=True,
        help="one action, comma-separated, in training units",
    )
    parser.add_argument(
        "--prompt",
        choices=("libero", "lerobot"),
        default=None,
        help="world-model sentence: the LIBERO eval one or the LeRobot training one (default: by action_dim)",
    )
    parser.add_argument(
        "--out", type=output_file, required=True, help="output PNG (several images: side by side)"
    )
    parser.add_argument("--max-new-tokens", type=positive(int), default=None, help="cap on generated tokens")
    parser.add_argument(
        "--unconstrained", action="store_true", help="plain greedy exactly as upstream (no structure forcing)"
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from rynn_edge.runtime import decoding
    from rynn_edge.runtime.commands.vq import codes_from_image_tokens
    from rynn_edge.runtime.errors import UserError
    from rynn_edge.runtime.tokens import prompt
    from rynn_edge.runtime.tokens.stats import load_stats
    from rynn_edge.runtime.tokens.text import WORLD_MODEL_EVAL_SENTENCE, WORLD_MODEL_TRAIN_SENTENCE

    predictor = open_predictor(args, default_size=256)
    sentence = args.prompt or ("lerobot" if predictor.robot == "so100" else "libero")
    # LIBERO world models were trained at 512 px, the LeRobot one at 256.
    predictor.image_size = args.image_size or (256 if sentence == "lerobot" else 512)
    images = load_images(args.image)
    action = np.asarray(args.action, dtype=np.float64)
    stats = load_stats(args.stats or ("libero_world" if predictor.robot == "libero" else "so100"))
    if action.shape != (len(stats.action.min),):
        raise UserError(
            f"--action has {action.size} values, the world-model stats expect {len(stats.action.min)}"
        )
    codes = predictor.encode_images(images)
    text = WORLD_MODEL_TRAIN_SENTENCE if sentence == "lerobot" else WORLD_MODEL_EVAL_SENTENCE
    ids = prompt.world_model_prompt(
        predictor.text, list(codes), action, stats, predictor.vocab, sentence=text
    )
    model = predictor.backend.step_model()
    grid = predictor.image_size // 16
    if args.unconstrained:
        tokens = decoding.greedy_causal(model, ids, args.max_new_tokens or UNCONSTRAINED_MAX_NEW_TOKENS)
    else:
        tokens = decoding.greedy_images(model, ids, predictor.vocab.code_to_id, grid, grid, len(images))
    result = {"prompt_ids": ids, "vq_codes": codes.tolist(), "generated_tokens": tokens, "images": []}
    grids, problems = [], []
    for i, span in enumerate(decoding.image_spans(tokens)):
        try:
            grids.append(
                codes_from_image_tokens(np.asarray(span), predictor.vocab, source=f"generated image {i}")
            )
        except UserError as err:
            problems.append(str(err))
    if grids:
        if len({g.shape for g in grids}) != 1:
            raise UserError("generated images differ in size; drop --unconstrained to force the structure")
        pixels = predictor.backend.vq_decode(np.stack(grids))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(list(pixels), axis=1)).save(args.out)
        result["images"] = [str(args.out)]
    result["problems"] = problems
    if args.json:
        print(json.dumps(result))
    else:
        written = args.out if grids else "nothing written"
        print(f"generated {len(tokens)} tokens, {len(grids)} image(s) -> {written}")
        for problem in problems:
            print(f"  malformed: {problem}")
    # Structure forcing cannot produce a malformed image; an unconstrained decode reports them instead.
    return 0 if args.unconstrained or (grids and not problems) else 1
