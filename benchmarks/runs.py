"""Shared by bench_chunk_length.py and profile_layers.py: the model to run (a checkpoint, an artifact folder,
or a tiny random checkpoint made on the fly) and a recorded run in benchmarks/results/<name>/.

A recorded run is exactly the command's own output (bench.* or profile.*: machine, GPU, backend, precision,
weights, versions, load average) plus a `recorded` block: the script's command line and the checkpoint's
config (so roofline_jetson.py can predict the same model).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from rynn_edge.runtime.cli import main

RESULTS = Path(__file__).resolve().parent / "results"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="result folder: benchmarks/results/NAME/")
    parser.add_argument("--model", type=Path, help="checkpoint or artifact folder (default: a tiny one)")
    parser.add_argument("--tokenizer", type=Path, help="with a raw --model")
    parser.add_argument("--vq", type=Path, help="with a raw --model")
    parser.add_argument("--preset", default="so100", choices=("so100", "libero"), help="tiny checkpoint")
    parser.add_argument("--hidden-size", type=int, default=256, help="tiny checkpoint width (256)")
    parser.add_argument("--layers", type=int, default=2, help="tiny checkpoint decoder layers (2)")


def _shapes(config: dict) -> dict:
    """The config without its token maps (vocabulary_map is ~0.4 MB and says nothing about speed)."""
    return {k: v for k, v in config.items() if not isinstance(v, dict) or k == "rope_scaling"}


def _model(args: argparse.Namespace, scratch: Path) -> tuple[list[str], dict]:
    """Command-line model arguments and the checkpoint block of the record."""
    from rynn_edge.runtime.model.vqgan import read_params

    if args.model is None:
        tiny = ["--preset", args.preset, "--hidden-size", str(args.hidden_size), "--layers", str(args.layers)]
        assert main(["make-tiny-checkpoint", str(scratch), *tiny]) == 0
        folders = {k: scratch / k for k in ("model", "tokenizer", "vq")}
        source = "rynn-edge make-tiny-checkpoint DIR " + " ".join(tiny)
    else:
        folders = {"model": args.model, "tokenizer": args.tokenizer, "vq": args.vq}
        source = str(args.model)
    argv = [str(folders["model"])]
    for key in ("tokenizer", "vq"):
        argv += [f"--{key}", str(folders[key])] if folders[key] else []
    config = folders["model"] / "config.json"
    block = {
        "source": source,
        "config": _shapes(json.loads(config.read_text())) if config.is_file() else None,
        "vq": read_params(folders["vq"] / "vqgan.yaml") if folders["vq"] else None,
    }
    return argv, block


def record(command: str, args: argparse.Namespace, extra: list[str]) -> Path:
    """Run `rynn-edge COMMAND` into benchmarks/results/NAME/ and add the `recorded` block to its JSON."""
    out = RESULTS / args.name
    with tempfile.TemporaryDirectory(prefix="rynn-bench-") as scratch:
        argv, checkpoint = _model(args, Path(scratch))
        assert main([command, *argv, *extra, "--out", str(out)]) == 0
    path = out / f"{command}.json"
    result = json.loads(path.read_text())
    result["recorded"] = {
        "script": "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "checkpoint": checkpoint,
    }
    for kind, file in result.pop("files").items():  # machine-independent paths in the committed record
        result.setdefault("files", {})[kind] = Path(file).name
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def cli(command: str, doc: str | None, defaults: list[str]) -> None:
    """The script's own options (model, NAME); every other option goes to `rynn-edge COMMAND` after
    `defaults` (a later option wins)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    args, extra = parser.parse_known_args()
    print(record(command, args, defaults + extra))
