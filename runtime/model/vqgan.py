"""Chameleon VQGAN image tokenizer (taming-transformers VQModel layout), inference only.

Parameter names match the upstream checkpoint (`encoder.down.0.block.1.conv1.weight`, ...), and
every op that decides a code (GroupNorm, attention, quantizer distances) is the same torch op in
the same order as upstream, so fp32 codes are bit-identical. No data-dependent shapes or Python
control flow over tensor values: the module traces to ONNX as is.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from rynn_edge.runtime.errors import UserError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))  # dropout is 0 in every released config
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over h*w positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        q = self.q(h).reshape(b, c, height * width).permute(0, 2, 1)
        k = self.k(h).reshape(b, c, height * width)
        v = self.v(h).reshape(b, c, height * width)
        weights = F.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # [b, query, key]
        out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero pad right and bottom only: torch convs cannot pad asymmetrically.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: `block` ResNet blocks, optional `attn` after each, optional resampler."""

    def __init__(self, channels_in: int, channels_out: int, n_blocks: int, with_attn: bool):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(channels_in if i == 0 else channels_out, channels_out) for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(channels_out) for _ in range(n_blocks if with_attn else 0))

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class Middle(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        widths = [ch] + [ch * m for m in ch_mult]
        res = resolution
        for i in range(len(ch_mult)):
            level = Level(widths[i], widths[i + 1], num_res_blocks, res in attn_resolutions)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(widths[i + 1])
                res //= 2
            self.down.append(level)
        self.mid = Middle(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level.run_blocks(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        resolution: int,
        z_channels: int,
    ):
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = Middle(block_in)
        levels: list[Level] = []
        for i in reversed(range(n)):  # built deepest first; stored shallowest first like upstream
            level = Level(block_in, ch * ch_mult[i], num_res_blocks + 1, res in attn_resolutions)
            block_in = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i].run_blocks(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook row by squared L2 distance; codes in raster order."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, h, w] fp32 -> codes [B, h*w] int64 (first index wins a tie)."""
        b, c, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).contiguous().view(-1, c)
        codebook = self.embedding.weight
        # Same terms, order and ops as upstream: a different association or a plain matmul
        # instead of einsum can round differently and flip near-tie codes.
        distances = (
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(codebook**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", flat, codebook.transpose(0, 1))
        )
        return torch.argmin(distances, dim=1).view(b, height * width)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] int64 -> latents [B, C, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    """`encode` images -> codes, `decode` codes -> uint8 images; fp32 reference."""

    def __init__(self, *, embed_dim: int, n_embed: int, ddconfig: dict[str, Any]):
        super().__init__()
        arch = _arch(ddconfig)
        self.downsample_factor = 2 ** (len(arch["ch_mult"]) - 1)
        self.encoder = Encoder(in_channels=ddconfig["in_channels"], **arch)
        self.decoder = Decoder(out_ch=ddconfig["out_ch"], **arch)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(arch["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, arch["z_channels"], 1)
        self.eval()

    @property
    def n_embed(self) -> int:
        return self.quantize.embedding.num_embeddings

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] float in [-1, 1] -> codes [B, (H/f)*(W/f)] int64."""
        return self.quantize(self.quant_conv(self.encoder(images)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] int64 -> images [B, h*f, w*f, 3] uint8."""
        pixels = self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))
        unit = (torch.clamp(pixels, -1.0, 1.0) + 1.0) / 2.0
        return (unit.permute(0, 2, 3, 1) * 255).to(torch.uint8)  # float -> uint8 truncates, as upstream

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)

    @classmethod
    def from_dir(cls, vq_dir: str | Path, *, trust_pickle: bool = False) -> VQGAN:
        """Build from `vqgan.yaml` and load `vqgan.ckpt` (its "state_dict") from `vq_dir`."""
        vq_dir = Path(vq_dir)
        model = cls(**read_params(vq_dir / "vqgan.yaml"))
        ckpt_path = vq_dir / "vqgan.ckpt"
        load_weights(model, read_state_dict(ckpt_path, trust_pickle=trust_pickle), source=str(ckpt_path))
        return model


_ARCH_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "z_channels")


def _arch(ddconfig: dict[str, Any]) -> dict[str, Any]:
    return {k: ddconfig[k] for k in _ARCH_KEYS}


def read_params(yaml_path: Path) -> dict[str, Any]:
    """`model.params` of a VQGAN yaml, without `lossconfig`; UserError names the file and missing key."""
    if not yaml_path.is_file():
        raise UserError(f"{yaml_path}: VQGAN config not found (expected vqgan.yaml next to vqgan.ckpt)")
    try:
        config = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{yaml_path}: not valid YAML: {err}") from err
    try:
        params = config["model"]["params"]
        out = {"embed_dim": int(params["embed_dim"]), "n_embed": int(params["n_embed"])}
        ddconfig = params["ddconfig"]
        missing = [k for k in (*_ARCH_KEYS, "in_channels", "out_ch") if k not in ddconfig]
    except (KeyError, TypeError) as err:
        raise UserError(
            f"{yaml_path}: missing key {err} (need model.params.embed_dim, n_embed, ddconfig)"
        ) from err
    if missing:
        raise UserError(f"{yaml_path}: missing key(s) model.params.ddconfig.{', '.join(missing)}")
    if ddconfig.get("double_z", True):  # upstream's default; the encoder would then emit 2*z_channels
        raise UserError(f"{yaml_path}: model.params.ddconfig.double_z must be false for a VQ tokenizer")
    out["ddconfig"] = dict(ddconfig)
    return out


def read_state_dict(ckpt_path: Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The "state_dict" of a VQGAN checkpoint; refuses pickled code objects unless trusted."""
    if not ckpt_path.is_file():
        raise UserError(f"{ckpt_path}: VQGAN checkpoint not found")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if trust_pickle:
            raise UserError(f"{ckpt_path}: cannot unpickle: {err}") from err
        # torch's message is long and suggests code changes; keep only which global it refused.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise UserError(
                f"{ckpt_path}: not a readable torch checkpoint (corrupt or not a pickle)"
            ) from err
        raise UserError(
            f"{ckpt_path}: not plain weights (it pickles {found.group(1)}, not only tensors and containers). "
            "If you trust where this file came from, pass --trust-pickle (trust_pickle=True) to load it "
            "with full unpickling, which can run arbitrary code."
        ) from err
    except (ImportError, AttributeError) as err:  # full unpickling needs the classes it references
        raise UserError(
            f"{ckpt_path}: unpickling needs code that is not installed ({err}); install it, or re-save "
            "the checkpoint's state_dict as plain tensors"
        ) from err
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        raise UserError(f"{ckpt_path}: not a readable torch checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{ckpt_path}: expected a dict with a 'state_dict' entry")
    return ckpt["state_dict"]


def load_weights(model: VQGAN, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Copy the parts `model` uses from `state_dict`, ignoring the rest (loss, discriminator) as upstream's
    strict=False load does, but refuse missing keys and shape mismatches instead of keeping random init."""
    expected = model.state_dict()
    missing = [k for k in expected if not torch.is_tensor(state_dict.get(k))]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k not in missing and state_dict[k].shape != v.shape
    ]
    if missing or mismatched:
        lines = [f"missing key {k} (shape {tuple(expected[k].shape)})" for k in missing[:10]]
        lines += [f"... and {len(missing) - 10} more missing"] if len(missing) > 10 else []
        lines += [f"shape mismatch {m}" for m in mismatched[:10]]
        raise UserError(f"{source}: VQGAN weights do not match vqgan.yaml:\n  " + "\n  ".join(lines))
    model.load_state_dict({k: state_dict[k] for k in expected}, strict=True)
