"""`rynn-edge predict`: one action chunk from images, state and an instruction (the parity contract)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rynn_edge.runtime.argtypes import Number, NumberList, positive
from rynn_edge.runtime.errors import UserError

if TYPE_CHECKING:
    from rynn_edge.runtime.predictor import Prediction

BACKENDS = ("torch", "onnxruntime", "cuda", "tensorrt", "triton")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads a checkpoint bundle."""
    parser.add_argument("model", type=Path, help="checkpoint folder (HF save_pretrained) or artifact folder")
    parser.add_argument("--tokenizer", type=Path, help="HF tokenizer folder (tokenizer.json)")
    parser.add_argument("--vq", type=Path, help="Chameleon image tokenizer folder (vqgan.yaml, vqgan.ckpt)")
    parser.add_argument("--image", action="append", type=Path, default=[], help="image file, in prompt order")
    parser.add_argument("--stats", help="so100 | libero | path to stats.json (default: the robot's)")
    parser.add_argument(
        "--robot",
        choices=("so100", "libero"),
        help="the robot the checkpoint drives (default: the artifact's, or the checkpoint's action space)",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    add_server_arguments(parser)
    parser.add_argument("--image-size", type=int, choices=(256, 512), default=None, help="model resolution")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="load a vqgan.ckpt that is not plain weights"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_server_arguments(
    parser: argparse.ArgumentParser, timeout: float | None = 30.0, default_timeout: str = "30"
) -> None:
    """--server and --server-timeout (`timeout` None: the command derives it, as `default_timeout` says)."""
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="--backend triton: the Triton server's gRPC endpoint (http://HOST:PORT for HTTP); MODEL is "
        "then the artifact folder or the served model's name",
    )
    parser.add_argument(
        "--server-timeout",
        type=Number(float, 0, 3600, lo_open=True),
        default=timeout,
        metavar="SECONDS",
        help=f"--backend triton: a request that takes longer fails (default {default_timeout})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--state",
        type=NumberList(float),
        required=True,
        help="joint state, comma-separated, in training units",
    )
    parser.add_argument("--instruction", required=True, help="the task, exactly as in training")
    parser.add_argument("--mode", choices=("continuous", "discrete"), default="continuous")
    parser.add_argument(
        "--max-new-tokens", type=positive(int), default=None, help="discrete mode cap (default 300)"
    )
    parser.add_argument(
        "--truncate-instruction",
        action="store_true",
        help="cut an instruction too long for the model's positions (with a warning) instead of refusing it",
    )
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
        robot=args.robot,
        server=args.server,
        server_timeout=args.server_timeout,
    )


def load_images(paths: list[Path]):
    from rynn_edge.runtime.tokens.images import load_image

    if not paths:
        raise UserError("give at least one --image PATH (in prompt order)")
    return [load_image(p) for p in paths]


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.predictor import DISCRETE_MAX_NEW_TOKENS

    predictor = open_predictor(args, default_size=256)
    predictor.truncate_instruction = args.truncate_instruction
    result = predictor.predict(
        load_images(args.image),
        args.state,
        args.instruction,
        args.mode,
        max_new_tokens=args.max_new_tokens or DISCRETE_MAX_NEW_TOKENS,
        parallel=not args.sequential,
    )
    if args.json:
        print(json.dumps(to_json(result)))
        return 0
    print(f"prompt: {len(result.prompt_ids)} tokens; images: {len(result.vq_codes)}")
    key, rows = ("goals", result.goals) if result.goals is not None else ("actions", result.actions)
    print(f"{key} [{rows.shape[0]} x {rows.shape[1] if rows.ndim == 2 else 0}]:")
    for step, row in enumerate(rows):
        print(f"  {step:3d}  " + "  ".join(f"{v:9.3f}" for v in row))
    return 0


def to_json(result: Prediction) -> dict[str, Any]:
    """The `predict --json` contract: prompt_ids, vq_codes, mode, [generated_tokens,] actions_normalized,
    actions and, where the robot's actions are joint positions, goals."""
    out: dict[str, Any] = {
        "prompt_ids": result.prompt_ids,
        "vq_codes": result.vq_codes.tolist(),
        "mode": result.mode,
    }
    if result.generated_tokens is not None:
        out["generated_tokens"] = result.generated_tokens
    out["actions_normalized"] = result.actions_normalized.tolist()
    out["actions"] = result.actions.tolist()
    if result.goals is not None:
        out["goals"] = result.goals.tolist()
    return out
