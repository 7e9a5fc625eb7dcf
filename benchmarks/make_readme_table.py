"""Regenerate benchmarks/results/README.md and the `<!-- bench:begin -->` ... `<!-- bench:end -->` block of
the top-level README.md from the recorded result files. Numbers are never typed by hand: rerun this
after a run.

    python benchmarks/make_readme_table.py           # rewrite both
    python benchmarks/make_readme_table.py --check   # exit 1 if either is stale (CI / tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from runs import RESULTS

ROOT = RESULTS.parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
GPU_SWEEP = (
    "python benchmarks/bench_chunk_length.py gpu_7b_random --model CKPT --tokenizer TOK --vq VQ "
    "--backend cuda --device cuda --precision bf16 --runs 20 --warmup 3"
)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "–" if value is None else str(value)


def table(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> str:
    """Markdown table; `columns` maps a row key to its header."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def load(name: str) -> list[tuple[str, dict]]:
    """(folder name, result) of every recorded run with NAME.json, oldest first."""
    runs = [(p.parent.name, json.loads(p.read_text())) for p in RESULTS.glob(f"*/{name}.json")]
    return sorted(runs, key=lambda run: (run[1]["environment"]["date"], run[0]))


def conditions(result: dict, backend: str, precision: str, weights: str) -> str:
    env, recorded = result["environment"], result.get("recorded", {})
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    checkpoint = recorded.get("checkpoint", {}).get("source", result.get("model", "?"))
    where = env["gpu"]["name"] if env["gpu"] and env["device"].startswith("cuda") else env["cpu"]
    load_avg = ", ".join(f"{x:.1f}" for x in env.get("loadavg", [])) or "not recorded"
    return (
        f"Measured {env['date']} on {where} ({env['cpu_count']} cores, {env['torch_threads']} torch threads, "
        f"load average {load_avg}); backend {backend}, precision {precision}, device {env['device']}, "
        f"**{weights} weights** ({checkpoint}); {versions}. Reproduce: `{recorded.get('script', '?')}`."
    )


BENCH_COLUMNS = {
    "mode": "mode",
    "chunk_length": "T",
    "queries": "head queries",
    "median_ms": "latency median (ms)",
    "p90_ms": "p90 (ms)",
    "p99_ms": "p99 (ms)",
    "calls_per_s": "calls/s",
    "actions_per_s": "actions/s",
    "sustainable_hz": "sustainable Hz",
}


def bench_section(name: str, result: dict, link: str) -> str:
    rows = [r for r in result["rows"] if "median_ms" in r]
    first = rows[0]
    combos = sorted({(r["backend"], r["precision"]) for r in rows})
    backend = ", ".join(sorted({b for b, _ in combos}))
    precision = ", ".join(sorted({p for _, p in combos}))
    skipped = [f"{r['mode']} T={r['chunk_length']}: {r['skipped']}" for r in result["rows"] if "skipped" in r]
    parts = [
        f"**{name}** — {conditions(result, backend, precision, first['weights'])}",
        table(
            rows,
            ({"backend": "backend", "precision": "precision"} if len(combos) > 1 else {}) | BENCH_COLUMNS,
        ),
        f"Sustainable Hz = {result['sustainable_hz_formula']} "
        f"(action rate {fmt(result['action_rate_hz'])} Hz); "
        f"{first['runs']} runs after {first['warmup']} warm-up. {result['timed']}",
        f"![Hz vs chunk length, {name}]({link})",
    ]
    if skipped:
        parts.insert(2, "Skipped: " + "; ".join(skipped) + ".")
    return "\n\n".join(parts)


def profile_section(name: str, result: dict) -> str:
    stages = []
    for s in result["stages"]:
        top = [r for r in s["rows"] if r["kind"] != "framework"][:3]
        stages.append(
            {
                **s,
                "top": "; ".join(f"{r['layer']} ({r['kind']}) {r['share']:.0%}" for r in top),
            }
        )
    columns = {
        "stage": "stage",
        "stage_ms": "plain (ms)",
        "profiled_ms": "profiled (ms)",
        "layers_ms": "layers (ms)",
        "coverage": "coverage",
        "top": "top layers (share)",
    }
    return "\n\n".join(
        [
            f"**{name}** — {conditions(result, result['backend'], result['precision'], 'random')}",
            table(stages, columns),
            f"Coverage: {result['coverage_definition']} "
            f"Per-layer rows: [{name}/profile.csv]({name}/profile.csv).",
            f"![top layers, {name}]({name}/profile.png)",
        ]
    )


def loop_sections() -> str:
    jitter = json.loads((RESULTS / "loop_jitter.json").read_text())
    bus = json.loads((RESULTS / "bus_cycle.json").read_text())
    machine = jitter["machine"]
    jitter_cols = {
        "impl": "loop",
        "rate_hz": "rate (Hz)",
        "cycles": "cycles",
        "p50_us": "period error p50 (µs)",
        "p99_us": "p99 (µs)",
        "max_us": "max (µs)",
        "overruns": "overruns",
    }
    bus_cols = {
        "impl": "implementation",
        "cycles": "cycles",
        "p50_us": "cycle p50 (µs)",
        "p99_us": "p99 (µs)",
        "max_us": "max (µs)",
        "p50_over_floor": "p50 / wire floor",
    }
    return "\n\n".join(
        [
            f"### Control-loop jitter\n\n{jitter['benchmark']}; load: {jitter['load']}; "
            f"{jitter['simulator']}; "
            f"{machine['cpu_model']}, {machine['cores']} cores, {jitter['seconds_per_run']} s per run "
            f"(`benchmarks/loop_jitter.py`). Target: {jitter['target']}.",
            table(jitter["results"], jitter_cols),
            f"### Bus cycle\n\n{bus['benchmark']}; {bus['measured']}; "
            f"wire floor {fmt(bus['wire_floor_us'])} µs "
            f"({bus['floor_source']}); {bus['machine']['cpu_model']}, {bus['machine']['cores']} cores "
            f"(`benchmarks/bus_cycle.py`). Target: {bus['target']}. {bus.get('note', '')}".rstrip(),
            table(bus["results"], bus_cols),
        ]
    )


def roofline_section() -> str:
    path = RESULTS / "roofline_jetson.json"
    if not path.is_file():
        return ""
    result = json.loads(path.read_text())
    pivot: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in result["predicted"]:
        row = pivot.setdefault((r["device"], r["precision"], r["mode"]), dict(r))
        row[f"T{r['chunk_length']}"] = r["predicted_ms"]
    lengths = sorted({r["chunk_length"] for r in result["predicted"]})
    columns = {"device": "device", "precision": "precision", "mode": "mode"}
    columns |= {f"T{t}": f"T={t} (ms)" for t in lengths}
    measured = {
        "run": "run",
        "precision": "precision",
        "mode": "mode",
        "chunk_length": "T",
        "measured_ms": "measured (ms)",
        "roofline_here_ms": "roofline here (ms)",
        "of_roofline": "roofline / measured",
    }
    return "\n\n".join(
        [
            "## Roofline: predicted chunk latency on Jetson (7B) next to what we measured",
            f"Lower bounds from published peaks (sources in `runtime/bench/roofline.py` and the JSON); "
            f"{result['prompt_tokens']}-token prompt, {result['views']} views of {result['image_size']} px; "
            f"{result['fused']}. `benchmarks/roofline_jetson.py`.",
            table(list(pivot.values()), columns),
            "Measured on the machines we had (CPU, random weights), with the roofline of the same config on "
            "that machine's measured peak:",
            table(result["measured"], measured),
            "![roofline](roofline_jetson.png)",
        ]
    )


GPU_NOTE = (
    "**7B GPU sweep.** No GPU was lent while these results were recorded, so the 7B random-weight sweep "
    "of the torch CUDA backend is not here yet. On a CUDA machine with the 7B checkpoint (or random 7B "
    "weights: `rynn-edge make-tiny-checkpoint DIR --hidden-size 4096 --layers 32 --intermediate-size 11008`, "
    "which keeps the tiny VQGAN), run\n\n"
    f"    {GPU_SWEEP}\n    python benchmarks/make_readme_table.py\n\n"
    "and commit benchmarks/results/gpu_7b_random/."
)


def results_readme() -> str:
    parts = [
        "# Recorded benchmark results",
        "Generated by `benchmarks/make_readme_table.py` from the files in this folder; do not edit by hand.",
        "## Hz vs chunk length (`rynn-edge bench`)",
    ]
    parts += [bench_section(name, result, f"{name}/bench.png") for name, result in load("bench")[::-1]]
    parts.append(GPU_NOTE)
    profiles = load("profile")[::-1]
    if profiles:
        parts.append("## Per-layer latency (`rynn-edge profile`)")
        parts += [profile_section(name, result) for name, result in profiles]
    parts.append(roofline_section())
    parts += ["## Control loop and bus", loop_sections()]
    memory = memory_result()
    if memory:
        parts += ["## Memory (`benchmarks/memory.py`)", memory_section(memory, full=True)]
    return "\n\n".join(p for p in parts if p) + "\n"


def readme_block() -> str:
    runs = load("bench")
    body = ["No recorded `rynn-edge bench` run yet."]
    if runs:
        name, result = runs[-1]
        body = [
            "The latest recorded Hz-vs-chunk-length run "
            "(all runs, profiles and the Jetson roofline: "
            "[benchmarks/results](benchmarks/results/README.md)):",
            bench_section(name, result, f"benchmarks/results/{name}/bench.png"),
        ]
    section = loop_sections().replace("### ", "#### ")
    return "\n\n".join([BEGIN, *body, section, END])


PRECISION_BEGIN, PRECISION_END = "<!-- precision:begin -->", "<!-- precision:end -->"
PRECISION_METRICS = {
    "hidden_cosine_min": "hidden cos (worst pos.)",
    "hidden_cosine_mean": "hidden cos (mean)",
    "action_max_abs_error": "action max-abs err",
    "token_agreement_pct": "token agree %",
}


PRECISION_FILES = ("precision.json", "precision_heads.json")  # precision_gates.FILES, one per checkpoint


def precision_cell(entry: dict) -> str:
    """value (absolute threshold; k x the bf16 reference = relative threshold)."""
    limits = [] if entry.get("threshold") is None else [f"{entry['threshold']:g}"]
    if "relative_threshold" in entry:
        limits.append(
            f"{entry['multiple']:g}x bf16 {fmt(entry['bf16_reference'])}: {fmt(entry['relative_threshold'])}"
        )
    elif "bf16_reference" in entry:
        limits.append(f"torch bf16 {fmt(entry['bf16_reference'])}")
    return fmt(entry["value"]) + (f" ({'; '.join(limits)})" if limits else "")


def precision_verdict(run: dict) -> str:
    refused = run.get("refused", "")
    if "would overflow" in refused:
        return "refused: fp16 overflow, " + refused.split("queries ", 1)[1].split(" (fp16", 1)[0]
    if refused:
        return refused
    if not run.get("passed"):
        return "FAIL"
    relative = [m for m, e in run["metrics"].items() if e.get("passed_absolute") is False and e.get("passed")]
    return f"pass (relative: {', '.join(PRECISION_METRICS[m] for m in relative)})" if relative else "pass"


def precision_table(result: dict) -> list[str]:
    rows = []
    for run in result["runs"]:
        row = {"precision": run["precision"], "method": run["method"]}
        for metric, header in PRECISION_METRICS.items():
            entry = run.get("metrics", {}).get(metric)
            if entry is not None:
                row[header] = precision_cell(entry)
        row["kept float"] = ", ".join(k.removeprefix("layers.") for k in run.get("kept", [])) or "–"
        rounding = run.get("gptq")
        row["GPTQ-rounded"] = f"{rounding['gptq']} of {rounding['linears']}" if rounding else "–"
        row["verdict"] = precision_verdict(run)
        rows.append(row)
    headers = ["precision", "method", *PRECISION_METRICS.values(), "kept float", "GPTQ-rounded", "verdict"]
    note = (
        f"Recorded {result['environment']['date']} on {result['checkpoint']}, worst of "
        f"{result['queries']['held_out']} held-out queries ({result['queries']['calibration']} calibrate); "
        "in parentheses the absolute threshold and, where recorded, k x the model's own torch-bf16 deviation "
        f"and the relative threshold it gives. Reproduce: `{result['script']}`."
    )
    return [note, table(rows, {k: k for k in headers})]


def precision_block() -> str:
    """The accuracy gates on both outlier stress checkpoints (benchmarks/precision_gates.py)."""
    paths = [RESULTS / "precision_outliers" / name for name in PRECISION_FILES]
    body = [
        part for path in paths if path.is_file() for part in precision_table(json.loads(path.read_text()))
    ]
    return "\n\n".join([PRECISION_BEGIN, *(body or ["No recorded precision run yet."]), PRECISION_END])


MEMORY_BEGIN, MEMORY_END = "<!-- memory:begin -->", "<!-- memory:end -->"
MEMORY_COMMANDS = {
    "load": "load_model",
    "export": "export (workstation)",
    "run": "predict, onnxruntime",
    "build": "build, TensorRT-RTX",
}


def memory_points(result: dict) -> str:
    """Measured peaks per command and precision, one column per layer count, with the fit."""
    layers = sorted({p["layers"] for p in result["points"]})
    fitted = {(f["command"], f["precision"]): f for f in result["fits"]}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for p in result["points"]:
        key = (p["command"], p["precision"])
        row = rows.setdefault(
            key, fitted.get(key, {}) | {"command": MEMORY_COMMANDS[key[0]], "precision": key[1]}
        )
        cell = f"{p['peak_rss_gib']:.2f}" if p.get("exit") == 0 else p.get("skipped", f"exit {p.get('exit')}")
        row[f"N{p['layers']}"] = cell
    columns = {"command": "command", "precision": "precision"}
    columns |= {f"N{n}": f"{n} layer{'s' * (n > 1)} (GiB)" for n in layers}
    columns |= {
        "b_gib_per_layer": "per layer (GiB)",
        "max_residual_gib": "fit residual",
        "at_32_gib": "32 layers (GiB)",
    }
    order = list(MEMORY_COMMANDS)
    ordered = sorted(rows.items(), key=lambda item: (order.index(item[0][0]), item[0][1]))
    return table([row for _, row in ordered], columns)


def memory_fit_table(rows: list[dict], deployment: str) -> str:
    picked = [
        r | {"row": f"{r['precision']}, {r['robot']} ({r['prompt_tokens']} tok)"}
        for r in rows
        if r["deployment"] == deployment
    ]
    devices = [k for k in picked[0] if k.startswith(("Orin", "AGX", "Thor"))]
    columns = {
        "row": "precision, robot (prompt)",
        "weights_gib": "weights",
        "kv_cache_gib": "KV cache",
        "activations_gib": "activations",
        "total_gib": "total (GiB)",
    }
    return table(picked, columns | {d: d for d in devices})


def memory_section(result: dict, full: bool) -> str:
    """The Memory tables from benchmarks/results/memory/memory.json (`full`: with the measured points)."""
    env, runtime = result["environment"], result["runtime"]
    measured = (
        f"Measured {env['date']} on {env['cpu']} ({env['cpu_count']} cores, {env['memory_gib']} GiB), "
        f"**{result['weights']} weights**: {result['checkpoint']}. Peak RSS of a fresh process per command "
        f"({result['benchmark']}), fitted as a + b x layers and extrapolated to 32. "
        f"Reproduce: `{result['script']}`; commands: "
        + "; ".join(f"{k}: `{v}`" for k, v in result["reproduce"].items())
        + f". Points a fit of fewer layers predicts above {result['max_peak_gib']} GiB are skipped, not run."
    )
    checks = table(
        result["formula_checks"],
        {
            "precision": "precision",
            "formula_gib_per_layer": "formula: weights per layer (GiB)",
            "weights_file_gib_per_layer": "measured: backbone.data per layer",
            "run_rss_gib_per_layer": "measured: predict RSS per layer",
        },
    )
    usable = ", ".join(
        f"{name} {d['usable_gib']:g} GiB ({d['usable_gib'] / d['memory_gib']:.0%})"
        for name, d in runtime["devices"].items()
    )
    parts = [measured, memory_points(result)] if full else [measured]
    parts += [
        "Export on a workstation (32 layers, extrapolated):",
        table(result["export_on_workstation"], {k: k for k in result["export_on_workstation"][0]})
        if result["export_on_workstation"]
        else "No export fit recorded yet.",
        "Build on the device (32 layers, extrapolated; host memory of an ahead-of-time TensorRT-RTX build on "
        "a CPU, so without the GPU-side allocations of a build on the Jetson):",
        table(result["build_on_jetson"], {k: k for k in result["build_on_jetson"][0]})
        if result["build_on_jetson"]
        else "No build fit recorded yet.",
        f"Runtime memory of the 7B (TensorRT backend, formulas below), usable memory = total - reserve: "
        f"{runtime['reserve']}; usable: {usable}. Prompts from the project's prompt builder (256 px views, "
        "the state block, the instruction through the tiny BPE, a stand-in for Chameleon's): "
        + "; ".join(
            f"{robot} {p['views']} views, {p['tokens']} tokens "
            f"(engine profile up to {p['profile_max_tokens']}), "
            f'"{p["instruction"]}"'
            for robot, p in runtime["prompts"].items()
        )
        + ". Continuous actions "
        "(`export --stages vq_encoder backbone_prefill action_head`):",
        memory_fit_table(runtime["rows"], "continuous"),
        "Every stage (the default export: + backbone_decode for discrete actions and the world model, + "
        "vq_decoder; prefill and decode are separate engines, each with the weights):",
        memory_fit_table(runtime["rows"], "all stages"),
        "Formula check on the measured full-width artifacts (per-layer slopes):",
        checks,
        "Formulas (`runtime/bench/memory.py`):\n\n"
        + "\n".join("    " + line for line in runtime["formulas"].strip().splitlines()),
    ]
    return "\n\n".join(parts)


def memory_result() -> dict | None:
    path = RESULTS / "memory" / "memory.json"
    return json.loads(path.read_text()) if path.is_file() else None


def memory_block() -> str:
    result = memory_result()
    body = memory_section(result, full=False) if result else "No recorded memory run yet."
    return "\n\n".join([MEMORY_BEGIN, body, MEMORY_END])


SERVING_BEGIN, SERVING_END = "<!-- serving:begin -->", "<!-- serving:end -->"


def serving_block() -> str:
    """A control step in-process, through Triton, through LeRobot (benchmarks/serving.py)."""
    path = RESULTS / "serving_cpu_tiny.json"
    if not path.is_file():
        return "\n\n".join([SERVING_BEGIN, "No recorded serving run yet.", SERVING_END])
    result = json.loads(path.read_text())
    rows = [
        r | {"ratio": f"x{r['p50_vs_in_process']:.3f}", "request": f"{r['request_bytes'] / 1e6:.2f} MB",
             "response": f"{r['response_bytes'] / 1e3:.1f} kB"}
        for r in result["rows"]
    ]  # fmt: skip
    columns = {"path": "path", "p50_ms": "p50 ms", "p99_ms": "p99 ms", "ratio": "p50 vs in-process"}
    columns |= {"request": "request", "response": "response", "runs": "runs"}
    art, machine = result["artifact"], result["machine"]
    note = (
        f"Measured with `{result['command']}`: {result['benchmark']}; {result['measured']}. "
        f"{art['precision']} artifact, {art['weights']} (hidden {art['model']['hidden_size']}, "
        f"{art['model']['num_hidden_layers']} layers), {machine['cores']} cores, load average "
        f"{machine['loadavg'][0]:.1f}."
    )
    return "\n\n".join([SERVING_BEGIN, note, table(rows, columns), SERVING_END])


GENERATED_BLOCKS = (
    (PRECISION_BEGIN, PRECISION_END, precision_block),
    (MEMORY_BEGIN, MEMORY_END, memory_block),
    (SERVING_BEGIN, SERVING_END, serving_block),
)


def updated_readme(text: str) -> str:
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n## Benchmarks\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    text = head + readme_block() + rest.split(END, 1)[1]
    for begin, end, block in GENERATED_BLOCKS:
        if begin in text:
            head, rest = text.split(begin, 1)
            text = head + block() + rest.split(end, 1)[1]
    return text


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a README is stale, write nothing")
    args = parser.parse_args()
    targets = {RESULTS / "README.md": results_readme(), README: updated_readme(README.read_text())}
    stale = [p for p, text in targets.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python benchmarks/make_readme_table.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(targets[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
