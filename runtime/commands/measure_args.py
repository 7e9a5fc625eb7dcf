"""The flags `bench` and `profile` share."""

from __future__ import annotations

import argparse
from pathlib import Path

from rynn_edge.runtime.argtypes import output_folder, positive


def add_common_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """MODEL_OR_ARTIFACTS, --tokenizer, --vq, --device, --threads, --out, --no-plot, --json."""
    parser.add_argument(
        "model", type=Path, metavar="MODEL_OR_ARTIFACTS", help="checkpoint or artifact folder"
    )
    parser.add_argument("--tokenizer", type=Path, help="HF tokenizer folder (raw checkpoints)")
    parser.add_argument("--vq", type=Path, help="VQGAN folder (raw checkpoints)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    parser.add_argument(
        "--threads", type=positive(int), default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--out", type=output_folder, default=Path(out), help="folder for CSV/JSON/PNG")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
