"""A small random VQGAN in the exact upstream file layout (`vqgan.yaml` + `vqgan.ckpt`), for tests and demos.

Structure matches Chameleon's tokenizer (8192 codes, five levels: 16x downsampling, mid attention),
only narrower. Weights are random but deterministic from the seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from rynn_edge.runtime.model.vqgan import VQGAN

TINY_PARAMS = {
    "embed_dim": 8,
    "n_embed": 8192,
    "ddconfig": {
        "double_z": False,
        "z_channels": 8,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}

# Chameleon's yaml also carries the training loss; readers must ignore it, so the tiny one has it too.
_LOSSCONFIG = {
    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "params": {"disc_start": 100001, "codebook_weight": 1.0, "perceptual_weight": 1.0, "disc_weight": 0.5},
}


def write_tiny_vq(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write `vqgan.yaml` and `vqgan.ckpt` into `out_dir` (created if needed) and return `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _random_model(seed)
    config = {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "taming.models.vqgan.VQModel",
            "params": {**TINY_PARAMS, "lossconfig": _LOSSCONFIG},
        }
    }
    (out_dir / "vqgan.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # An unused loss entry, like the real checkpoint's discriminator weights, that loaders must skip.
    state_dict["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    torch.save({"state_dict": state_dict}, out_dir / "vqgan.ckpt")
    return out_dir


def _random_model(seed: int) -> VQGAN:
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQGAN(**TINY_PARAMS)
    # Spread the codebook like the encoder's latents on smooth random images, so encodings use many
    # codes instead of the few rows nearest a default-initialised codebook.
    images = torch.nn.functional.interpolate(
        torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1, size=(64, 64), mode="bilinear"
    )
    with torch.no_grad():
        latents = (
            model.quant_conv(model.encoder(images)).permute(0, 2, 3, 1).reshape(-1, TINY_PARAMS["embed_dim"])
        )
        mean, std = latents.mean(0), latents.std(0)
        codebook = torch.randn(TINY_PARAMS["n_embed"], TINY_PARAMS["embed_dim"], generator=generator)
        model.quantize.embedding.weight.copy_(mean + std * codebook)
    return model
