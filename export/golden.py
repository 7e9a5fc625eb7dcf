"""Golden vectors: a few held-out reference queries stored in the artifact (`golden/`), so an engine
built elsewhere (`rynn-edge build`) is checked where it runs (`rynn-edge verify`) against the fp32
torch outputs, with the export's own accuracy metrics. The files are hashed in the manifest like
every other file, so a changed golden file is refused like a changed graph."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rynn_edge.export import accuracy
from rynn_edge.export.accuracy import Reference
from rynn_edge.runtime.backends.artifact import MANIFEST, REEXPORT, Artifact
from rynn_edge.runtime.errors import UserError

FOLDER = "golden"
QUERIES = 2  # per artifact: the hidden states of a 7B prompt are ~10 MB each
ARRAYS = {"ids": ("iu", 1), "tokens": ("iu", 1), "hidden": ("f", 2), "actions": ("f", 2)}  # kinds, ndim
ARRAY_KINDS = {"iu": "integer", "f": "float"}


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
        name = f"{FOLDER}/query_{i}.npz"
        np.savez_compressed(out / name, **arrays)
        written.append(name)
    return written


def names(artifact: Artifact) -> list[str]:
    """The manifest's golden files, each one of its hashed files under golden/ (so verified, and inside)."""
    listed = artifact.manifest.get("golden")
    if not listed:
        raise UserError(
            f"{artifact.path}: no golden vectors in this artifact; re-export it with this rynn-edge"
        )
    if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
        raise UserError(f"{artifact.path / MANIFEST}: 'golden' is not a list of file names. {REEXPORT}")
    unhashed = [n for n in listed if n not in artifact.manifest["files"] or not n.startswith(f"{FOLDER}/")]
    if unhashed:
        raise UserError(
            f"{artifact.path}: golden file(s) {', '.join(unhashed)} listed in the manifest but not among its "
            f"hashed files under {FOLDER}/; the artifact is damaged. {REEXPORT}"
        )
    return listed


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a golden .npz, never unpickling anything."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a golden .npz ({err}). {REEXPORT}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: a single array, not a golden .npz. {REEXPORT}")
    with loaded:
        try:
            return {key: loaded[key] for key in loaded.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{path}: refused, {err}. {REEXPORT}") from None


def _check(path: Path, z: dict[str, np.ndarray], model: dict[str, Any]) -> None:
    """Kinds and shapes against the artifact's model, so a damaged file never reaches a graph."""

    def refuse(problem: str) -> None:
        raise UserError(f"{path}: {problem}. {REEXPORT}")

    for key, (kinds, ndim) in ARRAYS.items():
        if key not in z:
            refuse(f"no {key!r} array")
        if z[key].dtype.kind not in kinds or z[key].ndim != ndim:
            refuse(f"{key!r} is {z[key].dtype} {z[key].ndim}-D, expected {ARRAY_KINDS[kinds]} {ndim}-D")
    shapes = {
        "hidden": (len(z["ids"]), model["hidden_size"]),
        "actions": (model["time_horizon"], model["action_dim"]),
    }
    for key, shape in shapes.items():
        if z[key].shape != shape:
            refuse(f"{key!r} is {list(z[key].shape)}, this model's are {list(shape)}")
    ids = np.concatenate([z["ids"], z["tokens"]])
    if ids.size and (ids.min() < 0 or ids.max() >= model["vocab_size"]):
        refuse(f"token ids outside the vocabulary 0..{model['vocab_size'] - 1}")
    for key in (k for k in z if k.endswith("_pixels")):
        size, codes = key[2:].removesuffix("_pixels"), key.replace("_pixels", "_codes")
        if not size.isdigit() or z[key].shape[1:] != (3, int(size), int(size)) or z[key].dtype.kind != "f":
            refuse(f"{key!r} is {z[key].dtype} {list(z[key].shape)}, expected float [N, 3, {size}, {size}]")
        if (
            codes not in z
            or z[codes].ndim != 2
            or len(z[codes]) != len(z[key])
            or z[codes].dtype.kind not in "iu"
        ):
            refuse(f"{key!r} has no matching {codes!r} (integer [N, codes])")


def load(artifact: Artifact, listed: list[str]) -> list[Reference]:
    references = []
    for name in listed:
        path = artifact.path / name
        z = _arrays(path)
        _check(path, z, artifact.model)
        vq = {
            int(k[2:].removesuffix("_pixels")): (z[k], z[k.replace("_pixels", "_codes")])
            for k in z
            if k.endswith("_pixels")
        }
        references.append(Reference(vq, z["ids"].tolist(), z["hidden"], z["actions"], z["tokens"].tolist()))
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
    references = load(artifact, names(artifact))
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
    precisions = stage_precisions(artifact.manifest)
    return accuracy.judge(accuracy.summarize(per_query), precisions, artifact.manifest.get("bf16_reference"))
