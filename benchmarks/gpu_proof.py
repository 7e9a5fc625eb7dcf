"""GPU proof of `--backend cuda` (issue 14): correctness against the fp32 torch reference, CUDA-graph
replay against eager execution, parallel against sequential discrete decoding, and peak memory.

    python benchmarks/gpu_proof.py --work /tmp/proof --out $OUT           # on a lent H100/H200 or a Jetson
    python benchmarks/gpu_proof.py --work /tmp/proof --out /tmp/o --device cpu --cases tiny   # logic only

Cases: `tiny` (make-tiny-checkpoint defaults) and `wide` (hidden 4096, 2 layers: full-width matmuls).
Checks, each a row of `gpu_proof.json` with its numbers and a verdict:
- prompt ids and VQ codes identical to the reference (the VQ quantizer runs in fp32 on both);
- continuous actions within the bf16 tolerance: max |cuda - fp32| <= max(2 x max |torch-bf16 - fp32|,
  0.01), i.e. no worse than twice what another bf16 implementation of the same network (torch's own, on
  the CPU) deviates from fp32 on the same query;
- discrete tokens: the cuda step model, teacher-forced along the reference's greedy tokens, picks the
  same argmax at every step whose reference top-1 margin exceeds the bf16 logit noise (measured as the
  max |cuda - fp32| logit difference at that step), over the whole logits row;
- CUDA-graph replay equals the eager run of the same shapes for every length bucket and decode capacity
  exercised, bit for bit; a replay allocates nothing (allocator counters) and never synchronises with
  the host (`torch.cuda.set_sync_debug_mode("error")` around `graph.replay()`);
- parallel discrete decoding equals sequential on the tests' crafted weights, on the device;
- peak GPU memory of load, of one continuous chunk and of one discrete chunk, against the weights' size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.cuda import CudaBackend
from rynn_edge.runtime.backends.torch import TorchBackend
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.model.vqgan import VQGAN
from rynn_edge.runtime.predictor import Predictor
from rynn_edge.runtime.tiny.bundle import write_tiny_bundle
from rynn_edge.runtime.tokens import vocab as V

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from crafted import IMG, A, blocks, craft  # noqa: E402  (the tests' crafted weights, one definition)

CASES = {"tiny": {}, "wide": {"hidden_size": 4096, "layers": 2, "intermediate_size": 11008}}
STATE = np.array([3.5, 120.0, 80.0, -10.0, 5.0, 30.0])
INSTRUCTION = "Place the block inside the circle."
DISCRETE_BUDGET = 48


def frames(seed: int = 0) -> list[np.ndarray]:
    """Two deterministic 256x256 views with structure (gradients + blocks), so VQ codes are not flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256]
    views = []
    for k in range(2):
        img = np.stack([(x + 40 * k) % 256, (y * 2) % 256, (x + y) // 2 % 256], -1).astype(np.uint8)
        for _ in range(6):
            r, c = rng.integers(0, 200, 2)
            img[r : r + 48, c : c + 48] = rng.integers(0, 255, 3)
        views.append(img)
    return views


def row(name: str, passed: bool, **numbers: object) -> dict:
    print(f"{'PASS' if passed else 'FAIL'}  {name}  " + " ".join(f"{k}={v}" for k, v in numbers.items()))
    return {"check": name, "passed": bool(passed), **numbers}


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def teacher_forced(model, ids: list[int], tokens: list[int]) -> list[np.ndarray]:
    """Logits of `model` before each of `tokens`, fed the reference's tokens under the action mask."""
    sequence, capacity = list(ids), len(ids) + len(tokens)
    out = [model.begin(sequence, capacity)]
    mask = np.zeros(capacity, dtype=bool)
    for token in tokens[:-1]:
        sequence.append(token)
        position = len(sequence) - 1
        mask[: position + 1] = decoding.action_mask_row(sequence)
        out.append(model.step(token, position, mask))
    return out


def discrete_check(case: str, reference: TorchBackend, fast: CudaBackend, ids: list[int]) -> dict:
    tokens = decoding.greedy_actions(reference.step_model(), ids, DISCRETE_BUDGET)
    want = teacher_forced(reference.step_model(), ids, tokens)
    got = teacher_forced(fast.step_model(), ids, tokens)
    decided = agree = 0
    for w, g in zip(want, got, strict=True):
        top2 = np.sort(w)[-2:]
        if top2[1] - top2[0] > max_abs(w, g):  # the reference's choice is clear of the bf16 noise here
            decided += 1
            agree += int(np.argmax(g) == np.argmax(w))
    return row(f"{case}: discrete tokens where the margin exceeds bf16 noise", decided == agree,
               steps=len(tokens), decided=decided, agree=agree)  # fmt: skip


def graph_checks(case: str, fast: CudaBackend, ids: list[int]) -> list[dict]:
    """Every graphed shape against the same backend's eager functions; a replay neither allocates nor
    synchronises."""
    rows = []
    for n in (len(ids) - 200, len(ids), len(ids) + 150):  # three length buckets around the real prompt
        prompt = (ids * 2)[:n]
        graphed = fast.actions(prompt)
        padded = fast.padded(prompt)
        with torch.inference_mode():
            eager = fast._actions(*padded).float().cpu().numpy()
        rows.append(row(f"{case}: actions graph == eager, prompt {n}", np.array_equal(graphed, eager),
                        max_abs=max_abs(graphed, eager)))  # fmt: skip
    for capacity in (len(ids) + 1, len(ids) + 300):  # two decode-cache buckets
        model = fast.step_model()
        first = model.begin(ids, capacity)
        mask = np.zeros(len(ids) + 1, dtype=bool)
        mask[:] = True
        step = model.step(ids[-1], len(ids), mask)
        decoder = model.decoder
        with torch.inference_mode():
            full = np.zeros((1, decoder.capacity + 1), dtype=bool)
            full[0, : len(ids) + 1] = True
            where = torch.tensor([len(ids)], device=fast.device)
            eager = fast.backbone.decode_tokens(
                torch.tensor([[ids[-1]]], device=fast.device), where[None], decoder.cache, where,
                torch.from_numpy(full).to(fast.device),
            ).float().cpu().numpy()[0]  # fmt: skip
        same = np.array_equal(step, eager)
        rows.append(row(f"{case}: decode graph == eager, capacity {decoder.capacity}", same,
                        max_abs=max_abs(step, eager), finite=bool(np.isfinite(first).all())))  # fmt: skip
    if fast.device.type == "cuda":
        graph = next(g for g in fast._graphs.values() if g.graph is not None)
        torch.cuda.synchronize()
        before = torch.cuda.memory_stats()["allocation.all.allocated"]
        torch.cuda.set_sync_debug_mode("error")
        try:
            graph.graph.replay()
            synced = False
        except RuntimeError:
            synced = True
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        allocated = torch.cuda.memory_stats()["allocation.all.allocated"] - before
        rows.append(row(f"{case}: a replay allocates nothing and never syncs", allocated == 0 and not synced,
                        allocations=allocated, host_sync=synced))  # fmt: skip
    return rows


def parallel_check(bundle: Path, device: torch.device) -> dict:
    cfg, backbone, head = load_model(bundle / "model")
    craft(backbone, blocks(V.ACTION_START_ID, V.ACTION_START_ID))
    fast = CudaBackend(cfg, backbone, head, VQGAN.from_dir(bundle / "vq"), device=device, dtype=torch.float32)
    rng = np.random.default_rng(3)
    prompt = [0, *rng.integers(16200, 16300, 12).tolist(), *IMG, *IMG, V.TURN_SEP_ID]
    horizon, budget = 4, 4 * (A + 2)
    sequential = decoding.greedy_actions(fast.step_model(), prompt, budget)
    parallel = decoding.greedy_actions_parallel(fast.step_model(), prompt, horizon, A, budget)
    return row("crafted: parallel blocks == sequential greedy on the device", parallel == sequential,
               tokens=len(sequential))  # fmt: skip


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def run_case(case: str, work: Path, device: torch.device) -> tuple[list[dict], dict]:
    bundle = work / case
    if not (bundle / "model" / "config.json").exists():
        write_tiny_bundle(bundle, "so100", **CASES[case])
    views = frames()
    reference = Predictor.open(
        TorchBackend(bundle / "model", bundle / "vq"), bundle / "tokenizer", bundle / "vq"
    )
    bf16 = TorchBackend(bundle / "model", bundle / "vq", dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg, backbone, head = load_model(bundle / "model", dtype=torch.bfloat16, device=device)
    fast_backend = CudaBackend(cfg, backbone, head, VQGAN.from_dir(bundle / "vq"), device=device)
    weights_gb = sum(p.numel() * p.element_size() for p in fast_backend.backbone.parameters()) / 1e9
    memory = {"weights_gb": weights_gb, "load_peak_gb": peak_gb(device)}
    fast = Predictor.open(fast_backend, bundle / "tokenizer", bundle / "vq")
    want = reference.predict(views, STATE, INSTRUCTION)
    got = fast.predict(views, STATE, INSTRUCTION)
    memory["continuous_chunk_peak_gb"] = peak_gb(device)
    ids = want.prompt_ids
    noise = max_abs(bf16.actions(ids), want.actions_normalized)
    err = max_abs(got.actions_normalized, want.actions_normalized)
    tolerance = max(2 * noise, 0.01)
    rows = [
        row(f"{case}: prompt ids identical", got.prompt_ids == ids, tokens=len(ids)),
        row(
            f"{case}: VQ codes identical",
            np.array_equal(got.vq_codes, want.vq_codes),
            agree_pct=round(100 * float((got.vq_codes == want.vq_codes).mean()), 3),
        ),  # fmt: skip
        row(
            f"{case}: actions within bf16 tolerance",
            err <= tolerance,
            max_abs=round(err, 5),
            tolerance=round(tolerance, 5),
            torch_bf16_vs_fp32=round(noise, 5),
        ),  # fmt: skip
        discrete_check(case, reference.backend, fast_backend, ids),
    ]
    memory["discrete_chunk_peak_gb"] = peak_gb(device)
    rows += graph_checks(case, fast_backend, ids)
    if case == "tiny":
        rows.append(parallel_check(bundle, device))
    return rows, memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the generated checkpoints")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_proof.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", default="tiny,wide", help="comma-separated: tiny, wide")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 parts (VQ distances) stay fp32
    rows, memory = [], {}
    for case in args.cases.split(","):
        start = time.monotonic()
        case_rows, memory[case] = run_case(case, args.work, device)
        rows += case_rows
        print(f"-- {case} done in {time.monotonic() - start:.0f} s; memory {memory[case]}", flush=True)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "precision": "bf16 weights, fp32 VQ encoder and quantizer",
        "weights": "random weights (make-tiny-checkpoint)",
        "checks": rows,
        "memory": memory,
        "passed": all(r["passed"] for r in rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_proof.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{sum(r['passed'] for r in rows)}/{len(rows)} checks passed")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
