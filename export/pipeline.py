"""checkpoint -> artifact folder: reference run, ONNX export, quantization, accuracy, engines, manifest.

Phases run one after another and free what they loaded, so peak memory stays near the largest
single phase: (1) the fp32 torch reference on calibration/held-out queries (and calibration
statistics), (2) each stage's export in its own dtype, (3) onnxruntime over the written graphs for
the accuracy report, one graph's session at a time, (4) optional TensorRT engines and a Triton model
repository. The backbone graphs are exported without weights and their weights streamed, one tensor
at a time, into one external-data file both graphs share (`WEIGHTS`), so phase (2) holds the model
once plus a tensor, not the exporter's copies of it.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rynn_edge.export import (
    accuracy,
    calibration,
    emulate,
    engines,
    golden,
    onnx_graphs,
    quantize,
    rotation,
    search,
    tensorrt_build,
    triton,
)
from rynn_edge.export.accuracy import FLOATS, PRECISIONS, ArenaFreeBackend
from rynn_edge.export.manifest import (
    VQ_SIZES,
    WEIGHTS,
    dynamic_axes,
    io_spec,
    machine,
    profiles,
    stage_entries,
    versions,
)
from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.artifact import MANIFEST, STAGES, Artifact, local_gpu, write_manifest
from rynn_edge.runtime.backends.torch import TorchBackend
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.model.config import ModelConfig
from rynn_edge.runtime.model.vqgan import VQGAN
from rynn_edge.runtime.predictor import Predictor
from rynn_edge.runtime.robot.embodiment import embodiment
from rynn_edge.runtime.tokens.images import to_model_input
from rynn_edge.runtime.tokens.stats import load_stats

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKBONE_STAGES = ("backbone_prefill", "backbone_decode")
MAX_FALLBACK_PCT = 25.0  # default --max-fallback: at most a quarter of the linears kept float


@dataclass
class Options:
    model: Path
    tokenizer: Path
    vq: Path
    out: Path
    precision: str | None = None  # None: bf16 for --target tensorrt on Ampere+ (or no GPU here), else fp16
    quantization: str = "outlier-safe"
    max_fallback_pct: float = MAX_FALLBACK_PCT
    stages: tuple[str, ...] = STAGES
    stage_precision: dict[str, str] = field(default_factory=dict)
    target: str = "onnxruntime"
    calibration_data: Path | None = None
    stats: str | None = None
    triton: bool = False
    triton_kind: str = "auto"
    triton_platform: str = "python"
    allow_accuracy_loss: bool = False
    hardware_compatible: bool = False
    version_compatible: bool = False
    timing_cache: Path | None = None
    overwrite: bool = False
    robot: str | None = None


def default_precision(target: str) -> str:
    """bf16 where TensorRT builds the engines (Ampere and later take strongly typed bf16; an engine is
    built for the GPU it runs on, so no GPU here means a device build later); fp16 for onnxruntime,
    whose CPU provider has no bf16 kernels."""
    gpu = local_gpu()
    if target == "tensorrt" and (gpu is None or float(gpu.compute_capability) >= 8.0):
        return "bf16"
    return "fp16"


def stage_precisions(opts: Options) -> dict[str, str]:
    """Backbone graphs take --precision; the VQGAN takes fp16 for every lower precision (codes are its
    most precision-sensitive output, so no INT8/FP8 VQ); the action head stays fp32 (it is tiny)."""
    precision = opts.precision or default_precision(opts.target)
    low = "fp32" if precision == "fp32" else "fp16"
    chosen = {
        "vq_encoder": low,
        "vq_decoder": low,
        "action_head": "fp32",
        "backbone_prefill": precision,
        "backbone_decode": precision,
    }
    for stage, precision in opts.stage_precision.items():
        allowed = PRECISIONS if stage.startswith("backbone") else FLOATS
        if stage not in chosen or precision not in allowed:
            raise UserError(
                f"--stage-precision {stage}={precision}: stages {', '.join(chosen)}; "
                f"backbone stages take {'|'.join(PRECISIONS)}, the others {'|'.join(FLOATS)}"
            )
        chosen[stage] = precision
    if chosen["action_head"] != "fp32":
        raise UserError(
            f"--stage-precision action_head={chosen['action_head']}: not supported yet (exported fp32)"
        )
    return {stage: chosen[stage] for stage in opts.stages}


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """Check -o before any work; returns the staging folder the export writes into (beside `out`, so
    the final rename stays on one file system)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: is a file; the artifact is a folder, choose another path")
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise UserError(f"-o {out}: exists, is not empty and is not an artifact; choose another folder")
        if not overwrite:
            raise UserError(f"-o {out}: an artifact is already there; pass --overwrite to replace it")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"-o {out}: {parent} is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished staging folder in: readers see the old artifact or the new one, never a mix."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class ReferenceRun:
    references: list[accuracy.Reference]
    prompt_lengths: list[int]
    instructions: dict[str, list[int]]
    calibration_samples: int
    ranges: search.Ranges | None = None
    calibration: search.Calibration | None = None
    sensitivity: dict[str, search.Sensitivity] = field(default_factory=dict)
    float_base: str = "fp16"  # the float type of the quantized graphs' unquantized ops


def quantized(precisions: dict[str, str]) -> dict[str, str]:
    return {s: p for s, p in precisions.items() if s in BACKBONE_STAGES and p in quantize.SCHEMES}


def reference_run(
    opts: Options, cfg: ModelConfig, samples: list[calibration.Sample], precisions: dict[str, str]
) -> ReferenceRun:
    """fp32 torch over every sample: held-out references and prompt lengths, then on the calibration
    queries only the fp16 ranges and (quantized exports) the calibration statistics, on the rotated
    backbone for --quantization outlier-safe. Raises UserError for fp16 stages that would overflow.
    The action head is exported here, from the fp32 weights (it always runs fp32), once the fp32
    backbone is freed."""

    backend = TorchBackend(opts.model, opts.vq)
    predictor = Predictor.open(backend, opts.tokenizer, opts.vq, stats=opts.stats, image_size=256)
    calib_samples, held_out = calibration.split(samples)
    lengths: list[int] = []
    instructions: dict[str, list[int]] = {}
    prompts = {}
    for sample in tqdm(samples, desc="prompts", disable=None):
        ids, codes = predictor.vla_prompt(sample.images, sample.state, sample.instruction)
        lengths.append(len(ids))
        instructions[sample.instruction] = predictor.text.instruction_ids(sample.instruction)
        prompts[id(sample)] = (ids, codes)

    def prefill(ids: list[int]) -> torch.Tensor:
        t = torch.tensor([ids])
        return backend.backbone.prefill(t, torch.arange(len(ids))[None], torch.ones_like(t, dtype=torch.bool))

    def calibrate() -> list[torch.Tensor]:
        return [prefill(prompts[id(sample)][0]) for sample in calib_samples]

    run = ReferenceRun([], lengths, instructions, len(calib_samples))
    schemes = quantized(precisions)
    with torch.inference_mode():
        for sample in tqdm(held_out, desc="reference (fp32 torch)", disable=None):
            ids, codes = prompts[id(sample)]
            hidden = prefill(ids)
            valid = torch.ones(hidden.shape[:2], dtype=torch.bool)
            vq = {256: (to_model_input(sample.images, 256).numpy(), codes)}
            if "vq_encoder" in opts.stages and not run.references:  # 512 px: one query is enough, and slow
                pixels = to_model_input(sample.images[:1], 512).numpy()
                vq[512] = (pixels, backend.vq_encode(pixels))
            tokens = []
            if "backbone_decode" in opts.stages:
                tokens = decoding.greedy_actions(backend.step_model(), ids, accuracy.DISCRETE_STEPS)
            run.references.append(
                accuracy.Reference(vq, ids, hidden[0].numpy(), backend.head(hidden, valid)[0].numpy(), tokens)
            )
        if any(p != "fp32" for s, p in precisions.items() if s in BACKBONE_STAGES):
            run.ranges = search.Ranges.collect(backend.backbone, calibrate)
            overflow = bool(run.ranges.fp16_overflows())
            fp16 = [s for s in BACKBONE_STAGES if precisions.get(s) == "fp16"]
            if fp16 and overflow:
                raise UserError(f"{', '.join(fp16)}: " + run.ranges.fp16_message())
            run.float_base = "bf16" if overflow else "fp16"
        if schemes:
            if opts.quantization == "outlier-safe":
                rotation.rotate(backend.backbone)
            run.calibration = search.Calibration.collect(backend.backbone, calibrate)
            scheme = next(iter(schemes.values()))
            run.sensitivity = search.search(
                backend.backbone, run.calibration, scheme, opts.quantization, calibrate
            )
    del backend.backbone  # the fp32 backbone is done: free it before the head export below
    gc.collect()
    if "action_head" in precisions:
        spec = io_spec(cfg, "action_head")
        example = (torch.zeros(1, 8, cfg.hidden_size), torch.ones(1, 8, dtype=torch.bool))
        module = onnx_graphs.ActionHeadGraph(backend.head, torch.float32)
        onnx_graphs.export_graph(
            module, example, "action_head", dynamic_axes(spec), opts.out / "action_head.onnx"
        )
    return run


def export_vq(opts: Options, cfg: ModelConfig, precisions: dict[str, str]) -> list[str]:
    vq = VQGAN.from_dir(opts.vq)
    written = []
    if "vq_encoder" in precisions:
        dtype = DTYPES[precisions["vq_encoder"]]
        for size in VQ_SIZES:
            spec = io_spec(cfg, "vq_encoder", size)
            example = (torch.zeros(1, 3, size, size),)
            name = f"vq_encoder_{size}"
            onnx_graphs.export_graph(
                onnx_graphs.VQEncoder(vq, dtype),
                example,
                "vq_encoder",
                dynamic_axes(spec),
                opts.out / f"{name}.onnx",
            )
            written.append(name)
    if "vq_decoder" in precisions:
        spec = io_spec(cfg, "vq_decoder")
        example = (torch.zeros(1, 16, 16, dtype=torch.int32),)
        module = onnx_graphs.VQDecoder(vq, DTYPES[precisions["vq_decoder"]])
        onnx_graphs.export_graph(
            module, example, "vq_decoder", dynamic_axes(spec), opts.out / "vq_decoder.onnx"
        )
        written.append("vq_decoder")
    return written


def float_types(precisions: dict[str, str], run: ReferenceRun) -> dict[str, str]:
    """Each stage's float type: its precision, or for a quantized stage the run's float base."""
    return {s: run.float_base if p in quantize.SCHEMES else p for s, p in precisions.items()}


def export_backbone(
    opts: Options,
    cfg: ModelConfig,
    precisions: dict[str, str],
    run: ReferenceRun,
    kept: frozenset[str] = frozenset(),
) -> dict[str, dict[str, int]]:
    """Export the backbone graphs without weights, quantize them (leaving `kept` linears float), then
    stream the weights into the one file both graphs point into (`WEIGHTS`); returns Q/DQ counts per
    quantized stage."""
    stages = [s for s in BACKBONE_STAGES if s in precisions]
    if not stages:
        return {}
    floats = float_types(precisions, run)
    _, backbone, _ = load_model(opts.model, dtype=DTYPES[floats[stages[0]]])
    if quantized(precisions) and opts.quantization == "outlier-safe":
        rotation.rotate(backbone)
    length = 8
    ids = torch.zeros(1, length, dtype=torch.long)
    positions = torch.arange(length)[None]
    mask = torch.ones(1, length, dtype=torch.bool)
    graphs = {}
    for stage in stages:
        dtype = DTYPES[floats[stage]]
        _cast_backbone(backbone, dtype)
        cache = torch.zeros(cfg.num_hidden_layers, 1, cfg.num_attention_heads, 4, cfg.head_dim, dtype=dtype)
        module, example = {
            "backbone_prefill": (onnx_graphs.BackbonePrefill(backbone), (ids, positions, mask)),
            "backbone_decode": (
                onnx_graphs.BackboneDecode(backbone),
                (ids[:, :2], positions[:, :2], cache, cache, torch.ones(1, 2, 6, dtype=torch.bool)),
            ),
        }[stage]
        graphs[stage] = onnx_graphs.export_backbone_graph(
            module, example, stage, dynamic_axes(io_spec(cfg, stage))
        )
    file = onnx_graphs.WeightFile(opts.out / WEIGHTS)
    counts: dict[str, dict[str, int]] = {}
    try:
        schemes = quantized(precisions)
        if schemes:  # one search ran, for one scheme (reference_run): every quantized stage shares it
            scheme = next(iter(schemes.values()))
            _cast_backbone(backbone, DTYPES[run.float_base])

            def plan(name: str, w) -> quantize.Plan:
                return run.sensitivity[name].plan(name, w, run.calibration, scheme, opts.quantization)

            quantize.quantize_backbone([graphs[s] for s in schemes], backbone, plan, kept, file)
        for stage, model in graphs.items():
            _cast_backbone(backbone, DTYPES[floats[stage]])
            # after the export: it re-lays the linear weights out, and the old tensors must not be held
            onnx_graphs.attach_weights(model, stage, onnx_graphs.backbone_weights(backbone), file)
            if stage in schemes:
                counts[stage] = quantize.check_quantized(
                    model, schemes[stage], cfg.num_hidden_layers, cfg.vocab_size, kept
                ).as_dict()
            onnx_graphs.save_graph(model, opts.out / f"{stage}.onnx")
    finally:
        file.close()
    return counts


def _cast_backbone(backbone: torch.nn.Module, dtype: torch.dtype) -> None:
    """In place, one tensor at a time; the rotation's fp32 un-rotation matrix stays fp32 (it is exact)."""
    for name, param in backbone.named_parameters():
        if param.dtype != dtype and not name.endswith("unrotate"):
            param.data = param.data.to(dtype)


def write_assets(opts: Options, instructions: dict[str, list[int]]) -> dict[str, str]:
    """Token tables, stats and the instruction cache next to the graphs."""
    (opts.out / "tokenizer").mkdir()
    for path in sorted(opts.tokenizer.iterdir()):
        if path.is_file():
            shutil.copy2(path, opts.out / "tokenizer" / path.name)
    (opts.out / "vq").mkdir()
    shutil.copy2(opts.vq / "text_tokenizer.json", opts.out / "vq" / "text_tokenizer.json")
    shutil.copy2(opts.model / "config.json", opts.out / "config.json")
    cfg = ModelConfig.from_dir(opts.model)
    load_stats(opts.stats or embodiment(opts.robot, cfg.action_dim).name).save(opts.out / "stats.json")
    (opts.out / "instructions.json").write_text(json.dumps(instructions, indent=1) + "\n")
    return {
        "tokenizer": "tokenizer",
        "image_vocab": "vq/text_tokenizer.json",
        "stats": "stats.json",
        "instruction_cache": "instructions.json",
        "config": "config.json",
    }


def export(opts: Options) -> dict[str, Any]:
    """Run the whole export; returns the manifest. Raises UserError on accuracy failure (unless allowed).
    Everything is written to a staging folder that replaces -o only once complete."""
    for flag, folder in (("MODEL_DIR", opts.model), ("--tokenizer", opts.tokenizer), ("--vq", opts.vq)):
        if not folder.is_dir():
            raise UserError(f"{flag} {folder}: not a folder")
    if opts.quantization not in quantize.METHODS:
        raise UserError(f"--quantization {opts.quantization}: choose {'|'.join(quantize.METHODS)}")
    staging = _prepare_out(opts.out, opts.overwrite)
    try:
        manifest, failed = _export(replace(opts, out=staging))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, opts.out)
    if failed and not opts.allow_accuracy_loss:
        raise UserError(
            "accuracy below threshold (artifact written to "
            f"{opts.out} for inspection, manifest accuracy.passed = false):\n  "
            + "\n  ".join(failed)
            + _fallback_hint(manifest)
            + "\nUse better calibration data or a higher precision, or pass --allow-accuracy-loss to accept."
        )
    for line in failed:
        print(f"rynn-edge export: warning: {line}", flush=True)
    if opts.target == "tensorrt" and manifest["target"]["kind"] != "tensorrt":
        raise UserError(tensorrt_build.INSTALL_HINT)
    return manifest


def _export(opts: Options) -> tuple[dict[str, Any], list[str]]:
    started = time.monotonic()
    cfg = ModelConfig.from_dir(opts.model)
    body = embodiment(opts.robot, cfg.action_dim)
    robot = body.name
    precisions = stage_precisions(opts)
    schemes = quantized(precisions)
    if len(set(schemes.values())) > 1:
        raise UserError("prefill and decode must share one quantization scheme (they share the weights)")
    stats = load_stats(opts.stats or robot)
    if opts.calibration_data is not None:
        samples = calibration.load_folder(opts.calibration_data)
        source = str(opts.calibration_data)
    else:
        samples = calibration.synthetic(stats, body.image_counts[0])
        source = "synthetic"
        print(
            f"rynn-edge export: no --calibration-data; using {len(samples)} synthetic frames. Fine for "
            "fp32/fp16/bf16; for int8/fp8 scales pass recorded frames (see --help).",
            flush=True,
        )
    run = reference_run(opts, cfg, samples, precisions)
    gc.collect()
    accuracy.attach_bf16_reference(opts.model, opts.vq, run.references, precisions)
    export_vq(opts, cfg, precisions)
    floats = float_types(precisions, run)
    dims = profiles(cfg, run.prompt_lengths)
    assets = write_assets(opts, run.instructions)
    assets["golden"] = golden.FOLDER
    golden_files = golden.save(opts.out, run.references)
    manifest: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": str(opts.model), "robot": robot, **cfg.__dict__},
        "precision": precisions.get("backbone_prefill", precisions.get("backbone_decode", opts.precision)),
        "assets": assets,
        "golden": golden_files,
        "target": {"kind": "onnxruntime"},
        "versions": versions(),
        "machine": machine(),
        "calibration": {
            "source": source,
            "samples": len(samples),
            "calibration_queries": run.calibration_samples,
            "held_out": len(run.references),
            "quantization": "explicit Q/DQ (see rynn_edge.export.quantize)",
        },
    }
    report, counts, fallback = _backbone_with_fallback(opts, cfg, precisions, run, manifest, dims, floats)
    failed = accuracy.failures(report)
    manifest["accuracy"] = {
        "metrics": report,
        "passed": not failed,
        "samples": len(run.references),
        "measured_with": "onnxruntime CPU"
        + ("" if "bf16" not in floats.values() else f"; {emulate.MEASURED_WITH}"),
    }
    if schemes:
        manifest["quantization"] = {
            "scheme": next(iter(schemes.values())),
            "method": opts.quantization,
            "float_base": run.float_base,
            "fallback": fallback,
            "sensitivity": {name: s.as_dict() for name, s in run.sensitivity.items()},
        }
    if run.ranges is not None:
        manifest["calibration"]["fp16_overflow"] = [
            {"module": n, "absmax": round(v, 1)} for n, v in run.ranges.fp16_overflows()
        ]
    trt = tensorrt_build.load_tensorrt() if opts.target == "tensorrt" else None
    if trt is not None:
        manifest["target"] = engines.build_all(
            trt,
            opts.out,
            manifest,
            timing_cache=opts.timing_cache,
            hardware_compatible=opts.hardware_compatible,
            version_compatible=opts.version_compatible,
        )
    if opts.triton:
        manifest["triton"] = triton.write_repository(
            opts.out, manifest, kind=opts.triton_kind, platform=opts.triton_platform
        )
    manifest["export_seconds"] = round(time.monotonic() - started, 1)
    return write_manifest(opts.out, manifest), failed


def _backbone_with_fallback(
    opts: Options,
    cfg: ModelConfig,
    precisions: dict[str, str],
    run: ReferenceRun,
    manifest: dict[str, Any],
    dims: dict,
    floats: dict[str, str],
) -> tuple[dict[str, Any], dict[str, dict[str, int]], dict[str, Any]]:
    """Export the backbone and measure every stage; while a quantized backbone misses its gate, keep the
    most sensitive linears float (1, 2, 4, ... up to --max-fallback percent of them) and redo the
    backbone. Returns (accuracy report, Q/DQ counts, the fallback record for the manifest)."""
    order = search.fallback_order(run.sensitivity)
    budget = int(len(order) * opts.max_fallback_pct / 100)
    kept: list[str] = []
    attempts = []
    stages = set(precisions) - {"vq_encoder", "vq_decoder"}
    per_query: dict[str, list[float]] = {}
    while True:
        counts = export_backbone(opts, cfg, precisions, run, frozenset(kept))
        gc.collect()
        manifest["stages"] = stage_entries(cfg, precisions, dims, counts, floats)
        artifact = Artifact(opts.out, manifest)
        measured = (
            set(manifest["stages"]) if not per_query else {s for s in manifest["stages"] if s in stages}
        )
        per_query.update(accuracy.measure(_opener(artifact), run.references, measured))
        report = accuracy.judge(accuracy.summarize(per_query), precisions)
        backbone_failed = [
            m for m, e in report.items() if e.get("passed") is False and e["stage"] not in ("vq_encoder",)
        ]
        attempts.append(
            {"kept": len(kept), "passed": not backbone_failed, "failed": backbone_failed}
            | {m: round(report[m]["value"], 6) for m in accuracy.METRIC_STAGE if m in report}
        )
        if not quantized(precisions) or not backbone_failed or len(kept) >= budget:
            break
        kept = order[: min(budget, max(1, 2 * len(kept)))]
        print(f"rynn-edge export: {', '.join(backbone_failed)} failed; keeping {len(kept)} linear(s) float")
    fallback = {
        "kept": kept,
        "kept_precision": run.float_base,
        "budget": budget,
        "linears": len(order),
        "attempts": attempts,
    }
    return report, counts, fallback


def _opener(artifact: Artifact):
    return lambda: ArenaFreeBackend(artifact, ["CPUExecutionProvider"])


def _fallback_hint(manifest: dict[str, Any]) -> str:
    quant = manifest.get("quantization")
    if not quant:
        return ""
    fb = quant["fallback"]
    worst = search.fallback_order({n: search.Sensitivity(**s) for n, s in quant["sensitivity"].items()})[:3]
    return (
        f"\nKept {len(fb['kept'])} of {fb['linears']} linears {fb['kept_precision']} (budget {fb['budget']}, "
        f"--max-fallback); the most sensitive: {', '.join(worst)} (manifest quantization.sensitivity)."
    )
