"""The second stress checkpoint (make-tiny-checkpoint --outliers heads) has the structures it claims,
measured on a forward pass of a real VLA prompt: attention-sink heads on image-start/row-end tokens,
outlier channels that differ by layer, near-tied discrete action logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.torch import TorchBackend
from rynn_edge.runtime.cli import main
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.predictor import Predictor
from rynn_edge.runtime.tiny.bundle import write_tiny_bundle
from rynn_edge.runtime.tokens import vocab as V

STATE = np.array([10.0, 80.0, 90.0, 20.0, 5.0, 30.0])


@pytest.fixture(scope="module")
def heads_bundle(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_bundle(tmp_path_factory.mktemp("heads"), "so100", layers=3, seed=0, outliers="heads")


@pytest.fixture(scope="module")
def prompt(heads_bundle, frames) -> list[int]:
    backend = TorchBackend(heads_bundle["model"], heads_bundle["vq"])
    predictor = Predictor.open(backend, heads_bundle["tokenizer"], heads_bundle["vq"], image_size=256)
    images = [Image.open(frames[0]).convert("RGB"), Image.open(frames[1]).convert("RGB")]
    ids, _ = predictor.vla_prompt(images, STATE, "pick up the cube")
    return ids


def _attention_inputs(backbone, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: (normed input x [L, H], rotated q and k [heads, L, head_dim]) of one prefill."""
    seen = []
    for layer in backbone.layers:
        attention = layer.self_attn
        qkv = attention.qkv

        def capture(x, cos, sin, qkv=qkv):
            q, k, v = qkv(x, cos, sin)
            seen.append((x[0], q[0], k[0]))
            return q, k, v

        attention.qkv = capture
    t = torch.tensor([ids])
    with torch.inference_mode():
        backbone.prefill(t, torch.arange(len(ids))[None], torch.ones_like(t, dtype=torch.bool))
    return seen


def test_heads_checkpoint_has_its_outlier_structures(heads_bundle, prompt):
    _, backbone, _ = load_model(heads_bundle["model"], dtype=torch.float32)
    sinks = torch.tensor([i in (V.IMAGE_START_ID, V.ROW_END_ID) for i in prompt])
    assert 8 < int(sinks.sum()) < len(prompt) // 8  # a real prompt: 2 images, a row end per code row
    first = int(torch.nonzero(sinks)[0])
    outlier_sets = []
    for x, q, k in _attention_inputs(backbone, prompt):
        n = len(prompt)
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), float("-inf"))
        mass = scores.softmax(-1)[:, first + 1 :, sinks].sum(-1).mean(-1)  # per head, queries after a sink
        # one head per layer attends to the 8197/8803 tokens, which are ~5% of the prompt
        assert mass.max() > 0.7 and mass.min() < 0.15, mass
        ratio = x.abs().amax(0) / x.abs().median()
        outlier_sets.append(set(torch.nonzero(ratio > 30).flatten().tolist()))
    assert all(len(s) >= 3 for s in outlier_sets), outlier_sets
    assert all(a != b for a in outlier_sets for b in outlier_sets if a is not b), outlier_sets

    step = TorchBackend(heads_bundle["model"], heads_bundle["vq"]).step_model()
    tokens = decoding.greedy_actions(step, prompt, 8)
    assert all(V.ACTION_VALUE_OFFSET <= t < V.ACTION_VALUE_OFFSET + V.N_BINS for t in tokens)
    logits = step.begin(prompt, len(prompt) + 1)
    top2 = np.sort(logits)[-2:]
    assert top2[1] - top2[0] < 0.02 * top2[1] and top2[1] > 5 * logits.std()  # a near tie at the top


def test_make_tiny_checkpoint_outliers_kinds(tmp_path, capsys):
    for name, flags in (("plain", []), ("channels", ["--outliers"]), ("heads", ["--outliers", "heads"])):
        assert main(["make-tiny-checkpoint", str(tmp_path / name), "--layers", "1", *flags]) == 0
    state = {n: load_model(tmp_path / n / "model")[1].state_dict() for n in ("plain", "channels", "heads")}
    embed = "embed_tokens.weight"
    assert not torch.equal(state["channels"][embed], state["heads"][embed])
    assert not torch.equal(state["plain"][embed], state["heads"][embed])
    assert not torch.equal(state["plain"][embed], state["channels"][embed])
    same = write_tiny_bundle(tmp_path / "again", "so100", layers=1, seed=0, outliers="heads")
    assert torch.equal(load_model(same["model"])[1].state_dict()[embed], state["heads"][embed])
    assert main(["make-tiny-checkpoint", str(tmp_path / "bad"), "--outliers", "rows"]) == 2
    assert not (tmp_path / "bad").exists()
    assert "invalid choice: 'rows'" in capsys.readouterr().err
