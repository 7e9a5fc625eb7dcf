"""The torch CUDA fast backend's logic on CPU (device="cpu", fp32, no graphs) against the fp32 reference:
bucket padding + key masks, batched VQ encode/decode, the fused chunk, the preallocated decode caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_parallel_decoding import A, blocks, craft, prompt_ids

from rynn_edge.runtime import decoding
from rynn_edge.runtime.backends.cuda import CudaBackend, require_device
from rynn_edge.runtime.backends.shapes import LENGTH_BUCKET
from rynn_edge.runtime.backends.torch import TorchBackend, TorchStepModel
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.model.vqgan import VQGAN
from rynn_edge.runtime.predictor import Predictor
from rynn_edge.runtime.tokens.image_layout import ImageLayout
from rynn_edge.runtime.tokens.images import load_image, to_model_input


@pytest.fixture(scope="module")
def pair(so100_bundle):
    reference = TorchBackend(so100_bundle["model"], so100_bundle["vq"])
    cfg, backbone, head = load_model(so100_bundle["model"])
    fast = CudaBackend(
        cfg, backbone, head, VQGAN.from_dir(so100_bundle["vq"]), device="cpu", dtype=torch.float32
    )
    return reference, fast


@pytest.fixture(scope="module")
def query(pair, so100_bundle, frames):
    predictor = Predictor.open(pair[0], so100_bundle["tokenizer"], so100_bundle["vq"])
    images = [load_image(p) for p in frames[:2]]
    ids, codes = predictor.vla_prompt(images, np.zeros(6), "put the cube in the box")
    return predictor, ids, codes, to_model_input(images, 256).numpy()


def test_cuda_device_refused_with_a_clear_message() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="needs an NVIDIA GPU"):
        require_device("cuda")


def test_padded_prefill_and_head_equal_the_reference(pair, query) -> None:
    reference, fast = pair
    _, ids, _, _ = query
    assert len(ids) % LENGTH_BUCKET, "the prompt must actually be padded for this test"
    np.testing.assert_allclose(fast.actions(ids), reference.actions(ids), atol=1e-4, rtol=1e-4)
    shorter = ids[:-40] + ids[-1:]  # another length in the same bucket reuses the same static shapes
    np.testing.assert_allclose(fast.actions(shorter), reference.actions(shorter), atol=1e-4, rtol=1e-4)


def test_batched_vq_encode_decode_equal_the_reference(pair, query) -> None:
    reference, fast = pair
    _, _, codes, pixels = query
    np.testing.assert_array_equal(fast.vq_encode(pixels), codes)
    grids = codes.reshape(2, 16, 16)
    np.testing.assert_array_equal(fast.vq_decode(grids), reference.vq_decode(grids))


def test_fused_chunk_equals_host_prompt_path(pair, query) -> None:
    reference, fast = pair
    predictor, ids, codes, pixels = query
    slots = ImageLayout(16, 16).code_positions(ids)
    np.testing.assert_array_equal(np.asarray(ids)[slots], predictor.vocab.ids_from_codes(codes).reshape(-1))
    template = np.asarray(ids).copy()
    template[slots] = 0  # the graph writes the image tokens itself
    got_codes, got = fast.chunk(pixels, template.tolist(), slots, predictor.vocab.code_to_id)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_allclose(got, reference.actions(ids), atol=1e-4, rtol=1e-4)


def test_predictor_runs_the_fused_chunk_with_the_host_prompt(pair, query, so100_bundle, frames) -> None:
    """The predictor's continuous path on the cuda backend is the fused step, and it yields the same
    prompt ids and codes as the host path (the reference backend has no fused step)."""
    reference, fast = pair
    calls = []
    fused = Predictor.open(fast, so100_bundle["tokenizer"], so100_bundle["vq"])
    fast_chunk = fast.chunk
    fast.chunk = lambda *a: calls.append(a) or fast_chunk(*a)
    try:
        images = [load_image(p) for p in frames[:2]]
        state = np.array([3.5, 120, 80, -10, 5, 30])
        got = fused.predict(images, state, "put the cube in the box")
    finally:
        del fast.chunk
    want = query[0].predict(images, state, "put the cube in the box")
    assert len(calls) == 1
    assert got.prompt_ids == want.prompt_ids
    np.testing.assert_array_equal(got.vq_codes, want.vq_codes)
    np.testing.assert_allclose(got.actions_normalized, want.actions_normalized, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got.goals, want.goals, atol=1e-2)


def test_decode_cache_matches_reference_greedy(pair) -> None:
    reference, fast = pair
    prompt = [0, 16201, 16202, 16203]
    want = decoding.greedy_causal(reference.step_model(), prompt, 12)
    assert decoding.greedy_causal(fast.step_model(), prompt, 12) == want
    assert decoding.greedy_causal(fast.step_model(), prompt, 12) == want  # reused cache, same answer
    image_ids = np.arange(4, 4 + 8192)
    forced = decoding.greedy_images(fast.step_model(), prompt, image_ids, 2, 2, 2)
    assert forced == decoding.greedy_images(reference.step_model(), prompt, image_ids, 2, 2, 2)


def test_parallel_decoding_through_the_cuda_step_model(so100_bundle) -> None:
    cfg, backbone, head = load_model(so100_bundle["model"])
    craft(backbone, blocks(10004, 10004))
    sequential = decoding.greedy_actions(TorchStepModel(backbone), prompt_ids(), 4 * (A + 2))
    fast = CudaBackend(
        cfg, backbone, head, VQGAN.from_dir(so100_bundle["vq"]), device="cpu", dtype=torch.float32
    )
    model = fast.step_model()
    assert decoding.greedy_actions_parallel(model, prompt_ids(), 4, A, 4 * (A + 2)) == sequential
    assert set(model.decoder.graphs) == {4}, "one static 4-token step, no single-token fallback"
