"""Peak resident memory of `load_model` vs the size of the weights it produces.

Writes a random checkpoint with the real widths (hidden 4096, intermediate 11008, vocab 65536) and a
few layers into a temp dir, then loads it in a fresh process per dtype and prints peak RSS
(getrusage ru_maxrss) next to the bytes of the loaded parameters and the process's RSS before loading.

    python benchmarks/load_memory.py [--layers 2] [--shard-gb 0.5]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def load_child(model_dir: str, dtype_name: str) -> None:
    import torch

    from rynn_edge.runtime.model.checkpoint import load_model

    before = peak_rss_bytes()
    t0 = time.perf_counter()
    _, backbone, head = load_model(model_dir, dtype=getattr(torch, dtype_name))
    seconds = time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for m in (backbone, head) for p in m.parameters())
    peak = peak_rss_bytes()
    print(
        f"{dtype_name:9s} weights {weights / GB:6.2f} GB | RSS before load {before / GB:5.2f} GB | "
        f"peak RSS {peak / GB:6.2f} GB | peak - before {(peak - before) / GB:6.2f} GB "
        f"= {(peak - before) / weights:4.2f} x weights | {seconds:5.1f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--shard-gb", type=float, default=0.5, help="shard size; 0 = one model.safetensors")
    ap.add_argument("--load", nargs=2, metavar=("MODEL_DIR", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--write", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        load_child(*args.load)
        return
    if args.write:
        from rynn_edge.runtime.tiny.model import write_tiny_model

        shard = int(args.shard_gb * GB) if args.shard_gb > 0 else None
        write_tiny_model(
            args.write,
            "so100",
            hidden_size=4096,
            num_layers=args.layers,
            intermediate_size=11008,
            vocabulary_map=None,
            max_shard_bytes=shard,
        )
        return

    # Each step in its own process: a forked child inherits its parent's RSS high-water mark.
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, __file__, "--layers", str(args.layers), "--shard-gb", str(args.shard_gb)]
        subprocess.run([*base, "--write", tmp], check=True)
        d = Path(tmp)
        on_disk = sum(f.stat().st_size for f in d.glob("*.safetensors"))
        print(
            f"checkpoint: {args.layers} layers, hidden 4096, {on_disk / GB:.2f} GB bf16 on disk, "
            f"{len(list(d.glob('*.safetensors')))} file(s)"
        )
        for dtype in ("bfloat16", "float32"):
            subprocess.run([*base, "--load", tmp, dtype], check=True)


if __name__ == "__main__":
    main()
