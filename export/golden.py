"""Golden vectors: a few held-out reference queries stored in the artifact (`golden/`), so an engine
built elsewhere (`rynn-edge build`) is checked where it runs (`rynn-edge verify`) against the fp32
torch outputs, with the export's own accuracy metrics. The files are hashed in the manifest like
every other file, so a changed golden file is refused like a changed graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.export import accuracy
from rynn_edge.export.accuracy import Reference
from rynn_edge.runtime.backends.artifact import Artifact
from rynn_edge.runtime.errors import UserError

FOLDER = "golden"
QUERIES = 2  # per artifact: the hidden states of a 7B prompt are ~10 MB each


def save(out: Path, references: list[Reference]) -> list[str]:
    """Write up to QUERIES references as golden/query_N.npz; returns their artifact-relative paths."""
    (out / FOLDER).mkdir(exist_ok=True)
    written = []
    for i, ref in enumerate(references[:QUERIES]):
        arrays = {
            "ids": np.asarray(ref.ids, np.int64),
            "hidden": ref.hidden.astype(np.float32),
            "actions": ref.actions.astype(np.float32),
            "tokens": np.asarray(ref.tokens, np.int64),
        }
        for size, (pixels, codes) in ref.vq.items():
            arrays[f"vq{size}_pixels"], arrays[f"vq{size}_codes"] = pixels, codes
        for metric, value in ref.bf16.items():  # the relative gate's reference, so verify judges alike
            arrays[f"bf16_{metric}"] = np.float64(value)
        name = f"{FOLDER}/query_{i}.npz"
        np.savez_compressed(out / name, **arrays)
        written.append(name)
    return written


def load(folder: Path, names: list[str]) -> list[Reference]:
    references = []
    for name in names:
        with np.load(folder / name) as z:
            vq = {
                int(k[2:].removesuffix("_pixels")): (z[k], z[k.replace("_pixels", "_codes")])
                for k in z.files
                if k.endswith("_pixels")
            }
            bf16 = {k.removeprefix("bf16_"): float(z[k]) for k in z.files if k.startswith("bf16_")}
            references.append(
                Reference(vq, z["ids"].tolist(), z["hidden"], z["actions"], z["tokens"].tolist(), bf16)
            )
    return references


def stage_precisions(manifest: dict[str, Any]) -> dict[str, str]:
    """stage -> precision from the manifest's graph entries (vq_encoder_256 -> vq_encoder)."""
    return {
        name.removesuffix("_256").removesuffix("_512"): e["precision"]
        for name, e in manifest["stages"].items()
    }


def verify(folder: Path, backend: str = "onnxruntime") -> dict[str, Any]:
    """Replay the golden vectors through the artifact's graphs (onnxruntime) or engines (tensorrt) and
    judge them with the export's thresholds; returns the accuracy report. Every file is checked against
    the manifest's hashes first, golden files and engines included."""
    if backend == "tensorrt":
        from rynn_edge.runtime.backends.tensorrt import TensorRTBackend, require_cuda

        require_cuda()
    artifact = Artifact.open(folder, check_device=backend == "tensorrt")
    names = artifact.manifest.get("golden")
    if not names:
        raise UserError(f"{folder}: no golden vectors in this artifact; re-export it with this rynn-edge")
    references = load(artifact.path, names)
    if backend == "tensorrt":
        missing = [n for n, e in artifact.stages().items() if "engine" not in e]
        if missing:
            raise UserError(
                f"{folder}: no engines for {', '.join(missing)}; run `rynn-edge build {folder}` first"
            )

        def opener():
            return TensorRTBackend(artifact)
    else:
        from rynn_edge.runtime.backends.onnxruntime import providers

        def opener():
            return accuracy.ArenaFreeBackend(artifact, providers())

    per_query = accuracy.measure(opener, references, set(artifact.stages()))
    return accuracy.judge(accuracy.summarize(per_query), stage_precisions(artifact.manifest))
