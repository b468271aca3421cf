"""Image codecs: map images (float tensors in [-1, 1], [B, 3, H, W]) to the space the diffusion model sees.

`PixelCodec` is the identity (pixel-space training). `DiffusersVAE` wraps a diffusers `AutoencoderKL` and
normalises its latents in one of two ways:
- a scalar scaling, x = (z - shift_factor) * scaling_factor (LDM/DiT: 0.18215 for the SD kl-f8 VAE;
  MicroDiT §B: MicroDiT uses the SDXL VAE's own `scaling_factor` and samples the posterior);
- CAD-I's channel-wise normalisation, x = (z - mu_c) * 0.5 / sigma_c (ImageNet-T2I App. C encodes with
  `stabilityai/sd-vae-ft-ema`; stats below from its `models/preprocessing.py`, T2I-ImageNet's diffusion code).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from microt2i.encoders.hub import resolve_pretrained
from ..world.vae import WORLD_VAE_DIR

SD_SCALING_FACTOR = 0.18215  # SD-1.x kl-f8 latents (LDM, DiT); also the `scaling_factor` in sd-vae-ft-ema's config
SD15_CHANNEL_MEAN = (5.81, 3.25, 0.12, -2.15)  # CAD-I: per-channel mean of SD-1.5 VAE latents
SD15_CHANNEL_STD = (4.17, 4.62, 3.71, 3.28)  # CAD-I: per-channel std of SD-1.5 VAE latents
CHANNEL_TARGET_STD = 0.5  # CAD-I scales each channel to std 0.5 (= EDM's sigma_data)
# The shipped world VAE's raw per-channel stats on held-out renders (`latent_stats`; tests/test_codec.py re-measures
# them): its channels are uneven (std 0.31 … 2.53), so one scalar leaves channel 2 at a fifth of the others' scale
WORLD_CHANNEL_MEAN = (0.214, -0.173, 0.118, 0.108)
WORLD_CHANNEL_STD = (1.526, 1.015, 0.307, 2.532)
# `data.latent_norm` → DiffusersVAE options; "scaling" keeps the VAE config's scaling_factor / shift_factor
LATENT_NORMS = {"scaling": {}, "sd15-channel": {"channel_mean": SD15_CHANNEL_MEAN, "channel_std": SD15_CHANNEL_STD},
                "world-channel": {"channel_mean": WORLD_CHANNEL_MEAN, "channel_std": WORLD_CHANNEL_STD}}


class Codec(Protocol):
    name: str
    channels: int
    factor: int

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor: ...
    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]: ...
    def decode(self, latents: Tensor) -> Tensor: ...
    def meta(self) -> dict: ...


class PixelCodec:
    """Identity codec for pixel-space models: latents are the images themselves."""

    name = "pixel"
    channels = 3
    factor = 1

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return images.float()

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of the posterior: the image itself, with no spread."""
        return images.float(), torch.zeros_like(images, dtype=torch.float32)

    def decode(self, latents: Tensor) -> Tensor:
        return latents.float().clamp(-1, 1)

    def meta(self) -> dict:
        """JSON-serialisable description of the latent space (for a store's cache key)."""
        return {"codec": "pixel"}


class DiffusersVAE:
    """A diffusers `AutoencoderKL` (hub id or local folder, safetensors only) with latent normalisation.

    `scaling_factor`/`shift_factor` default to the VAE config's values; `channel_mean`/`channel_std` switch to
    channel-wise normalisation instead. `sample=True` draws from the posterior (MicroDiT), else its mean.
    The VAE runs in fp32 by default (DESIGN §4); inputs and outputs are float32 on the caller's device.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        subfolder: str | None = None,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        channel_mean: Sequence[float] | None = None,
        channel_std: Sequence[float] | None = None,
        sample: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
    ):
        from diffusers import AutoencoderKL  # heavy import, paid only when a VAE is used

        folder = resolve_pretrained(name_or_path, what="VAE", subfolder=subfolder)
        self.vae = AutoencoderKL.from_pretrained(
            folder, subfolder=subfolder, use_safetensors=True, low_cpu_mem_usage=False, torch_dtype=dtype
        )
        self.vae.to(device).eval().requires_grad_(False)
        config = self.vae.config
        self.name = str(name_or_path) + (f":{subfolder}" if subfolder else "")
        self.channels = config.latent_channels
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.sample, self.device, self.dtype, self.batch_size = sample, torch.device(device), dtype, batch_size

        if (channel_mean is None) != (channel_std is None):
            raise ValueError("channel-wise normalisation needs both channel_mean and channel_std")
        if channel_mean is not None:
            if scaling_factor is not None or shift_factor is not None:
                raise ValueError("pass either channel_mean/channel_std or scaling_factor/shift_factor, not both")
            if len(channel_mean) != self.channels or len(channel_std) != self.channels:
                raise ValueError(f"channel stats need {self.channels} values (the VAE's latent channels)")
            shift = torch.tensor(channel_mean, dtype=torch.float64)
            scale = CHANNEL_TARGET_STD / torch.tensor(channel_std, dtype=torch.float64)
        else:
            scaling_factor = config.scaling_factor if scaling_factor is None else scaling_factor
            shift_factor = (getattr(config, "shift_factor", None) or 0.0) if shift_factor is None else shift_factor
            shift = torch.full((self.channels,), float(shift_factor), dtype=torch.float64)
            scale = torch.full((self.channels,), float(scaling_factor), dtype=torch.float64)
        self.shift, self.scale = shift, scale  # per channel, float64: x = (z - shift) * scale

    def _affine(self, like: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.to(like.device, torch.float32).view(1, -1, 1, 1) for t in (self.shift, self.scale))

    def _check(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[2] % self.factor or images.shape[3] % self.factor:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not divisible by the VAE factor {self.factor}")
        return images

    @torch.no_grad()
    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised posterior (mean, std), each [B, C, H/f, W/f]: what a store keeps to re-sample latents
        every step (CAD-I's `vae_sample`). A sample is `mean + std * randn`."""
        means, stds = [], []
        for chunk in self._check(images).split(self.batch_size):
            posterior = self.vae.encode(chunk.to(self.device, self.dtype)).latent_dist
            means.append(posterior.mean.float())
            stds.append(posterior.std.float())
        mean, std = torch.cat(means), torch.cat(stds)
        shift, scale = self._affine(mean)
        return ((mean - shift) * scale).to(images.device), (std * scale).to(images.device)

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Normalised latents [B, C, H/f, W/f]: the posterior mean, or a posterior sample when `sample=True`
        (noise drawn like diffusers' `latent_dist.sample(generator)`, on the generator's device)."""
        mean, std = self.encode_moments(images)
        if not self.sample:
            return mean
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device)
        return mean + std * noise.to(mean.device)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] from normalised latents."""
        images = []
        for chunk in latents.split(self.batch_size):
            chunk = chunk.to(self.device, torch.float32)
            shift, scale = self._affine(chunk)
            z = (chunk / scale + shift).to(self.dtype)
            images.append(self.vae.decode(z).sample.float().clamp(-1, 1))
        return torch.cat(images).to(latents.device)

    def meta(self) -> dict:
        """JSON-serialisable description of the latent space (for a store's cache key)."""
        return {
            "codec": "diffusers-vae",
            "name": self.name,
            "shift": [round(v, 8) for v in self.shift.tolist()],
            "scale": [round(v, 8) for v in self.scale.tolist()],
            "sample": self.sample,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def load_codec(spec: str, *, latent_norm: str = "scaling", **kwargs) -> PixelCodec | DiffusersVAE:
    """"pixel" gives the identity codec; "world-vae" the embedded world's shipped tiny VAE; anything else is a VAE
    hub id or folder. `latent_norm` names a normalisation of `LATENT_NORMS`; `kwargs` go to `DiffusersVAE`.

    For "pixel" the placement options (device, dtype, batch_size) are accepted and have nothing to place."""
    if latent_norm not in LATENT_NORMS:
        raise ValueError(f"latent_norm={latent_norm!r} is not one of {', '.join(LATENT_NORMS)}")
    if latent_norm != "scaling":
        if spec == "pixel":
            raise ValueError(f"latent_norm={latent_norm!r} normalises VAE latents; the pixel codec has none")
        kwargs = {**LATENT_NORMS[latent_norm], **kwargs}
    if spec == "world-vae":
        return DiffusersVAE(WORLD_VAE_DIR, **kwargs)
    if spec != "pixel":
        return DiffusersVAE(spec, **kwargs)
    if unknown := sorted(set(kwargs) - {"device", "dtype", "batch_size"}):
        raise TypeError(f"the pixel codec takes no {unknown}")
    return PixelCodec()


def codec_of(data, **kwargs) -> PixelCodec | DiffusersVAE:
    """The codec of a run's data config (`data.codec` with `data.latent_norm`); `kwargs` as `load_codec`."""
    return load_codec(data.codec, latent_norm=data.latent_norm, **kwargs)


@torch.no_grad()
def latent_stats(
    codec: Codec, images: Tensor | Iterable[Tensor], generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Per-channel (mean, std) of `codec.encode` over images (a batch or an iterable of batches).

    With a codec built with `scaling_factor=1.0` this gives raw latent stats to pass as `channel_mean`/
    `channel_std`; with the codec as configured it checks the resulting scale (sigma_data)."""
    batches = [images] if isinstance(images, Tensor) else images
    total = total_sq = None
    count = 0
    for batch in batches:
        x = codec.encode(batch, generator).double()
        s, sq = x.sum((0, 2, 3)), x.square().sum((0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.numel() // x.shape[1]
    if total is None:
        raise ValueError("latent_stats needs at least one image")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=0).sqrt()
    return mean.float(), std.float()
