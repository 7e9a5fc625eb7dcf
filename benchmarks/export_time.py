"""Time of the quantized export's search phases against depth, today's code and the previous one in one run.

On random checkpoints at a reduced width (`make-tiny-checkpoint --hidden-size H --intermediate-size I
--layers N`, rotated as outlier-safe does), N = 2, 4, 8, 12, 16 by default, with calibration prompts of a
fixed length, each phase is timed in this process:
  calibration   one fp32 pass recording the calibration statistics and the residual stream
  choose        per linear the smoothing exponent and GPTQ rounding (search.choose)
  cost (new)    search.end_to_end_costs: a one-layer screen per linear, then CANDIDATES linears
                from their layer to the end
  cost (old)    the previous code's measure: every linear simulated alone in a whole-backbone pass
                (`full_forward_costs`, kept here as the baseline and as the test oracle)
  gate attempt  one simulated gate (every linear simulated, one prefill per held-out prompt); the
                fallback's bisection runs ~log2(budget) + 2 of them
new = calibration + choose + cost (new) + attempts x gate attempt; old = calibration + choose + cost (old)
(the old fallback also re-exported and re-measured the ONNX graphs per attempt: not counted).
The totals are fitted as a + b N + c N^2 (least squares, standard errors, c significant when its t
exceeds Student's 95% value) and extrapolated to 32 layers; the new total with its gate by parts
(search + the bisection's attempt count x one attempt's fitted time).
Per-op rates measured at the 7B's width (one decoder layer's forward per token, `choose` of one linear
per shape and scheme) give the 7B's search time per precision.

    python benchmarks/export_time.py                 # writes benchmarks/results/export_time/
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from runs import RESULTS

from rynn_edge.export import quantize, rotation, search
from rynn_edge.runtime.bench.timing import environment, write_csv, write_json
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.tiny.bundle import write_tiny_bundle

OUT = RESULTS / "export_time"
FULL = {"hidden": 4096, "intermediate": 11008, "layers": 32, "heads": 32}
SCHEMES = ("int8", "fp8", "int4")
# Student's t, two-sided 95%, for 1..10 degrees of freedom (5 depths and 3 coefficients leave 2)
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def full_forward_costs(
    backbone: torch.nn.Module, plans: dict[str, quantize.Plan], run_prompts: Callable[[], list[torch.Tensor]]
) -> dict[str, tuple[float, float]]:
    """The previous search's end-to-end measure: per linear, (worst, mean) final hidden cosine of a
    whole-backbone pass over the prompts with only that linear simulated quantized."""
    reference = run_prompts()
    linears = quantize.backbone_linears(backbone)
    costs = {}
    for name, plan in plans.items():
        with quantize.simulated({linears[name]: plan}):
            costs[name] = search.hidden_cosines(run_prompts(), reference)
    return costs


def prompts(count: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """Token ids in the prompt's shape: BOS, text, an image block of codes, the end-of-image tokens."""
    g = torch.Generator().manual_seed(seed)
    text = 24
    return [
        torch.tensor([[0, *torch.randint(100, 8000, (text,), generator=g).tolist(), 8197,
                       *torch.randint(20000, 28000, (length - text - 4,), generator=g).tolist(), 8196, 8710]])
        for _ in range(count)
    ]  # fmt: skip


def runner(backbone: torch.nn.Module, ids: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    def run() -> list[torch.Tensor]:
        return [
            backbone.prefill(t, torch.arange(t.shape[1])[None], torch.ones_like(t, dtype=torch.bool))
            for t in ids
        ]

    return run


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


@torch.inference_mode()
def depth_point(folder: Path, args: argparse.Namespace, layers: int) -> dict:
    bundle = write_tiny_bundle(
        folder / f"n{layers}",
        "so100",
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        layers=layers,
    )
    _, backbone, _ = load_model(bundle["model"], dtype=torch.float32)
    rotation.rotate(backbone)
    run = runner(backbone, prompts(args.prompts, args.tokens))
    held_out = runner(backbone, prompts(2, args.tokens, seed=1))
    recorded: dict = {}
    stream, t_calib = timed(
        lambda: search.ResidualStream.record(
            backbone, lambda: recorded.update(c=search.Calibration.collect(backbone, run))
        )
    )
    calibration = recorded["c"]
    chosen, t_choose = timed(lambda: search.choose(backbone, calibration, args.scheme, "outlier-safe"))
    _, t_new_cost = timed(lambda: search.end_to_end_costs(backbone, chosen, stream))
    sensitivity, plans = {n: s for n, (s, _) in chosen.items()}, {n: p for n, (_, p) in chosen.items()}
    old, t_old_cost = timed(lambda: full_forward_costs(backbone, plans, run))
    linears = quantize.backbone_linears(backbone)
    _, t_attempt = timed(lambda: _simulated_pass(linears, plans, held_out))
    budget = int(len(plans) * 0.25)
    attempts = 2 + max(0, budget - 1).bit_length()
    new_order, old_order = search.fallback_order(sensitivity), sorted(old, key=lambda n: old[n][0])
    return {
        "layers": layers,
        "linears": len(plans),
        "calibration_s": round(t_calib, 3),
        "choose_s": round(t_choose, 3),
        "cost_new_s": round(t_new_cost, 3),
        "cost_old_s": round(t_old_cost, 3),
        "gate_attempt_s": round(t_attempt, 3),
        "gate_attempts": attempts,
        "new_s": round(t_calib + t_choose + t_new_cost + attempts * t_attempt, 3),
        "old_s": round(t_calib + t_choose + t_old_cost, 3),
        "top4_same_as_old": new_order[:4] == old_order[:4],
    }


def _simulated_pass(linears, plans, run) -> None:
    with quantize.simulated({linears[n]: p for n, p in plans.items()}):
        run()


def fit(x: np.ndarray, y: np.ndarray) -> dict:
    """Least squares y = a + b x + c x^2 with standard errors, and the straight line's residuals."""
    design = np.stack([np.ones_like(x), x, x**2], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = max(1, len(x) - 3)
    cov = (residual @ residual / dof) * np.linalg.pinv(design.T @ design)
    se = np.sqrt(np.maximum(np.diag(cov), 0))
    line = np.polyfit(x, y, 1)
    line_residual = y - np.polyval(line, x)
    t = [float(c / s) if s > 0 else float("inf") for c, s in zip(coef, se, strict=True)]
    critical = T_95[min(dof, len(T_95)) - 1]
    return {
        "a": float(coef[0]), "b": float(coef[1]), "c": float(coef[2]),
        "se": [float(s) for s in se], "t": t,
        "t_critical_95": critical,
        "quadratic_significant": abs(t[2]) > critical,
        "line": {"slope": float(line[0]), "intercept": float(line[1]),
                 "residuals_s": [round(float(r), 3) for r in line_residual],
                 "max_relative_residual": float(np.max(np.abs(line_residual) / y))},
        "at_32_quadratic_s": float(coef[0] + 32 * coef[1] + 1024 * coef[2]),
        "at_32_line_s": float(np.polyval(line, 32)),
    }  # fmt: skip


@torch.inference_mode()
def rates(args: argparse.Namespace) -> dict:
    """Per-op rates at the 7B's width: one decoder layer's forward per token, and choose() of one linear
    of each shape per scheme (calibration rows of that width)."""
    from rynn_edge.runtime.model.backbone import DecoderLayer, rope_tables
    from rynn_edge.runtime.model.config import ModelConfig

    torch.manual_seed(0)
    heads = FULL["heads"]
    cfg = ModelConfig(vocab_size=65536, hidden_size=FULL["hidden"], intermediate_size=FULL["intermediate"],
                      num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
                      rms_norm_eps=1e-5, rope_theta=10000.0, action_dim=6, time_horizon=10)  # fmt: skip
    layer = DecoderLayer(cfg).float()
    for p in layer.parameters():
        p.data.normal_(0, 0.02)
    n = args.tokens
    x = torch.randn(1, n, cfg.hidden_size)
    cos, sin = rope_tables(torch.arange(n)[None], cfg.head_dim, cfg.rope_theta, torch.float32)
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    layer(x, cos, sin, mask)
    _, t_layer = timed(lambda: layer(x, cos, sin, mask))
    out = {"layer_forward_per_token_s": t_layer / n, "tokens": n, "choose_s": {}}
    rows = args.prompts * search.ROWS_PER_PROMPT
    for scheme in args.rate_schemes:
        shapes = ((4096, 4096), (4096, 11008), (11008, 4096))
        out["choose_s"][scheme] = {
            f"{k}x{n}": round(_choose_seconds(scheme, k, n, rows), 2) for k, n in shapes
        }
    return out


def _choose_seconds(scheme: str, k: int, n: int, rows: int) -> float:
    """search.choose (alphas, then GPTQ) of one random [k -> n] linear on `rows` calibration rows."""
    holder = torch.nn.Module()
    holder.layers = torch.nn.ModuleList([torch.nn.Module()])
    holder.layers[0].proj = torch.nn.Linear(k, n, bias=False)
    holder.layers[0].proj.weight.data.normal_(0, 0.02)
    xs = torch.randn(rows, k)
    calibration = search.Calibration({"layers.0.proj": xs.abs().amax(0).numpy()}, {"layers.0.proj": xs})
    return timed(lambda: search.choose(holder, calibration, scheme, "outlier-safe"))[1]


def seven_b(r: dict, shape: dict, attempts: int) -> dict:
    """The 7B's phases per scheme from the full-width rates: layer passes x tokens x per-token layer time
    (calibration prompts as measured here, two held-out prompts per simulated gate attempt)."""
    layers, linears = FULL["layers"], 7 * FULL["layers"]
    per_pass = r["layer_forward_per_token_s"] * shape["prompts"] * shape["tokens"]  # one layer, all prompts
    held_pass = r["layer_forward_per_token_s"] * 2 * shape["tokens"]
    calib = layers * per_pass
    new_cost = (linears * search.SCREEN_LAYERS + search.CANDIDATES * layers) * per_pass
    old_cost = linears * layers * per_pass
    gate = attempts * layers * held_pass
    out = {}
    for scheme, shapes in r["choose_s"].items():
        choose = layers * (4 * shapes["4096x4096"] + 2 * shapes["4096x11008"] + shapes["11008x4096"])
        out[scheme] = {
            "calibration_s": round(calib), "choose_s": round(choose), "cost_new_s": round(new_cost),
            "cost_old_s": round(old_cost), "gate_s": round(gate), "gate_attempts": attempts,
            "new_h": round((calib + choose + new_cost + gate) / 3600, 2),
            "search_new_h": round((calib + choose + new_cost) / 3600, 2),
            "old_h": round((calib + choose + old_cost) / 3600, 2),
        }  # fmt: skip
    return out


def plot(points: list[dict], fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([p["layers"] for p in points])
    grid = np.linspace(1, 32, 64)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("new_s", "this code, with the simulated gate (worst-case bisection)"),
        ("search_new_s", "this code, calibration + search"),
        ("old_s", "previous code, calibration + search"),
    ):
        f = fits[key]
        ax.plot(x, [p[key] for p in points], "o", label=f"{label}, measured")
        ax.plot(grid, f["a"] + f["b"] * grid + f["c"] * grid**2, "--", label=f"{label}, fit a+bN+cN²")
    ax.set_xlabel("decoder layers")
    ax.set_ylabel("seconds")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 12, 16])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--prompts", type=int, default=3, help="calibration prompts")
    parser.add_argument("--tokens", type=int, default=600, help="tokens per prompt (SO100: 597)")
    parser.add_argument("--scheme", default="int8")
    parser.add_argument("--rate-schemes", nargs="*", default=list(SCHEMES))
    parser.add_argument("--out", type=Path, default=OUT, help="result folder")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a loaded box more threads wait on each other)",
    )
    parser.add_argument("--refit", action="store_true", help="fits, ratios and plot again from the record")
    args = parser.parse_args()
    path = args.out / "export_time.json"
    if args.refit:
        record = json.loads(path.read_text())
        record.update(summary(record["points"], record["rates_full_width"], record["shape"]))
        write_json(record, path)
        plot(record["points"], record["fits"], args.out / "export_time.png")
        print(json.dumps(record["ratio_at_32"]))
        return
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        points = []
        for n in args.layers:
            points.append(depth_point(Path(tmp), args, n))
            print(points[-1], flush=True)
    r = rates(args)
    shape = {
        "hidden": args.hidden,
        "intermediate": args.intermediate,
        "prompts": args.prompts,
        "tokens": args.tokens,
    }
    record = {
        "benchmark": "export_time",
        "environment": environment(),
        "conditions": f"shared box (other engineers' jobs running), CPU only, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s); random weights; scheme {args.scheme} outlier-safe",
        "shape": shape,
        "search": {"screen_layers": search.SCREEN_LAYERS, "candidates": search.CANDIDATES},
        "points": points,
        "rates_full_width": r,
        "seconds": round(time.monotonic() - started, 1),
        "reproduce": "python benchmarks/export_time.py",
    } | summary(points, r, shape)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(record, path)
    write_csv(points, args.out / "export_time.csv")
    plot(points, record["fits"], args.out / "export_time.png")
    print(json.dumps(record["ratio_at_32"]))


def summary(points: list[dict], r: dict, shape: dict) -> dict:
    """Fits of the measured totals, their 32-layer values and ratios, and the 7B projection."""
    for p in points:
        p["search_new_s"] = round(p["calibration_s"] + p["choose_s"] + p["cost_new_s"], 3)
    x = np.array([p["layers"] for p in points], float)
    fits = {k: fit(x, np.array([p[k] for p in points], float)) for k in ("new_s", "search_new_s", "old_s")}
    at_32 = {
        k: f["at_32_quadratic_s"] if f["quadratic_significant"] else f["at_32_line_s"]
        for k, f in fits.items()
    }
    budget = int(7 * FULL["layers"] * 0.25)
    attempts = 2 + max(0, budget - 1).bit_length()
    # the gate by its parts: the bisection's attempt count is known, each attempt is one pass
    attempt = fit(x, np.array([p["gate_attempt_s"] for p in points], float))
    at_32["new_s"] = at_32["search_new_s"] + attempts * attempt["at_32_line_s"]
    return {
        "fits": fits | {"gate_attempt_s": attempt},
        "gate_attempts_at_32": attempts,
        "at_32_s": {k: round(v, 1) for k, v in at_32.items()},
        "ratio_at_32": {
            "search_phases": round(at_32["search_new_s"] / at_32["old_s"], 4),
            "with_simulated_gate": round(at_32["new_s"] / at_32["old_s"], 4),
        },
        "seven_b": seven_b(r, shape, attempts),
    }


if __name__ == "__main__":
    main()
