"""The flags `bench` and `profile` share."""

from __future__ import annotations

import argparse
from pathlib import Path

from rynn_edge.runtime.argtypes import output_folder, positive, torch_device
from rynn_edge.runtime.errors import UserError


def add_common_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """MODEL_OR_ARTIFACTS, --tokenizer, --vq, --device, --threads, --out, --no-plot, --json."""
    parser.add_argument(
        "model", type=Path, metavar="MODEL_OR_ARTIFACTS", help="checkpoint or artifact folder"
    )
    parser.add_argument("--tokenizer", type=Path, help="HF tokenizer folder (raw checkpoints)")
    parser.add_argument("--vq", type=Path, help="VQGAN folder (raw checkpoints)")
    parser.add_argument(
        "--device", type=torch_device, default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)"
    )
    parser.add_argument(
        "--threads", type=positive(int), default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--out", type=output_folder, default=Path(out), help="folder for CSV/JSON/PNG")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def check_device(device: str) -> None:
    """Before any model is loaded: --device names a device this machine's torch can use."""
    import torch

    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {device}: no CUDA device is usable here (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'no'}); use --device cpu"
        )
    count = torch.cuda.device_count()
    if (torch.device(device).index or 0) >= count:
        raise UserError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
