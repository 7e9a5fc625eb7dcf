"""`--format triton`: the artifact's graphs (or engines) as an NVIDIA Triton Inference Server model repo.

OUT/triton/<stage>/config.pbtxt + OUT/triton/<stage>/1/model.onnx (or model.plan), hard-linked to the
artifact's files (copied where links are impossible; the backbone's shared weights file is symlinked),
so one GPU server can serve many robots.
Dynamic dims become -1; batching stays with the client (batch 1 prompts, explicit KV cache).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from rynn_edge.export.onnx_graphs import STAGE_IO

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
}


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _symlink(src: Path, dst: Path) -> None:
    """A relative symlink for external weights: a hard link would give the artifact's weights file a
    second link, and onnx refuses to load external data with several links (hard-link attack check)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(os.path.relpath(src, dst.parent))


def _tensor(name: str, spec: dict[str, Any]) -> str:
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec["shape"])
    return (
        f'  {{\n    name: "{name}"\n    data_type: {TRITON_TYPES[spec["dtype"]]}\n    dims: [ {dims} ]\n  }}'
    )


def config_pbtxt(name: str, entry: dict[str, Any], inputs: list[str], platform: str) -> str:
    io = entry["io"]
    ins = ",\n".join(_tensor(n, io[n]) for n in inputs)
    outs = ",\n".join(_tensor(n, spec) for n, spec in io.items() if n not in inputs)
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: 0\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\n"
        "instance_group [ { count: 1, kind: KIND_GPU } ]\n"
    )


def write_repository(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write OUT/triton; returns the manifest's record of it."""

    repo = out / "triton"
    engines = manifest["target"].get("kind") == "tensorrt"
    for name, entry in manifest["stages"].items():
        stage = "vq_encoder" if name.startswith("vq_encoder") else name
        version = repo / name / "1"
        if engines:
            _link(out / entry["engine"], version / "model.plan")
        else:
            _link(out / entry["onnx"], version / "model.onnx")
            if "external_data" in entry:  # the graph names its weights file; keep the name beside it
                _symlink(out / entry["external_data"], version / entry["external_data"])
        platform = "tensorrt_plan" if engines else "onnxruntime_onnx"
        (repo / name / "config.pbtxt").write_text(
            config_pbtxt(name, entry, list(STAGE_IO[stage].inputs), platform)
        )
    return {"path": "triton", "platform": "tensorrt_plan" if engines else "onnxruntime_onnx"}
