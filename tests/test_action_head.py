from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.tiny.model import write_tiny_model

TOL = {"atol": 1e-5, "rtol": 1e-5}
T, A, H = 20, 6, 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny"),
        "so100",
        hidden_size=H,
        num_layers=1,
        intermediate_size=512,
        vocabulary_map=None,
    )


@pytest.fixture(scope="module")
def head(model_dir):
    return load_model(model_dir)[2]


def reference(sd: dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
    """Upstream's per-sample computation with torch's own nn.TransformerEncoderLayer: unpadded context
    [L, H] then the T*A queries, last T*A outputs regrouped to [T, A*d], MLP-ResNet -> [T, A]."""
    w = {k.removeprefix("action_head."): v.float() for k, v in sd.items() if k.startswith("action_head.")}
    d = w["hidden_projection.weight"].shape[0]
    layers = [nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True).eval() for _ in range(2)]
    for i, layer in enumerate(layers):
        p = f"transformer_encoder.layers.{i}."
        layer.load_state_dict({k.removeprefix(p): v for k, v in w.items() if k.startswith(p)})
    ln = nn.functional.layer_norm

    def norm(x, p):
        return ln(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"])

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    x = torch.cat([context, w["action_token_embeddings.weight"].view(T * A, H)])
    x = lin(x, "hidden_projection")[None]
    for layer in layers:
        x = layer(x)
    x = norm(x, "transformer_encoder.norm")[0, -T * A :].reshape(T, A * d)
    m = "output_projection.model."
    x = torch.relu(lin(norm(x, m + "layer_norm1"), m + "fc1"))
    for i in range(2):
        b = f"{m}mlp_resnet_blocks.{i}.ffn."
        x = x + torch.relu(lin(norm(x, b + "0"), b + "1"))
    return lin(norm(x, m + "layer_norm2"), m + "fc2")


def test_matches_torch_encoder_reference(model_dir, head):
    context = torch.randn(30, H, generator=torch.Generator().manual_seed(0))
    out = head(context[None], torch.ones(1, 30, dtype=torch.bool))
    assert out.shape == (1, T, A) and out.std() > 0.1
    with torch.no_grad():
        want = reference(load_file(model_dir / "model.safetensors"), context)
    torch.testing.assert_close(out[0], want, **TOL)


def test_padded_batch_equals_unpadded(head):
    g = torch.Generator().manual_seed(1)
    lengths = [13, 30, 21]
    hidden = torch.randn(3, 30, H, generator=g)
    valid = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    hidden[~valid] = float("nan")  # padding content must not matter at all
    out = head(hidden, valid)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out[i : i + 1], head(hidden[i : i + 1, :n], valid[i : i + 1, :n]), **TOL)


def test_padding_in_the_middle_is_equivalent(head):
    """Keys are masked wherever they sit: a bidirectional encoder without positions ignores order."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 20, H, generator=g)
    valid = torch.ones(1, 20, dtype=torch.bool)
    valid[0, 5:9] = False
    kept = hidden[:, valid[0]]
    torch.testing.assert_close(head(hidden, valid), head(kept, torch.ones(1, 16, dtype=torch.bool)), **TOL)


def test_query_layout_time_major(head):
    """Query q is (step q // A, dim q % A): swapping the A-row blocks of steps 3 and 11 swaps exactly
    output rows 3 and 11 (the encoder is permutation-equivariant; only the regroup sees the order)."""
    hidden = torch.randn(1, 10, H, generator=torch.Generator().manual_seed(3))
    valid = torch.ones(1, 10, dtype=torch.bool)
    before = head(hidden, valid)
    q = head.action_token_embeddings.weight
    saved = q.clone()
    rows = q.view(T, A, H)
    try:
        rows[[3, 11]] = rows[[11, 3]]
        after = head(hidden, valid)
        swapped = before.clone()
        swapped[:, [3, 11]] = before[:, [11, 3]]
        torch.testing.assert_close(after, swapped, **TOL)
        rows[5, [0, 1]] = rows[5, [1, 0]]  # swap two dims within one step: the regroup must notice
        assert (head(hidden, valid) - after).abs().max() > 1e-3
    finally:
        q.copy_(saved)


def test_output_changes_with_one_query_row(head):
    hidden = torch.randn(1, 10, H, generator=torch.Generator().manual_seed(4))
    valid = torch.ones(1, 10, dtype=torch.bool)
    before = head(hidden, valid)
    q = head.action_token_embeddings.weight
    saved = q.clone()
    try:
        q.view(T * A, H)[17] += 1.0
        assert (head(hidden, valid) - before).abs().max() > 1e-3
    finally:
        q.copy_(saved)
