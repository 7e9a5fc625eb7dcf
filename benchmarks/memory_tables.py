"""The derived half of benchmarks/results/memory/memory.json: per-layer fits of the measured points
extrapolated to 32 layers, the 7B's runtime memory per precision at the SO100 and LIBERO prompt lengths
(formulas in rynn_edge.runtime.bench.memory) and the fit verdicts per Jetson. Pure: points in, dict out.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from rynn_edge.export.manifest import profiles, stage_entries
from rynn_edge.export.pipeline import Options, stage_precisions
from rynn_edge.runtime.backends.artifact import STAGES
from rynn_edge.runtime.bench import memory as M
from rynn_edge.runtime.bench.roofline import CHAMELEON_VQ
from rynn_edge.runtime.model.config import ModelConfig
from rynn_edge.runtime.robot.embodiment import EMBODIMENTS
from rynn_edge.runtime.tiny.model import tiny_config
from rynn_edge.runtime.tiny.tokenizer import build_tiny_tokenizer
from rynn_edge.runtime.tokens.prompt import vla_prompt
from rynn_edge.runtime.tokens.stats import load_stats
from rynn_edge.runtime.tokens.text import TextTokenizer
from rynn_edge.runtime.tokens.vocab import ImageVocab

LAYERS_7B = 32
CODES_PER_VIEW = (256 // 16) ** 2  # a 256 px view: a 16 x 16 latent (VQ downsampling 16)
INSTRUCTIONS = {  # one task of each dataset (SO100: the upstream fixture's; LIBERO: LIBERO-Goal's)
    "so100": "Place the block inside the circle.",
    "libero": "pick up the black bowl between the plate and the ramekin and place it on the plate",
}
PRECISIONS = ("fp32", "bf16", "int8", "fp8", "int4")  # fp16 has bf16's bytes
DEPLOYMENTS = {
    "continuous": ("vq_encoder", "backbone_prefill", "action_head"),  # export --stages ...: the default path
    "all stages": STAGES,  # + backbone_decode (discrete actions, world model) and vq_decoder
}
WORKSTATIONS_GIB = (32, 64, 128)


def config(layers: int, robot: str) -> ModelConfig:
    """The 7B's widths with `layers` decoder layers."""
    return ModelConfig.from_dict(
        tiny_config(robot, hidden_size=4096, num_layers=layers, intermediate_size=11008)
    )


@cache
def prompt_length(robot: str) -> int:
    """The VLA prompt's length from the project's prompt builder: the robot's most views, its state,
    the instruction through the tiny BPE (a stand-in for Chameleon's; text is ~5% of the prompt)."""
    tok, vocab = build_tiny_tokenizer()
    body = EMBODIMENTS[robot]
    codes = [np.zeros(CODES_PER_VIEW, dtype=np.int64)] * max(body.image_counts)
    stats = load_stats(robot)
    state = (stats.state.min + stats.state.max) / 2
    ids = vla_prompt(
        TextTokenizer(tok, 0), INSTRUCTIONS[robot], state, codes, stats, ImageVocab.from_mapping(vocab)
    )
    return len(ids)


def prompt(robot: str) -> dict:
    length = prompt_length(robot)
    return {
        "tokens": length,
        "profile_max_tokens": profiles(config(LAYERS_7B, robot), [length])["backbone_prefill"]["L"].max,
        "views": max(EMBODIMENTS[robot].image_counts),
        "instruction": INSTRUCTIONS[robot],
    }


def fits(points: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for p in points:
        if "peak_rss_gib" in p and p.get("exit") == 0:
            groups.setdefault((p["command"], p["precision"]), []).append((p["layers"], p["peak_rss_gib"]))
    out = []
    for (command, precision), known in sorted(groups.items()):
        if len({n for n, _ in known}) < 2:
            continue
        line = M.fit_line(known)
        out.append(
            {
                "command": command,
                "precision": precision,
                "layers": sorted(n for n, _ in known),
                "a_gib": round(line.a, 3),
                "b_gib_per_layer": round(line.b, 4),
                "max_residual_gib": round(line.max_residual, 3),
                "at_32_gib": round(line.at(LAYERS_7B), 2),
            }
        )
    return out


def runtime_rows() -> list[dict]:
    rows = []
    for robot in INSTRUCTIONS:
        cfg, length = config(LAYERS_7B, robot), prompt_length(robot)
        dims = profiles(cfg, [length])
        for deployment, stages in DEPLOYMENTS.items():
            for precision in PRECISIONS:
                chosen = stage_precisions(Options(*[Path()] * 4, precision=precision, stages=stages))
                entries = stage_entries(cfg, chosen, dims, {})
                need = M.runtime_memory(cfg, CHAMELEON_VQ, precision, entries, length)
                row = {
                    "robot": robot,
                    "prompt_tokens": length,
                    "deployment": deployment,
                    "precision": precision,
                }
                row |= {k: round(v, 2) for k, v in need.items()}
                for name, (memory, fp8) in M.JETSONS.items():
                    row[name] = M.verdict(need["total_gib"], memory, fp8, precision)
                rows.append(row)
    return rows


def checks(points: list[dict]) -> list[dict]:
    """Measured per-layer slopes against the formula's per-layer weight bytes at the same width."""
    one, two = (config(n, "so100") for n in (1, 2))
    exports = [p for p in points if p["command"] == "export" and "weights_file_gib" in p]
    out = []
    for precision in sorted({p["precision"] for p in exports}):
        per_layer = M.backbone_bytes(two, precision, lm_head=True) - M.backbone_bytes(
            one, precision, lm_head=True
        )
        files = [(p["layers"], p["weights_file_gib"]) for p in exports if p["precision"] == precision]
        row = {"precision": precision, "formula_gib_per_layer": round(per_layer / M.GIB, 4)}
        if len({n for n, _ in files}) > 1:
            row["weights_file_gib_per_layer"] = round(M.fit_line(files).b, 4)
        runs = [f for f in fits(points) if f["command"] == "run" and f["precision"] == precision]
        if runs:
            row["run_rss_gib_per_layer"] = runs[0]["b_gib_per_layer"]
        out.append(row)
    return out


def tables(points: list[dict]) -> dict:
    fitted = fits(points)
    export = [f for f in fitted if f["command"] == "export"]
    build = [f for f in fitted if f["command"] == "build"]
    return {
        "fits": fitted,
        "formula_checks": checks(points),
        "runtime": {
            "formulas": M.__doc__,
            "reserve": M.RESERVE_REASON,
            "devices": {
                name: {"memory_gib": memory, "usable_gib": M.usable_gib(memory), "fp8": fp8}
                for name, (memory, fp8) in M.JETSONS.items()
            },
            "prompts": {robot: prompt(robot) for robot in INSTRUCTIONS},
            "rows": runtime_rows(),
        },
        "export_on_workstation": [
            {"precision": f["precision"], "at_32_gib": f["at_32_gib"]}
            | {f"{ram} GiB": M.verdict(f["at_32_gib"], ram) for ram in WORKSTATIONS_GIB}
            for f in export
        ],
        "build_on_jetson": [
            {"precision": f["precision"], "at_32_gib": f["at_32_gib"]}
            | {name: M.verdict(f["at_32_gib"], memory) for name, (memory, _) in M.JETSONS.items()}
            for f in build
        ],
    }
