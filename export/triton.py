"""`--format triton`: the artifact as an NVIDIA Triton Inference Server model repository, OUT/triton.

Models (every one loads READY on the Python-backend-only server `rynn-edge serve` runs, and on NVIDIA's
Triton container):
- `rynn_step`: one whole control step per request (raw frames, state, instruction in; prompt ids, VQ
  codes, normalized actions, actions, goals out; `mode` discrete adds the generated tokens). The server
  keeps the tokenizer, tables and KV cache, so a robot makes one round trip per chunk.
- one model per stage graph, for clients that compose stages themselves.

A Python-backend model's `1/model.py` is a two-line shim into `rynn_edge.runtime.serving` and reads the
graph where the artifact keeps it (beside its external data), so no weights are copied and no link
leaves a model folder. `platform="native"` writes the stage models for Triton's own onnxruntime /
TensorRT backends instead (GPU container); their external data is then copied into each model folder,
because onnxruntime refuses external data outside it and onnx refuses a weights file with several links.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rynn_edge.export.onnx_graphs import STAGE_IO
from rynn_edge.runtime.serving import wire

KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
PLATFORMS = ("python", "native")
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
}
SHIM = '''"""Triton Python backend model written by `rynn-edge export --format triton` (needs rynn-edge)."""

from pathlib import Path

from rynn_edge.runtime.serving.{module} import {cls}


class TritonPythonModel({cls}):
    here = Path(__file__).resolve().parent
'''


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _tensor(name: str, data_type: str, dims: tuple | list, optional: bool = False) -> str:
    shape = ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims)
    extra = "\n    optional: true" if optional else ""
    return f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {shape} ]{extra}\n  }}'


def config_pbtxt(
    name: str,
    inputs: list[str],
    outputs: list[str],
    *,
    kind: str = "auto",
    platform: str | None = None,
    parameters: dict[str, str] | None = None,
) -> str:
    """A config; `platform` None = the Python backend. Inputs/outputs are already-rendered tensors."""
    runner = f'platform: "{platform}"' if platform else 'backend: "python"'
    params = "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(value)} }}\n}}\n'
        for key, value in (parameters or {}).items()
    )
    sep = ",\n"
    return (
        f'name: "{name}"\n{runner}\nmax_batch_size: 0\n'
        f"input [\n{sep.join(inputs)}\n]\noutput [\n{sep.join(outputs)}\n]\n"
        f"instance_group [ {{ count: 1, kind: {KINDS[kind]} }} ]\n{params}"
    )


def _stage_config(name: str, entry: dict[str, Any], platform: str | None, kind: str) -> str:
    stage = "vq_encoder" if name.startswith("vq_encoder") else name
    names = list(STAGE_IO[stage].inputs)
    io = entry["io"]
    ins = [_tensor(n, TRITON_TYPES[io[n]["dtype"]], io[n]["shape"]) for n in names]
    outs = [_tensor(n, TRITON_TYPES[s["dtype"]], s["shape"]) for n, s in io.items() if n not in names]
    return config_pbtxt(name, ins, outs, kind=kind, platform=platform)


def _type(wire_dtype: str) -> str:
    return "TYPE_STRING" if wire_dtype == "BYTES" else f"TYPE_{wire_dtype}"


def step_config(manifest: dict[str, Any], stats: dict, kind: str = "auto") -> str:
    model = manifest["model"]
    precision = manifest["stages"].get("backbone_prefill", {}).get("precision", "unknown")
    meta = wire.metadata(model, precision, 256, stats)
    ins = [_tensor(t.name, _type(t.dtype), t.dims, t.optional) for t in wire.STEP_INPUTS]
    outs = [_tensor(t.name, _type(t.dtype), t.dims) for t in wire.STEP_OUTPUTS]
    return config_pbtxt(wire.STEP_MODEL, ins, outs, kind=kind, parameters={wire.METADATA_KEY: meta})


def write_repository(
    out: Path, manifest: dict[str, Any], *, kind: str = "auto", platform: str = "python"
) -> dict[str, Any]:
    """Write OUT/triton; returns the manifest's record of it."""

    repo = out / "triton"
    engines = manifest["target"].get("kind") == "tensorrt"
    native = "tensorrt_plan" if engines else "onnxruntime_onnx"
    for name, entry in manifest["stages"].items():
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        if platform == "native":
            graph = entry["engine"] if engines else entry["onnx"]
            _link(out / graph, version / ("model.plan" if engines else "model.onnx"))
            if not engines and "external_data" in entry:
                shutil.copyfile(out / entry["external_data"], version / entry["external_data"])
        else:
            (version / "model.py").write_text(SHIM.format(module="triton_stage", cls="StageModel"))
        config = _stage_config(name, entry, native if platform == "native" else None, kind)
        (repo / name / "config.pbtxt").write_text(config)
    stats = json.loads((out / manifest["assets"]["stats"]).read_text())
    (repo / wire.STEP_MODEL / "1").mkdir(parents=True, exist_ok=True)
    (repo / wire.STEP_MODEL / "1" / "model.py").write_text(
        SHIM.format(module="triton_model", cls="StepModel")
    )
    (repo / wire.STEP_MODEL / "config.pbtxt").write_text(step_config(manifest, stats, kind))
    models = [wire.STEP_MODEL, *manifest["stages"]]
    return {"path": "triton", "models": models, "kind": KINDS[kind], "stage_platform": platform}
