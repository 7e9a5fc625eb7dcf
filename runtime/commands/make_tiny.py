"""`rynn-edge make-tiny-checkpoint`: a small random bundle in the exact upstream on-disk layout.

OUT/model (HF save_pretrained folder, bf16 safetensors), OUT/tokenizer (HF tokenizer folder) and
OUT/vq (vqgan.yaml, vqgan.ckpt, text_tokenizer.json). Tests and the demo use it; real
checkpoints are read by the same loader.
"""

from __future__ import annotations

import argparse
import json

from rynn_edge.runtime.argtypes import Number, non_negative, output_folder, positive

STRESS = ("channels", "heads")  # tiny.model.STRESS
PRESETS = ("so100", "libero")  # tiny.model.PRESETS, spelled here so --help imports no torch
HEAD_DIM = 128  # tiny.model.HEAD_DIM: the width is a whole number of heads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", type=output_folder, help="output folder (model/, tokenizer/, vq/ are created in it)"
    )
    parser.add_argument("--preset", choices=PRESETS, default="so100", help="action/state layout")
    parser.add_argument(
        "--hidden-size",
        type=Number(int, HEAD_DIM, 8192, multiple_of=HEAD_DIM),
        default=256,
        help="LLM width (default 256; the upstream code itself only loads 4096, its head hard-codes it)",
    )
    parser.add_argument("--layers", type=Number(int, 1, 64), default=2, help="decoder layers (default 2)")
    parser.add_argument(
        "--intermediate-size", type=positive(int), default=None, help="MLP width (default 2x hidden)"
    )
    parser.add_argument(
        "--time-horizon", type=Number(int, 1, 1000), default=None, help="override T (so100: 20, libero: 5)"
    )
    parser.add_argument(
        "--shard-mb", type=positive(float), default=None, help="shard safetensors at this size (MB)"
    )
    parser.add_argument("--seed", type=non_negative(int), default=0, help="random seed (default 0)")
    parser.add_argument(
        "--outliers",
        nargs="?",
        const="channels",
        default=None,
        choices=STRESS,
        help="plant LLM-like outliers, a stress checkpoint for quantization and fp16. channels (the default "
        "when the flag is given alone): 20x residual channels, massive BOS/delimiter activations, a late "
        "FFN that overflows fp16; heads: attention-sink heads on image-start/row-end tokens, outlier "
        "channels that differ by layer, near-tied discrete action logits",
    )
    parser.add_argument("--json", action="store_true", help="print the written paths as JSON")


def run(args: argparse.Namespace) -> int:
    from rynn_edge.runtime.tiny.bundle import write_tiny_bundle

    paths = write_tiny_bundle(
        args.out,
        args.preset,
        hidden_size=args.hidden_size,
        layers=args.layers,
        intermediate_size=args.intermediate_size,
        time_horizon=args.time_horizon,
        shard_bytes=int(args.shard_mb * 2**20) if args.shard_mb else None,
        seed=args.seed,
        outliers=args.outliers or False,
    )
    if args.json:
        print(json.dumps({name: str(path) for name, path in paths.items()}))
    else:
        for name, path in paths.items():
            print(f"{name:9s} {path}")
    return 0
