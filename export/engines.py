"""TensorRT engines for every graph of an artifact, from the manifest alone (no checkpoint): what
`export --target tensorrt` does at its end and `rynn-edge build` does on the device.

Stages are built one after another, each from its ONNX graph and the manifest's dynamic-dim profile,
so peak memory is about the largest graph plus its weights and the builder's workspace.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rynn_edge.export import tensorrt_build
from rynn_edge.export.manifest import machine, stage_dims, trt_profile
from rynn_edge.runtime.backends.artifact import Artifact, local_gpu, write_manifest
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.config import ModelConfig


def stage_of(name: str) -> tuple[str, int]:
    """(stage, image size) of a manifest graph name: vq_encoder_512 -> (vq_encoder, 512)."""
    if name.startswith("vq_encoder"):
        return "vq_encoder", int(name.rsplit("_", 1)[1])
    return name, 256


def build_all(
    trt: ModuleType,
    folder: Path,
    manifest: dict[str, Any],
    *,
    timing_cache: Path | None = None,
    hardware_compatible: bool = False,
    version_compatible: bool = False,
    compute_capability: str | None = None,
) -> dict[str, Any]:
    """One engine per graph next to it (entries updated in place); returns the manifest's target record."""
    gpu = local_gpu()
    cfg = ModelConfig.from_dict(manifest["model"])
    cache = timing_cache or folder / "timing.cache"
    started = time.monotonic()
    for name, entry in manifest["stages"].items():
        stage, size = stage_of(name)
        if _dim_profile(entry):
            profile = trt_profile(cfg, stage, stage_dims(entry), size)
        else:  # an artifact built before: its per-input shapes
            profile = {n: tuple(tuple(s) for s in shapes) for n, shapes in entry["profile"].items()}
        info = tensorrt_build.build_engine(
            trt,
            folder / entry["onnx"],
            folder / f"{name}.engine",
            profile,  # type: ignore[arg-type]
            timing_cache=cache,
            hardware_compatible=hardware_compatible,
            version_compatible=version_compatible,
            compute_capability=compute_capability,
        )
        entry.update(info)
    if gpu is not None:
        gpu_record = {"name": gpu.name, "compute_capability": gpu.compute_capability}
    elif compute_capability is not None:  # TensorRT-RTX ahead of time, for a GPU family named "SM86"
        digits = compute_capability.removeprefix("SM")
        gpu_record = {
            "name": f"ahead of time for {compute_capability}",
            "compute_capability": f"{digits[0]}.{digits[1:]}",
        }
    else:
        gpu_record = None
    return {
        "kind": "tensorrt",
        "tensorrt_version": trt.__version__,
        "builder": trt.__name__,
        "gpu": gpu_record,
        "hardware_compatible": hardware_compatible,
        "version_compatible": version_compatible,
        "build_seconds": round(time.monotonic() - started, 1),
    }


def _dim_profile(entry: dict[str, Any]) -> bool:
    """True for the export's {dim: [min, opt, max]} profile, False for a built engine's per-input one."""
    return all(name not in entry["io"] for name in entry["profile"])


def build_artifact(
    folder: Path,
    out: Path | None = None,
    *,
    builder: str = "auto",
    compute_capability: str | None = None,
    timing_cache: Path | None = None,
    hardware_compatible: bool = False,
    version_compatible: bool = False,
) -> dict[str, Any]:
    """`rynn-edge build`: engines for a verified ONNX artifact, written into it (or into a copy at
    `out`), the manifest's target, stage entries and file hashes updated, its accuracy report kept.
    Returns the new manifest."""
    source = Artifact.open(folder, check_device=False)
    trt = tensorrt_build.load_builder(builder)
    if trt is None:
        raise UserError(f"cannot build engines: {tensorrt_build.BUILD_HINT}")
    if local_gpu() is None and compute_capability is None and trt.__name__.startswith("tensorrt_rtx"):
        raise UserError(
            "no GPU here: TensorRT-RTX builds ahead of time for a named GPU family; pass "
            "--compute-capability, e.g. SM86 (RTX 30xx) or SM89 (RTX 40xx, needed for fp8)"
        )
    if out is not None and out.resolve() != folder.resolve():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: exists and is not empty; choose another -o folder")
        shutil.copytree(folder, out, dirs_exist_ok=True)
        folder = out
    manifest = dict(source.manifest)
    manifest.pop("files")
    manifest["target"] = build_all(
        trt,
        folder,
        manifest,
        timing_cache=timing_cache,
        hardware_compatible=hardware_compatible,
        version_compatible=version_compatible,
        compute_capability=compute_capability,
    )
    manifest["build"] = {
        "machine": machine(),
        # ru_maxrss is KiB on Linux: the whole process, checkpoint-free (graphs + builder)
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    return write_manifest(folder, manifest)
