"""An exported artifact folder and its manifest.json: read, verify, refuse what cannot be trusted.

Runtime code: the robot computer opens artifacts, the export side only writes them. Every file of
the folder except the manifest is listed with its sha256 and size; TensorRT engines additionally
record the GPU (name, compute capability) and TensorRT version they were built for, because an
engine only runs where it was built (unless built hardware/version compatible).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rynn_edge.runtime.errors import UserError

MANIFEST = "manifest.json"
# The networks an artifact can hold, in the order of one query.
STAGES = ("vq_encoder", "backbone_prefill", "action_head", "backbone_decode", "vq_decoder")
STAGE_FILE_KEYS = ("onnx", "external_data", "engine")  # a stage entry's keys that name a hashed file
FORMAT = "rynn-edge-artifact"
FORMAT_VERSION = 1
CHUNK = 1 << 20
REEXPORT = "Re-export it with `rynn-edge export` (on this machine for TensorRT engines)."


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of every file under `folder` except the manifest."""
    return {
        path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file, then write manifest.json (its own bytes are the only thing not hashed)."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": file_table(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass(frozen=True)
class LocalGPU:
    name: str
    compute_capability: str  # "8.7"


def local_gpu() -> LocalGPU | None:
    """The first CUDA GPU as torch sees it, or None (no torch CUDA build, no driver, no device)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return LocalGPU(torch.cuda.get_device_name(0), f"{major}.{minor}")


def local_tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def is_artifact(cls, folder: str | Path) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    @classmethod
    def open(cls, folder: str | Path, *, check_device: bool = True, stage: str | None = None) -> Artifact:
        """Read and verify (every file, or only those of `stage`); raises UserError naming the problem
        and what to do."""
        folder = Path(folder)
        manifest = _read_manifest(folder)
        _verify_files(folder, manifest, stage)
        artifact = cls(folder, manifest)
        if check_device and artifact.target.get("kind") == "tensorrt":
            _verify_engine_target(folder, artifact.target, local_gpu(), local_tensorrt_version())
        return artifact

    @classmethod
    def read(cls, folder: str | Path) -> Artifact:
        """The manifest alone, no file hashed: a quick look at what the artifact needs (`doctor`)."""
        folder = Path(folder)
        return cls(folder, _read_manifest(folder))

    def device_problem(self, gpu: LocalGPU | None, trt_version: str | None) -> str | None:
        """Why this artifact's TensorRT engines cannot run on `gpu` with `trt_version`; None if they can."""
        if self.target.get("kind") != "tensorrt":
            return None
        try:
            _verify_engine_target(self.path, self.target, gpu, trt_version)
        except UserError as err:
            return str(err)
        return None

    @property
    def target(self) -> dict[str, Any]:
        return self.manifest.get("target", {})

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    def stages(self) -> dict[str, dict[str, Any]]:
        return self.manifest["stages"]

    def stage_file(self, stage: str, key: str = "onnx") -> Path:
        entry = self.stages().get(stage)
        if entry is None or key not in entry:
            have = ", ".join(sorted(self.stages())) or "none"
            raise UserError(
                f"{self.path}: artifact has no {stage} {key} (stages: {have}). "
                f"Re-export with `rynn-edge export ... --stages` including {stage.rsplit('_', 1)[0]}."
            )
        return self.path / entry[key]

    def asset(self, key: str) -> Path:
        return self.path / self.manifest["assets"][key]


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder}: no {MANIFEST}; this is not a rynn-edge artifact folder. {REEXPORT}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); the artifact is damaged. {REEXPORT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a rynn-edge manifest. {REEXPORT}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: manifest format {manifest.get('format_version')}, this rynn-edge reads "
            f"{FORMAT_VERSION}. {REEXPORT}"
        )
    for key in ("files", "stages", "model", "assets"):
        if not isinstance(manifest.get(key), dict):
            raise UserError(f"{path}: manifest has no '{key}' table; the artifact is damaged. {REEXPORT}")
    return manifest


def _verify_files(folder: Path, manifest: dict[str, Any], stage: str | None = None) -> None:
    problems = []
    files = manifest["files"]
    if stage is not None:
        entry = manifest["stages"].get(stage, {})
        files = {name: files.get(name, {}) for key, name in entry.items() if key in STAGE_FILE_KEYS}
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.get("bytes"):
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {entry.get('bytes')}")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest (file changed or corrupted)")
    listed = set(manifest["files"])
    referenced = {
        value
        for entry in manifest["stages"].values()
        for key, value in entry.items()
        if key in STAGE_FILE_KEYS
    } | set(manifest["assets"].values())
    problems += [
        f"{name}: used by the manifest but not listed with a hash"
        for name in sorted(referenced)
        if name not in listed and not any(f.startswith(name + "/") for f in listed)  # a folder asset
    ]
    if problems:
        raise UserError(
            f"{folder}: artifact failed verification ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems[:20])
            + f"\nDo not run it. {REEXPORT}"
        )


def _verify_engine_target(
    folder: Path, target: dict[str, Any], gpu: LocalGPU | None, trt_version: str | None
) -> None:
    built = target.get("gpu") or {}
    built_desc = f"{built.get('name', '?')} (compute capability {built.get('compute_capability', '?')})"
    if gpu is None:
        raise UserError(
            f"{folder}: TensorRT engines built for {built_desc}, but this machine has no usable NVIDIA GPU. "
            "Run it on that GPU, or export with --target onnxruntime for CPU use."
        )
    if not target.get("hardware_compatible") and gpu.compute_capability != built.get("compute_capability"):
        raise UserError(
            f"{folder}: TensorRT engines built for {built_desc}; this GPU is {gpu.name} (compute capability "
            f"{gpu.compute_capability}). Engines only run on the GPU they were built for. {REEXPORT}"
        )
    built_trt = target.get("tensorrt_version")
    if trt_version is None:
        raise UserError(
            f"{folder}: engines need TensorRT {built_trt}, which is not installed here "
            "(pip install tensorrt, or JetPack's python3-libnvinfer)."
        )
    if not target.get("version_compatible") and trt_version != built_trt:
        raise UserError(
            f"{folder}: engines built with TensorRT {built_trt}; this machine has {trt_version}. {REEXPORT}"
        )
