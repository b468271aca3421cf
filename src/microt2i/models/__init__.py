"""Model zoo: `build(cfg)` from a typed `ModelConfig`, parameter counting, and the inference artifact
(`save_pretrained` / `from_pretrained`): a folder with `model.safetensors` (config JSON also embedded in its
metadata, k-diffusion style) and `config.json` (diffusers style). Reloading rebuilds from the config and loads
the weights strictly, so a renamed or missing tensor is an error, never a silently random layer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from ..config import ConfigError, ModelConfig, from_dict
from ..io import atomic_write_bytes, atomic_write_text
from .cad_i import CAD_I_CONFIGS, CADI
from .dit_i import DIT_I_CONFIGS, DiTI
from .microdit import MICRODIT_CONFIGS, MicroDiT
from .microdit import random_keep_mask, sample_keep_mask as microdit_keep_mask

__all__ = ["build", "count_params", "save_pretrained", "from_pretrained", "sample_keep_mask", "sample_route_mask", "DiTI", "DIT_I_CONFIGS",
           "MicroDiT", "MICRODIT_CONFIGS", "CADI", "CAD_I_CONFIGS", "FORMAT_VERSION"]

FORMAT_VERSION = 1  # bump when the weight layout changes; from_pretrained then needs a conversion shim
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"

_FAMILIES: dict[str, type[nn.Module]] = {"dit-i": DiTI, "microdit": MicroDiT, "cad-i": CADI}


def build(cfg: ModelConfig) -> nn.Module:
    """Instantiate the network for `cfg.family` (build on the meta device with `with torch.device("meta"):`)."""
    if cfg.family not in _FAMILIES:
        raise ConfigError(f"model.family={cfg.family!r} has no network; available: {', '.join(_FAMILIES)}")
    return _FAMILIES[cfg.family](cfg)


def sample_keep_mask(cfg: ModelConfig, batch_size: int, *, generator=None, device=None) -> torch.Tensor | None:
    """The training-time patch keep-mask [B, N] of a model that trains masked (MicroDiT with mask_ratio > 0), drawn
    from `generator` (the trainer's per-step one, so resume stays exact); None for every other model."""
    if getattr(cfg, "mask_ratio", 0.0) <= 0:
        return None

    return microdit_keep_mask(cfg, batch_size, generator=generator, device=device)


def sample_route_mask(cfg: ModelConfig, batch_size: int, num_tokens: int, *, generator=None,
                      device=None) -> torch.Tensor | None:
    """TREAD's training-time route mask [B, num_tokens] (True = the token goes through the routed span; exactly
    ⌊(1 − route_ratio)·num_tokens⌋ per row, at random positions), drawn from `generator`; None when off."""
    ratio = getattr(cfg, "route_ratio", 0.0)
    if not ratio:
        return None

    return random_keep_mask(batch_size, num_tokens, ratio, generator=generator, device=device)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as the fixed positional embedding are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def config_dict(cfg: ModelConfig) -> dict:
    return {**dataclasses.asdict(cfg), "format_version": FORMAT_VERSION}


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `path/model.safetensors` (weights + config in metadata) and `path/config.json`, each atomically."""
    path = Path(path)
    cfg = config_dict(model.config)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(cfg), "format_version": str(FORMAT_VERSION), "family": model.config.family}
    atomic_write_bytes(path / WEIGHTS_NAME, save(tensors, metadata=meta))
    atomic_write_text(path / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")


def from_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network from `path/config.json` and load `path/model.safetensors` strictly; eval mode."""
    path = Path(path)
    cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not weights.is_file() or not cfg_file.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a saved model: expected {WEIGHTS_NAME} and {CONFIG_NAME}")
    d = json.loads(cfg_file.read_text())
    version = d.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ConfigError(f"{cfg_file} has format_version={version!r}; this microt2i reads {FORMAT_VERSION}")
    cfg = from_dict(ModelConfig, d, "model")
    with torch.device(device):
        model = build(cfg)
    try:
        tensors = load_file(weights, device=str(device))
    except Exception as e:  # safetensors' own error types: a truncated or overwritten file
        raise ValueError(f"{weights} is unreadable ({' '.join(str(e).split())[:200]}): damaged or not a safetensors "
                         f"file; re-run the command that wrote it (`microt2i train` / `microt2i export`)") from None
    model.load_state_dict(tensors, strict=True)
    return model.eval()
