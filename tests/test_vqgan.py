"""VQGAN tokenizer: code shapes and rules, decode path, checkpoint loading and its errors."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.vqgan import VQGAN, Downsample, VectorQuantizer
from rynn_edge.runtime.tiny.vq import write_tiny_vq

UPSTREAM_REPO = Path(
    os.environ.get("RYNN_EDGE_UPSTREAM_REPO", "/work/.mirror/alibaba-damo-academy+RynnVLA-002/repo")
)


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vq(tmp_path_factory.mktemp("vq"), seed=0)


@pytest.fixture(scope="module")
def model(vq_dir: Path) -> VQGAN:
    return VQGAN.from_dir(vq_dir)


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    noise = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear")


@pytest.mark.parametrize(("size", "n_codes"), [(256, 256), (512, 1024)])
def test_codes_are_int64_in_range_with_raster_length(model: VQGAN, size: int, n_codes: int) -> None:
    with torch.no_grad():
        codes = model.encode(smooth_images(2, size))
    assert codes.dtype == torch.int64
    assert codes.shape == (2, n_codes)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 8191


def test_tiny_vq_uses_many_codes(model: VQGAN) -> None:
    with torch.no_grad():
        codes = model.encode(smooth_images(2, 256, seed=3)).flatten()
    histogram = torch.bincount(codes, minlength=8192)
    assert int((histogram > 0).sum()) > 200  # of 512 positions
    assert int(histogram.max()) < 16


def test_batch_of_two_equals_two_singles(model: VQGAN) -> None:
    images = smooth_images(2, 256, seed=1)
    with torch.no_grad():
        batched = model.encode(images)
        singles = torch.cat([model.encode(images[:1]), model.encode(images[1:])])
    assert torch.equal(batched, singles)


def test_argmin_takes_first_index_on_ties() -> None:
    quantizer = VectorQuantizer(n_embed=6, embed_dim=2)
    codebook = torch.tensor([[5.0, 5.0], [1.0, 0.0], [9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    quantizer.embedding.weight.data.copy_(codebook)
    # Positions (row-major over a 1x3 grid): exactly row 1 (= row 3), exactly row 4 (= row 5),
    # and a point at equal distance from rows 1/3 and 4/5.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]).T.reshape(1, 2, 1, 3)
    with torch.no_grad():
        assert quantizer(z).tolist() == [[1, 4, 1]]


def test_codes_come_in_raster_order() -> None:
    quantizer = VectorQuantizer(n_embed=8, embed_dim=3)
    with torch.no_grad():
        codes = torch.tensor([[[7, 0, 3], [5, 2, 6]]])
        assert quantizer(quantizer.lookup(codes)).tolist() == [[7, 0, 3, 5, 2, 6]]


def test_quantizer_is_idempotent_on_codebook_entries(model: VQGAN) -> None:
    codes = torch.randperm(8192, generator=torch.Generator().manual_seed(0))[:1024].view(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.quantize(model.quantize.lookup(codes)), codes.view(1, -1))


def test_downsample_pads_right_and_bottom_only() -> None:
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.fill_(1.0)
        down.conv.bias.zero_()
        out = down(torch.ones(1, 1, 4, 4))
    # Windows at the right/bottom edge overlap the zero pad; the top-left one does not.
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_decode_returns_uint8_images_of_the_input_size(model: VQGAN) -> None:
    with torch.no_grad():
        codes = model.encode(smooth_images(2, 256))
        images = model.decode(codes.view(2, 16, 16))
    assert images.dtype == torch.uint8
    assert images.shape == (2, 256, 256, 3)
    assert float(images.float().std()) > 1.0


def test_decode_clamps_and_truncates_to_uint8(model: VQGAN) -> None:
    conv_out = model.decoder.conv_out
    saved = conv_out.weight.detach().clone(), conv_out.bias.detach().clone()
    try:
        with torch.no_grad():
            conv_out.weight.zero_()
            conv_out.bias.copy_(torch.tensor([0.5, -2.0, 0.999]))
            pixel = model.decode(torch.zeros(1, 1, 1, dtype=torch.int64))[0, 0, 0]
    finally:
        with torch.no_grad():
            conv_out.weight.copy_(saved[0])
            conv_out.bias.copy_(saved[1])
    # (0.5+1)/2*255 = 191.25; -2 clamps to 0; 0.999 -> 254.87 truncates (not rounds) to 254.
    assert pixel.tolist() == [191, 0, 254]


def _save_ckpt(vq_dir: Path, target: Path, **extra: object) -> Path:
    state = torch.load(vq_dir / "vqgan.ckpt", weights_only=True)
    target.mkdir(parents=True, exist_ok=True)
    (target / "vqgan.yaml").write_text((vq_dir / "vqgan.yaml").read_text())
    torch.save({**state, **extra}, target / "vqgan.ckpt")
    return target


def test_pickle_with_objects_is_refused_unless_trusted(vq_dir: Path, model: VQGAN, tmp_path: Path) -> None:
    # Lightning checkpoints carry hyper-parameter objects like this one next to the weights.
    pickled = _save_ckpt(vq_dir, tmp_path / "pickled", hyper_parameters=argparse.Namespace(lr=1e-4))
    with pytest.raises(UserError, match=r"vqgan\.ckpt: not plain weights.*--trust-pickle"):
        VQGAN.from_dir(pickled)
    trusted = VQGAN.from_dir(pickled, trust_pickle=True)
    images = smooth_images(1, 256)
    with torch.no_grad():
        assert torch.equal(trusted.encode(images), model.encode(images))


def test_trusted_pickle_naming_an_absent_module_is_a_user_error(
    vq_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gone_module.py").write_text("class Callback:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    callback = importlib.import_module("gone_module").Callback()
    pickled = _save_ckpt(vq_dir, tmp_path / "pickled", callbacks=callback)
    monkeypatch.delitem(sys.modules, "gone_module")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(
        UserError, match=r"vqgan\.ckpt: unpickling needs code that is not installed.*gone_module"
    ):
        VQGAN.from_dir(pickled, trust_pickle=True)


def test_missing_files_are_named(vq_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"vqgan\.yaml: VQGAN config not found"):
        VQGAN.from_dir(tmp_path)
    (tmp_path / "vqgan.yaml").write_text((vq_dir / "vqgan.yaml").read_text())
    with pytest.raises(UserError, match=r"vqgan\.ckpt: VQGAN checkpoint not found"):
        VQGAN.from_dir(tmp_path)


def test_missing_yaml_key_is_named(vq_dir: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((vq_dir / "vqgan.yaml").read_text())
    del config["model"]["params"]["ddconfig"]["ch_mult"]
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match=r"vqgan\.yaml: missing key.*ddconfig\.ch_mult"):
        VQGAN.from_dir(tmp_path)


def test_missing_weight_and_shape_mismatch_are_reported(vq_dir: Path, tmp_path: Path) -> None:
    state = torch.load(vq_dir / "vqgan.ckpt", weights_only=True)["state_dict"]
    del state["encoder.conv_in.weight"]
    state["quant_conv.weight"] = torch.zeros(8, 4, 1, 1)
    (tmp_path / "vqgan.yaml").write_text((vq_dir / "vqgan.yaml").read_text())
    torch.save({"state_dict": state}, tmp_path / "vqgan.ckpt")
    with pytest.raises(UserError) as err:
        VQGAN.from_dir(tmp_path)
    message = str(err.value)
    assert "vqgan.ckpt" in message
    assert "missing key encoder.conv_in.weight (shape (32, 3, 3, 3))" in message
    assert "quant_conv.weight: checkpoint (8, 4, 1, 1) vs model (8, 8, 1, 1)" in message


def test_loss_keys_in_checkpoint_are_ignored(vq_dir: Path) -> None:
    state = torch.load(vq_dir / "vqgan.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("loss.") for k in state)
    VQGAN.from_dir(vq_dir)


def _upstream_vqgan_module(tmp_path: Path):
    if not (UPSTREAM_REPO / "HEAD").exists():
        pytest.skip(f"upstream RynnVLA-002 mirror not found at {UPSTREAM_REPO} (set RYNN_EDGE_UPSTREAM_REPO)")
    source = subprocess.run(
        ["git", "-C", str(UPSTREAM_REPO), "show", "HEAD:rynnvla-002/model/chameleon_vae_ori/vqgan.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path / "upstream_vqgan.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("upstream_vqgan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("attn_resolutions", [[], [16]])
def test_bit_exact_with_upstream(vq_dir: Path, tmp_path: Path, attn_resolutions: list[int]) -> None:
    upstream = _upstream_vqgan_module(tmp_path)
    config = yaml.safe_load((vq_dir / "vqgan.yaml").read_text())
    params = config["model"]["params"]
    params["ddconfig"]["attn_resolutions"] = attn_resolutions
    torch.manual_seed(1)
    ours = VQGAN(**{k: v for k, v in params.items() if k != "lossconfig"})
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": ours.state_dict()}, tmp_path / "vqgan.ckpt")
    ours = VQGAN.from_dir(tmp_path)
    del params["lossconfig"]
    reference = upstream.VQModel(**params, ckpt_path=str(tmp_path / "vqgan.ckpt")).eval()
    assert set(reference.state_dict()) == set(ours.state_dict())

    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        _, _, (_, _, reference_codes) = reference.encode(images)
        codes = ours.encode(images)
        assert torch.equal(codes, reference_codes.view(2, -1))
        latents = reference.quantize.get_codebook_entry(reference_codes, (2, 16, 16, params["embed_dim"]))
        pixels = (torch.clamp(reference.decode(latents), -1.0, 1.0) + 1.0) / 2.0
        reference_images = (pixels.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        assert np.array_equal(ours.decode(codes.view(2, 16, 16)).numpy(), reference_images)
