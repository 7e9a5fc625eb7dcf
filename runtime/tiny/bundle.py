"""The whole tiny bundle: model, tokenizer and VQGAN folders side by side, as upstream lays them out."""

from __future__ import annotations

from pathlib import Path

from rynn_edge.runtime.tiny.model import write_tiny_model
from rynn_edge.runtime.tiny.tokenizer import write_tiny_tokenizer
from rynn_edge.runtime.tiny.vq import write_tiny_vq


def write_tiny_bundle(
    out: Path,
    preset: str = "so100",
    *,
    hidden_size: int = 256,
    layers: int = 2,
    intermediate_size: int | None = None,
    time_horizon: int | None = None,
    shard_bytes: int | None = None,
    seed: int = 0,
    outliers: bool | str = False,
) -> dict[str, Path]:
    """OUT/model, OUT/tokenizer, OUT/vq: a deterministic random bundle in the upstream layout.
    `outliers`: a stress structure, tiny.model.STRESS ("channels" or True, "heads")."""
    paths = {"model": out / "model", "tokenizer": out / "tokenizer", "vq": out / "vq"}
    write_tiny_vq(paths["vq"], seed=seed)
    vocabulary_map = write_tiny_tokenizer(paths["tokenizer"], paths["vq"], seed=seed)
    write_tiny_model(
        paths["model"],
        preset,
        hidden_size=hidden_size,
        num_layers=layers,
        intermediate_size=intermediate_size or 2 * hidden_size,
        vocabulary_map=vocabulary_map,
        seed=seed,
        max_shard_bytes=shard_bytes,
        time_horizon=time_horizon,
        outliers=outliers,
    )
    return paths
