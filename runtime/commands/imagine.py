"""`rynn-edge imagine`: the world model. Image(s) + an action -> the next image(s), as tokens and PNGs.

The query itself (structure-forced or `--unconstrained` decoding) is `runtime/world_model.py`; with
`--backend triton` it runs on the server.
"""

from __future__ import annotations

import argparse
import json

from rynn_edge.runtime.argtypes import NumberList, output_image, positive
from rynn_edge.runtime.commands.predict import add_model_arguments, load_images, open_predictor


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
        help="world-model sentence: the LIBERO eval one or the LeRobot training one (default: by robot)",
    )
    parser.add_argument(
        "--out", type=output_image, required=True, help="output PNG (several images: side by side)"
    )
    parser.add_argument("--max-new-tokens", type=positive(int), default=None, help="cap on generated tokens")
    parser.add_argument(
        "--unconstrained", action="store_true", help="plain greedy exactly as upstream (no structure forcing)"
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from rynn_edge.runtime.world_model import check_views, imagine

    images = load_images(args.image)
    check_views(len(images))
    predictor = open_predictor(args, default_size=256)
    imagined = imagine(
        predictor,
        images,
        args.action,
        sentence=args.prompt,
        image_size=args.image_size,
        unconstrained=args.unconstrained,
        max_new_tokens=args.max_new_tokens,
        stats=args.stats,
    )
    drawn = len(imagined.images) > 0
    if drawn:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(list(imagined.images), axis=1)).save(args.out)
    if args.json:
        result = {
            "prompt_ids": imagined.prompt_ids,
            "vq_codes": np.asarray(imagined.vq_codes).tolist(),
            "generated_tokens": imagined.generated_tokens,
            "images": [str(args.out)] if drawn else [],
            "problems": imagined.problems,
        }
        print(json.dumps(result))
    else:
        written = args.out if drawn else "nothing written"
        count = f"{len(imagined.generated_tokens)} tokens, {len(imagined.images)} image(s)"
        print(f"generated {count} -> {written}")
        for problem in imagined.problems:
            print(f"  malformed: {problem}")
    # Structure forcing cannot produce a malformed image; an unconstrained decode reports them instead.
    return 0 if args.unconstrained or (drawn and not imagined.problems) else 1
