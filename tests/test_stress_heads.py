"""The second stress checkpoint (make-tiny-checkpoint --outliers heads): its structures measured on a
forward pass, not read off the weights: sink heads on image-start/row-end tokens, outlier channels that
differ by layer, near-tie action logits. Plus the CLI spelling of both kinds and determinism."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rynn_edge.runtime.cli import main
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.tiny.bundle import write_tiny_bundle
from rynn_edge.runtime.tiny.model import SINK_TOKENS
from rynn_edge.runtime.tokens.vocab import (
    ACTION_VALUE_OFFSET,
    IMAGE_END_ID,
    IMAGE_START_ID,
    N_BINS,
    ROW_END_ID,
)

ROWS = [t for r in range(16) for t in [*range(100 + 16 * r, 116 + 16 * r), ROW_END_ID]]
IDS = torch.tensor([[0, *range(20000, 20030), IMAGE_START_ID, 8812, 8812, *ROWS, IMAGE_END_ID, 8710]])


def _forward(folder, outliers: str | None):
    """Per layer: softmax attention [heads, L, L] and the q/k/v input [L, H]; then the final logits."""
    bundle = write_tiny_bundle(folder, "so100", layers=3, seed=0, outliers=outliers)
    _, backbone, _ = load_model(bundle["model"], dtype=torch.float32)
    inputs = []
    hooks = [layer.register_forward_pre_hook(lambda m, a: inputs.append(a)) for layer in backbone.layers]
    n = IDS.shape[1]
    with torch.no_grad():
        hidden = backbone.prefill(IDS, torch.arange(n)[None], torch.ones_like(IDS, dtype=torch.bool))
        for hook in hooks:
            hook.remove()
        layers = []
        for layer, (x, cos, sin, *_) in zip(backbone.layers, inputs, strict=True):
            normed = layer.input_layernorm(x)
            q, k, _ = layer.self_attn.qkv(normed, cos, sin)
            scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            layers.append((scores.masked_fill(~causal, float("-inf")).softmax(-1)[0], normed[0]))
        return layers, backbone.logits(hidden)[0]


@pytest.fixture(scope="module")
def forward(tmp_path_factory):
    return _forward(tmp_path_factory.mktemp("heads"), "heads")


def _action_margins(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit among the 256 action-value tokens, per position."""
    top = logits[:, ACTION_VALUE_OFFSET + 1 : ACTION_VALUE_OFFSET + 1 + N_BINS].topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def test_sink_heads_attend_to_image_start_and_row_end(forward):
    layers, _ = forward
    sink = torch.isin(IDS[0], torch.tensor(SINK_TOKENS))
    after = int(sink.nonzero()[0]) + 1  # queries that can see a sink token
    for i, (attention, _) in enumerate(layers):
        mass = attention[:, after:][..., sink].sum(-1)  # [heads, queries]
        sink_head = i % attention.shape[0]
        assert mass[sink_head].min() > 0.95, (i, mass[sink_head].min())
        others = [h for h in range(attention.shape[0]) if h != sink_head]
        assert mass[others].mean() < 0.2, (i, mass[others].mean())


def test_outlier_channels_differ_by_layer(forward):
    layers, _ = forward
    tops = []
    for _, normed in layers:
        peak = normed.abs().amax(0)
        values, channels = peak.topk(3)
        assert values.min() > 10 * peak.median()
        tops.append(set(channels.tolist()))
    assert all(a.isdisjoint(b) for i, a in enumerate(tops) for b in tops[i + 1 :]), tops


def test_action_logits_have_narrow_top1_margins(forward, tmp_path):
    _, logits = forward
    bins = logits[:, ACTION_VALUE_OFFSET + 1 : ACTION_VALUE_OFFSET + 1 + N_BINS]
    assert bins.max(-1).values.median() > 3 * logits.std(), "the action bins lead the rest of the vocabulary"
    _, plain = _forward(tmp_path, None)
    narrow, usual = _action_margins(logits).median(), _action_margins(plain).median()
    assert narrow < usual / 4, (narrow, usual)


def test_cli_outliers_kinds_and_determinism(tmp_path):
    assert main(["make-tiny-checkpoint", str(tmp_path / "a"), "--outliers", "heads", "--layers", "1"]) == 0
    assert main(["make-tiny-checkpoint", str(tmp_path / "b"), "--layers", "1", "--outliers", "heads"]) == 0
    assert main(["make-tiny-checkpoint", str(tmp_path / "c"), "--layers", "1", "--outliers"]) == 0
    a, b, c = (load_file(str(tmp_path / x / "model" / "model.safetensors")) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    massive = write_tiny_bundle(tmp_path / "d", "so100", layers=1, outliers="massive")
    d = load_file(str(massive["model"] / "model.safetensors"))
    assert all(torch.equal(c[k], d[k]) for k in c), "plain --outliers is the original kind"
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
