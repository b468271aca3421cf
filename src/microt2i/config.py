"""Typed run configuration: dataclasses, YAML round-trip, dotted overrides.

A run is one `RunConfig` tree. Presets (`presets.py`) are Python functions that return such trees; YAML only
serialises them. Unknown keys are an error that lists the valid keys (no silent typos).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import atomic_write_text


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it and how to fix it."""


# ---------------------------------------------------------------------------------------------------------------
# Model configs (one per family; `family` picks the class when reading YAML)


@dataclass(kw_only=True)
class ModelConfig:
    family: str = ""
    in_channels: int = 4  # channels of the codec's latent (3 for pixels)
    input_size: int = 32  # latent side length (256 px / 8 for the SD VAE)
    text_dim: int = 2048  # width of the text encoder's token states (flan-T5-XL)


@dataclass(kw_only=True)
class DiTIConfig(ModelConfig):
    """DiT-I: DiT with text by cross-attention (paper 000, App. C / Fig. 6)."""

    family: str = "dit-i"
    patch_size: int = 2
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    refiner_depth: int = 2  # self-attention layers that refine the text before cross-attention (App. C)
    qk_norm: bool = True  # QK-normalisation in self- and cross-attention (App. C)
    layerscale_init: float = 0.1  # LayerScale on every residual branch (App. C)
    pos_interp_scale: float = 1.0  # 2-D sin-cos positions computed on a grid scaled by this (2.0 at 512²)
    noise_embed_scale: float = 1000.0  # the noise condition is multiplied by this before the sinusoid


MODEL_FAMILIES: dict[str, type[ModelConfig]] = {"dit-i": DiTIConfig}


# ---------------------------------------------------------------------------------------------------------------
# Objective, data, augmentation, training, evaluation


@dataclass(kw_only=True)
class ObjectiveConfig:
    kind: str = "edm"  # edm (MicroDiT, 003 §B)
    sigma_data: float = 0.5  # EDM σ_data; MicroDiT uses 0.9 for SD latents
    p_mean: float = -1.2  # log-normal training σ: ln σ ~ N(p_mean, p_std²) (EDM Table 1)
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    cond_drop: float = 0.1  # caption dropout for classifier-free guidance
    uncond: str = "zero"  # unconditional text: "zero" embedding (MicroDiT) or "empty" string encoding (CAD-I)

    def __post_init__(self):
        _choice("objective.kind", self.kind, ("edm",))
        _choice("objective.uncond", self.uncond, ("zero", "empty"))
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"objective.cond_drop={self.cond_drop} must be in [0, 1)")


@dataclass(kw_only=True)
class DataConfig:
    source: str = "world"  # "world" (embedded world) — ImageNet and caption files arrive with the data engine
    resolution: int = 32  # pixels
    num_images: int = 4096  # world: size of the rendered training set
    captions: str = "long"  # "long" (oracle long captions, the paper's TA) or "aio" ("An image of a <class>")
    max_objects: int = 3  # world: main object plus up to max_objects-1 small secondary objects
    codec: str = "pixel"  # "pixel" or a diffusers AutoencoderKL hub id / local path
    text_encoder: str = "minilm"  # "minilm" (offline wheel) or a T5 / CLIP hub id / local path
    text_len: int = 64  # tokens kept per caption
    seed: int = 0
    cache_dir: str = ""  # precomputed stores; "" = $MICROT2I_CACHE or ~/.cache/microt2i

    def __post_init__(self):
        _choice("data.source", self.source, ("world",))
        _choice("data.captions", self.captions, ("long", "aio"))
        if not 8 <= self.resolution <= 1024:
            raise ConfigError(f"data.resolution={self.resolution} must be in [8, 1024]")


@dataclass(kw_only=True)
class AugmentConfig:
    ia: str = "none"  # image augmentation (CutMix / Crop): arrives with the IA issue

    def __post_init__(self):
        _choice("augment.ia", self.ia, ("none",))


@dataclass(kw_only=True)
class TrainConfig:
    total_nimg: int = 100_000  # training length in images seen (EDM2)
    batch_size: int = 64  # global batch
    micro_batch: int = 0  # per-step memory bound; 0 = batch_size. Accumulation rounds are derived.
    lr: float = 1e-4
    lr_schedule: str = "cosine"  # "cosine" or "constant" (after warm-up)
    warmup_nimg: int = 0
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.9999  # per optimizer step
    ema_start_nimg: int = 0  # EMA copies the weights until then
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    device: str = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave as is
    seed: int = 0
    log_every_nimg: int = 1024
    ckpt_every_nimg: int = 16384

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        _choice("train.lr_schedule", self.lr_schedule, ("cosine", "constant"))
        _choice("train.precision", self.precision, ("fp32", "bf16"))
        mb = self.micro_batch or self.batch_size
        if self.batch_size <= 0 or self.batch_size % mb:
            raise ConfigError(
                f"train.batch_size={self.batch_size} must be a positive multiple of train.micro_batch={mb}"
            )
        if self.total_nimg <= 0:
            raise ConfigError(f"train.total_nimg={self.total_nimg} must be positive")


@dataclass(kw_only=True)
class EvalConfig:
    sampler: str = "heun"  # any name in diffusion.samplers.SAMPLERS
    steps: int = 30  # sampler steps (Heun: 2·steps−1 network evaluations)
    cfg_scale: float = 3.0  # uncond + scale·(cond − uncond) (003 §B uses 3 / 5)
    grid_size: int = 4  # the demo grid is grid_size × grid_size
    seed: int = 0


@dataclass(kw_only=True)
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=DiTIConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------------------------
# dict / YAML round-trip


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg) if not isinstance(cfg, dict) else cfg


def _unknown(path: str, key: str, valid: list[str]) -> ConfigError:
    where = f"{path}.{key}" if path else key
    hint = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"unknown config key {where!r}.{hint} Valid keys here: {', '.join(sorted(valid))}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}={value!r} must be an integer")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}={value!r} must have {len(args)} items")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    return value


def from_dict(cls, d: dict | None, path: str = ""):
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys raise a ConfigError listing valid keys."""
    d = dict(d or {})
    if cls is ModelConfig or (isinstance(cls, type) and issubclass(cls, ModelConfig) and "family" in d):
        fam = d.get("family", "dit-i")
        if fam not in MODEL_FAMILIES:
            raise ConfigError(f"{path or 'model'}.family={fam!r} is not one of {', '.join(MODEL_FAMILIES)}")
        cls = MODEL_FAMILIES[fam]
    if not isinstance(d, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in d.items():
        if k not in names:
            raise _unknown(path, k, names)
        kwargs[k] = _coerce(v, hints[k], f"{path}.{k}" if path else k)
    return cls(**kwargs)


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Return a copy of `cfg` with dotted overrides applied: ["train.lr=1e-4", "model.depth=2"]."""
    d = to_dict(cfg)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        node, parts = d, key.split(".")
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                valid = [k for k, v in node.items() if isinstance(v, dict)]
                raise _unknown(".".join(parts[:i]), p, valid)
            node = node[p]
        if parts[-1] not in node:
            raise _unknown(".".join(parts[:-1]), parts[-1], list(node))
        node[parts[-1]] = value
    return from_dict(RunConfig, d)


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value, e.g. train.lr=1e-4")
    k, v = item.split("=", 1)
    return k.strip(), yaml.safe_load(v) if v.strip() else ""


def save_yaml(cfg, path: str | os.PathLike) -> None:
    """Write the config as YAML atomically (temp file + rename)."""
    text = yaml.safe_dump(_plain(to_dict(cfg)), sort_keys=False)
    atomic_write_text(path, text)


def load_yaml(path: str | os.PathLike) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML written by `microt2i train` or a preset name")
    return from_dict(RunConfig, yaml.safe_load(p.read_text()) or {})


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
