"""The GPU inference table in one run: roofline floor, our continuous chunk, an upstream-style baseline,
sequential vs parallel discrete decoding. Random weights, built from a ModelConfig (no checkpoint file).

    python benchmarks/gpu_inference.py --config 7b                 # on a lent H100/H200 or a Jetson
    python benchmarks/gpu_inference.py --config tiny --device cpu  # the same logic on CPU (no graphs)

Writes benchmarks/results/gpu_inference_<device>_<config>.{csv,json}. Rows:
- floor: FLOPs of one chunk (counted with torch's FlopCounterMode on the real modules) / measured matmul
  rate, and bytes of weights read once / measured copy bandwidth; the floor is the larger (both shown).
- ours: `CudaBackend.chunk` (VQ encode of both views -> token splice -> prefill -> action head), one CUDA
  graph, padded to a length bucket; also its stages alone.
- upstream: a straightforward reimplementation of the reference path: per-image fp32 VQ encode with a
  host round trip, HF-style generate of 2 tokens after an appended 10004 (full-sequence fp32 logits,
  hidden states of every layer kept, the action mask rebuilt in Python every step, a concatenating KV
  cache), then the head on the prompt's final hidden states. Same weights, same run.
- discrete: T=20 blocks, decode-step wall time (the prefill is timed separately): sequential greedy under
  the action mask (T*(A+2) single-token steps) vs parallel blocks (A+2 steps of T tokens). Random weights
  do not emit well-formed blocks, so the parallel row times exactly the batched steps the parallel path
  runs when they do (`decoding._decode_blocks`); identity of the tokens is proven by the tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.cuda import DTYPES, CudaBackend
from rynn_edge.runtime.model.action_head import ActionHead
from rynn_edge.runtime.model.backbone import ChameleonBackbone
from rynn_edge.runtime.model.config import ModelConfig
from rynn_edge.runtime.model.vqgan import VQGAN
from rynn_edge.runtime.tiny.vq import TINY_PARAMS
from rynn_edge.runtime.tokens import vocab as V
from rynn_edge.runtime.tokens.image_layout import ImageLayout

RESULTS = Path(__file__).parent / "results"
CHAMELEON_VQ = {
    "embed_dim": 256,
    "n_embed": 8192,
    "ddconfig": {**TINY_PARAMS["ddconfig"], "z_channels": 256, "ch": 128, "num_res_blocks": 2},
}
CONFIGS = {  # hidden, layers, intermediate, head width, VQ
    "tiny": (256, 2, 512, 256, TINY_PARAMS),
    "mid": (1024, 8, 2816, 512, TINY_PARAMS),
    "7b": (4096, 32, 11008, 1024, CHAMELEON_VQ),
}
T, A, TEXT_TOKENS = 20, 6, 20  # SO100


def build(name: str, device: torch.device, dtype: torch.dtype, vq_dtype: torch.dtype) -> CudaBackend:
    hidden, layers, inter, width, vq = CONFIGS[name]
    cfg = ModelConfig(65536, hidden, inter, layers, hidden // 128, hidden // 128, 1e-5, 10000.0, A, T)
    torch.manual_seed(0)
    with device:
        backbone = ChameleonBackbone(cfg).to(dtype)
        head = ActionHead(hidden, width, T, A).to(dtype)
        vqgan = VQGAN(**vq)
        for p in head.parameters():
            if p.dim() == 1:
                torch.nn.init.normal_(p, std=0.02)  # the head's packed in_proj is left uninitialised
            else:
                torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
    return CudaBackend(cfg, backbone, head, vqgan, device=device, dtype=dtype, vq_dtype=vq_dtype)


def so100_prompt(grid: int = 16) -> list[int]:
    rng = np.random.default_rng(0)
    image = [V.IMAGE_START_ID, 8812, 8812, *([*rng.integers(4, 8196, grid).tolist(), V.ROW_END_ID] * grid)]
    state = [V.STATE_START_ID, *rng.integers(15506, 15762, A).tolist(), V.STATE_END_ID]
    text = rng.integers(16200, 20000, TEXT_TOKENS).tolist()
    return [0, *text, *state, *image, V.IMAGE_END_ID, *image, V.IMAGE_END_ID, V.TURN_SEP_ID]


def timed(fn, device: torch.device, runs: int) -> float:
    """Median wall seconds of fn() over `runs` calls after 2 warm-ups, synchronised on CUDA."""
    samples = []
    for i in range(runs + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def machine_rates(device: torch.device, dtype: torch.dtype, runs: int) -> tuple[float, float]:
    """(matmul FLOP/s in `dtype`, copy bytes/s) measured on this device."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    rate = 2 * n**3 / timed(lambda: a @ b, device, runs)
    elems = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(elems, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), device, runs)
    return rate, bandwidth


def weight_bytes(backend: CudaBackend) -> int:
    """Bytes a chunk must read once: backbone linears and norms (not the lm_head, one embedding row per
    token), the head, the VQ encoder, quant_conv and codebook."""
    modules = [*backend.backbone.layers, backend.backbone.norm, backend.head, backend.vq_encoder]
    modules += [backend.vqgan.quant_conv, backend.vqgan.quantize]
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def chunk_flops(backend: CudaBackend, pixels: torch.Tensor, ids: list[int]) -> int:
    n = len(ids)
    dev = backend.device
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backend._codes(pixels)
        t = torch.tensor([ids], device=dev)
        backend._actions(t, torch.arange(n, device=dev)[None], torch.ones_like(t, dtype=torch.bool))
    return counter.get_total_flops()


def hf_forward(bb: ChameleonBackbone, ids: torch.Tensor, start: int, mask: torch.Tensor, past: list | None):
    """One HF-style forward: every layer's hidden state kept, fp32 logits of every position, cat cache."""
    x = bb.embed_tokens(ids)
    cos, sin = bb._rope(torch.arange(start, start + ids.shape[1], device=ids.device)[None], x.dtype)
    hiddens, present = [x], []
    for i, layer in enumerate(bb.layers):
        q, k, v = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)
        if past is not None:
            k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
        present.append((k, v))
        x = x + layer.self_attn.out(q, k, v, mask[None, None])
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        hiddens.append(x)
    hiddens[-1] = bb.norm(x)
    return bb.lm_head(hiddens[-1]).float(), hiddens, present


@torch.inference_mode()
def upstream_chunk(
    backend: CudaBackend, pixels: torch.Tensor, prompt: list[int], slots: np.ndarray
) -> np.ndarray:
    dev, bb = backend.device, backend.backbone
    seq = list(prompt)
    codes = [backend.vqgan.encode(pixels[i : i + 1].float()).cpu() for i in range(pixels.shape[0])]
    ids = np.asarray(seq)
    ids[slots] = torch.cat(codes).reshape(-1).numpy() + 4  # host-side code -> token (a stand-in table)
    seq = [*ids.tolist(), V.ACTION_START_ID]
    past, finals, start = None, [], 0
    for _ in range(2):  # max_new_tokens=2, as the SO100 reference
        row = torch.from_numpy(decoding.action_mask_row(seq)).to(dev)  # rebuilt in Python every step
        new = seq[start:]
        q_idx = torch.arange(start, len(seq), device=dev)[:, None]
        mask = (torch.arange(len(seq), device=dev)[None] <= q_idx) & row[None]
        logits, hiddens, past = hf_forward(bb, torch.tensor([new], device=dev), start, mask, past)
        finals.append(hiddens[-1])
        start = len(seq)
        seq.append(int(logits[0, -1].argmax()))
    hidden = torch.cat(finals, dim=1)[:, : len(prompt)]
    valid = torch.ones(hidden.shape[:2], dtype=torch.bool, device=dev)
    return backend.head(hidden, valid)[0].float().cpu().numpy()


def discrete_rows(backend: CudaBackend, prompt: list[int], runs: int) -> dict[str, float]:
    budget = T * (A + 2)
    capacity = len(prompt) + budget
    model = backend.step_model()
    row = decoding.action_mask_row([*prompt, V.ACTION_START_ID])[:-1]
    begin = timed(lambda: model.begin(prompt, capacity), backend.device, runs)
    sequential = timed(lambda: decoding.greedy_actions(model, prompt, budget), backend.device, runs)

    def parallel() -> None:
        model.begin(prompt, capacity)
        decoding._decode_blocks(model, 0, T, row, A, capacity)

    steps = len(decoding.greedy_actions(model, prompt, budget)) - 1
    return {
        "prefill_with_kv_ms": begin * 1e3,
        "sequential_decode_ms": (sequential - begin) * 1e3,
        "sequential_steps": steps,
        "parallel_decode_ms": (timed(parallel, backend.device, runs) - begin) * 1e3,
        "parallel_steps": A + 2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--vq-dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 (VQ distances)
    backend = build(args.config, device, dtype, DTYPES[args.vq_dtype])
    prompt = so100_prompt()
    slots = ImageLayout(16, 16).code_positions(prompt)
    pixels = torch.rand(2, 3, 256, 256, device=device) * 2 - 1
    host_pixels = pixels.cpu().numpy()
    lut = np.arange(4, 4 + 8192)
    template = np.asarray(prompt)
    rate, bandwidth = machine_rates(device, dtype, max(5, args.runs // 2))
    flops, nbytes = chunk_flops(backend, pixels, prompt), weight_bytes(backend)
    r = {
        "matmul_tflops": rate / 1e12,
        "bandwidth_gbs": bandwidth / 1e9,
        "chunk_gflop": flops / 1e9,
        "weights_gb": nbytes / 1e9,
        "floor_compute_ms": flops / rate * 1e3,
        "floor_memory_ms": nbytes / bandwidth * 1e3,
    }
    r["floor_ms"] = max(r["floor_compute_ms"], r["floor_memory_ms"])
    with torch.inference_mode():
        ours = timed(lambda: backend.chunk(host_pixels, template.tolist(), slots, lut)[1], device, args.runs)
        r["ours_chunk_ms"] = ours * 1e3
        r["ours_vq_encode_ms"] = timed(lambda: backend.vq_encode(host_pixels), device, args.runs) * 1e3
        r["ours_prefill_head_ms"] = timed(lambda: backend.actions(prompt), device, args.runs) * 1e3
    r["upstream_chunk_ms"] = (
        timed(lambda: upstream_chunk(backend, pixels, prompt, slots), device, args.runs) * 1e3
    )
    r.update(discrete_rows(backend, prompt, max(3, args.runs // 4)))
    r["speedup_vs_upstream"] = r["upstream_chunk_ms"] / r["ours_chunk_ms"]
    r["ours_over_floor"] = r["ours_chunk_ms"] / r["floor_ms"]
    r["parallel_decode_speedup"] = r["sequential_decode_ms"] / r["parallel_decode_ms"]
    meta = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.machine()} ({torch.get_num_threads()} threads)",
        "backend": "cuda (torch, static shapes, CUDA graphs)"
        if device.type == "cuda"
        else "cuda backend on CPU (eager, no graphs)",
        "precision": f"{dtype} weights, VQ encoder {args.vq_dtype}, quantizer fp32".replace("torch.", ""),
        "weights": "random weights",
        "config": args.config,
        "prompt_tokens": len(prompt),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "threads": torch.get_num_threads(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"gpu_inference_{device.type}_{args.config}"
    (args.out / f"{tag}.json").write_text(json.dumps({**meta, "results": r}, indent=2) + "\n")
    with (args.out / f"{tag}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value", *meta])
        for key, value in r.items():
            writer.writerow(
                [key, f"{value:.4g}", *(json.dumps(v) if isinstance(v, dict) else v for v in meta.values())]
            )
    for key, value in r.items():
        print(f"{key:28s} {value:10.4g}")
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
