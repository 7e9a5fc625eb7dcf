"""`rynn-edge predict`: one action chunk from images, state and an instruction (the parity contract)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rynn_edge.runtime.errors import UserError

BACKENDS = ("torch", "onnxruntime", "cuda", "tensorrt")


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads a checkpoint bundle."""
    parser.add_argument("model", type=Path, help="checkpoint folder (HF save_pretrained) or artifact folder")
    parser.add_argument("--tokenizer", type=Path, help="HF tokenizer folder (tokenizer.json)")
    parser.add_argument("--vq", type=Path, help="Chameleon image tokenizer folder (vqgan.yaml, vqgan.ckpt)")
    parser.add_argument("--image", action="append", type=Path, default=[], help="image file, in prompt order")
    parser.add_argument("--stats", help="so100 | libero | path to stats.json (default: from action_dim)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--image-size", type=int, choices=(256, 512), default=None, help="model resolution")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="load a vqgan.ckpt that is not plain weights"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--state", required=True, help="joint state, comma-separated, in training units")
    parser.add_argument("--instruction", required=True, help="the task, exactly as in training")
    parser.add_argument("--mode", choices=("continuous", "discrete"), default="continuous")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="discrete mode cap (default 300)")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="discrete mode: decode the action blocks one by one (the reference order) instead of as a batch",
    )


def open_predictor(args: argparse.Namespace, default_size: int):
    from rynn_edge.runtime.predictor import open_predictor

    return open_predictor(
        args.model,
        tokenizer=args.tokenizer,
        vq=args.vq,
        backend=args.backend,
        stats=args.stats,
        image_size=args.image_size or default_size,
        trust_pickle=args.trust_pickle,
    )


def load_images(paths: list[Path]):
    from rynn_edge.runtime.images import load_image

    if not paths:
        raise UserError("give at least one --image PATH (in prompt order)")
    return [load_image(p) for p in paths]


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.predictor import DISCRETE_MAX_NEW_TOKENS

    predictor = open_predictor(args, default_size=256)
    result = predictor.predict(
        load_images(args.image),
        parse_floats(args.state, "--state"),
        args.instruction,
        args.mode,
        max_new_tokens=args.max_new_tokens or DISCRETE_MAX_NEW_TOKENS,
        parallel=not args.sequential,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"prompt: {len(result['prompt_ids'])} tokens; images: {len(result['vq_codes'])}")
    key = "goals" if "goals" in result else "actions"
    print(f"{key} [{len(result[key])} x {len(result[key][0]) if result[key] else 0}]:")
    for step, row in enumerate(result[key]):
        print(f"  {step:3d}  " + "  ".join(f"{v:9.3f}" for v in row))
    return 0
