"""`rynn-edge vq`: encode an image to VQ codes, or decode codes (or image tokens) to a PNG.

    rynn-edge vq encode --vq DIR IMAGE [--size 256|512] [--json] [--trust-pickle]
    rynn-edge vq decode --vq DIR CODES.json -o OUT.png [--trust-pickle]

CODES.json is {"codes": [...], "grid": [h, w]} (what `encode --json` prints), a nested [h][w] list
of codes, or a flat list of image token ids laid out as the model writes them:
8197, size, size, then each latent row of ids followed by 8803, then 8196.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rynn_edge.runtime.argtypes import output_image

if TYPE_CHECKING:
    import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vq_command", metavar="ACTION", required=True)
    enc = sub.add_parser("encode", help="image -> VQ codes")
    enc.add_argument("image", type=Path, help="image file (any mode Pillow reads; resized to SIZE x SIZE)")
    enc.add_argument(
        "--size", type=int, choices=(256, 512), default=256, help="model input side (default 256)"
    )
    enc.add_argument("--json", action="store_true", help='print {"codes", "grid", "size"} as JSON')
    dec = sub.add_parser("decode", help="VQ codes or image tokens -> PNG")
    dec.add_argument("codes", type=Path, help="JSON file: code grid or image token list")
    dec.add_argument("-o", "--output", type=output_image, required=True, help="output image (PNG)")
    for action in (enc, dec):
        action.add_argument("--vq", type=Path, required=True, help="folder with vqgan.yaml and vqgan.ckpt")
        action.add_argument(
            "--trust-pickle",
            action="store_true",
            help="load a vqgan.ckpt that is not plain weights with full unpickling (only for trusted files)",
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from rynn_edge.runtime.model.vqgan import VQGAN

    model = VQGAN.from_dir(args.vq, trust_pickle=args.trust_pickle)
    with torch.no_grad():
        if args.vq_command == "encode":
            return _encode(model, args)
        return _decode(model, args)


def _encode(model: Any, args: argparse.Namespace) -> int:
    from rynn_edge.runtime.tokens.images import load_image, to_model_input

    codes = model.encode(to_model_input([load_image(args.image)], args.size))[0].tolist()
    side = args.size // model.downsample_factor
    if args.json:
        print(json.dumps({"codes": codes, "grid": [side, side], "size": args.size}))
    else:
        print(f"# {args.image}: {side}x{side} codes at {args.size}px, raster order")
        for row in range(side):
            print(" ".join(f"{c:4d}" for c in codes[row * side : (row + 1) * side]))
    return 0


def _decode(model: Any, args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from rynn_edge.runtime.errors import UserError

    try:
        data = json.loads(args.codes.read_text())
    except FileNotFoundError:
        raise UserError(f"{args.codes}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{args.codes}: not valid JSON ({err})") from None
    grid = _code_grid(data, args.vq, source=str(args.codes))
    bad = (grid < 0) | (grid >= model.n_embed)
    if bad.any():
        raise UserError(f"{args.codes}: code {int(grid[bad][0])} is outside 0..{model.n_embed - 1}")
    pixels = model.decode(torch.from_numpy(grid)[None])[0].numpy()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(args.output)
    print(f"wrote {args.output} ({pixels.shape[1]}x{pixels.shape[0]})")
    return 0


def _code_grid(data: Any, vq_dir: Path, *, source: str) -> np.ndarray:
    """[h, w] int64 codes from any of the accepted JSON layouts."""

    from rynn_edge.runtime.errors import UserError
    from rynn_edge.runtime.tokens.image_layout import codes_from_image_tokens
    from rynn_edge.runtime.tokens.vocab import ImageVocab

    if isinstance(data, dict) and "codes" in data and "grid" in data:
        codes = _int_array(data["codes"], source)
        h, w = (int(v) for v in data["grid"])
        if codes.size != h * w:
            raise UserError(f"{source}: {codes.size} codes do not fill grid {h}x{w}")
        return codes.reshape(h, w)
    if isinstance(data, list) and data and all(isinstance(row, list) for row in data):
        codes = _int_array(data, source)
        if codes.ndim != 2:
            raise UserError(f"{source}: a nested code list must be [rows][columns] of equal length")
        return codes
    if isinstance(data, list) and data:
        vocab = ImageVocab.from_file(vq_dir / "text_tokenizer.json")
        return codes_from_image_tokens(_int_array(data, source), vocab, source)
    raise UserError(
        f'{source}: expected {{"codes": [...], "grid": [h, w]}}, a nested [h][w] code list, '
        "or a flat list of image token ids"
    )


def _int_array(values: Any, source: str) -> np.ndarray:
    import numpy as np

    from rynn_edge.runtime.errors import UserError

    try:
        array = np.asarray(values)
    except ValueError:
        raise UserError(f"{source}: ragged lists (rows of different lengths)") from None
    if array.dtype.kind not in "iu":
        raise UserError(f"{source}: expected integers, got {array.dtype} values")
    return array.astype(np.int64)
