"""Typed run configuration: dataclasses, YAML round-trip, dotted overrides.

A run is one `RunConfig` tree. Presets (`presets.py`) are Python functions that return such trees; YAML only
serialises them. Unknown keys are an error that lists the valid keys (no silent typos).

Length: this file is over the 600-line limit of tests/test_architecture.py (listed there with this reason): the
model-family configs (`ModelConfig` … `CADIConfig`) are the seam to split along (a `config_models.py`), once the
fields other branches are adding to these classes have landed.
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
import torch


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


def check_accelerators(cfg) -> None:
    """REPA and TREAD settings of a DiT-I / MicroDiT config: blocks inside the depth, a routing share in (0, 1)."""
    if cfg.route_end == 0 and cfg.route_ratio:
        cfg.route_end = cfg.depth - 1
    if cfg.route_ratio and not 0.0 < cfg.route_ratio < 1.0:
        raise ConfigError(f"model.route_ratio={cfg.route_ratio} must be in (0, 1): the share of tokens that skip "
                          f"blocks (0 = routing off)")
    if cfg.route_ratio and not 0 <= cfg.route_start < cfg.route_end <= cfg.depth:
        raise ConfigError(f"model.route_start={cfg.route_start}, model.route_end={cfg.route_end} must satisfy 0 <= "
                          f"start < end <= model.depth={cfg.depth} (the routed tokens skip blocks start … end − 1)")
    if not 0 <= cfg.repa_depth <= cfg.depth:
        raise ConfigError(f"model.repa_depth={cfg.repa_depth} is past the network's model.depth={cfg.depth}; pick a "
                          f"block in 1 … {cfg.depth} (REPA aligns an early one; 0 = off)")
    if cfg.repa_depth and (cfg.repa_dim < 1 or cfg.repa_hidden < 1):
        raise ConfigError(f"model.repa_depth={cfg.repa_depth} needs model.repa_dim (the teacher's feature width) and "
                          f"model.repa_hidden >= 1, got {cfg.repa_dim}, {cfg.repa_hidden}")
    if cfg.repa_depth and cfg.route_ratio and cfg.repa_depth > cfg.route_start:
        raise ConfigError(f"model.repa_depth={cfg.repa_depth} must be <= model.route_start={cfg.route_start}: REPA "
                          f"aligns all tokens, so its block must come before the routed span")


@dataclass(kw_only=True)
class Accelerators:
    """Convergence accelerators of the token backbones (DiT-I, MicroDiT); training only (docs/training.md)."""

    # convergence accelerators (training only; docs/training.md "Time to quality")
    repa_depth: int = 0  # REPA (Yu et al. 2024): align block `repa_depth`'s tokens (1-based) to a frozen teacher; 0 = off
    repa_dim: int = 0  # the teacher's feature width (data.repa_teacher); the projector maps width → repa_dim
    repa_hidden: int = 2048  # REPA's 3-layer SiLU projector width (REPA §3.3: 2048)
    route_ratio: float = 0.0  # TREAD (Krause et al. 2025): share of tokens that skip blocks [route_start, route_end)
    route_start: int = 0  # first block the routed tokens skip (0-based)
    route_end: int = 0  # blocks up to here (exclusive) are skipped; 0 = depth − 1
    rope: bool = False  # 2-D RoPE (axial rotary positions) in the image self-attention, on top of the sin-cos table
    mix_ffn: bool = False  # Sana's Mix-FFN: a depthwise 3×3 conv over the token grid inside every MLP (DiT-I)
    text_film: bool = False  # DiT-I: the mean refined caption token joins adaLN-single's time embedding (MicroDiT-style)


@dataclass(kw_only=True)
class DiTIConfig(Accelerators, ModelConfig):
    """DiT-I: DiT with text by cross-attention (ImageNet-T2I, App. C / Fig. 6)."""

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
    crop_cond: bool = False  # crop-coordinate token appended to the caption (Crop IA, ImageNet-T2I App. F)

    def __post_init__(self):
        _bounds("model", self, 1, "in_channels", "input_size", "text_dim", "patch_size", "width", "depth", "heads")
        _bounds("model", self, 0, "refiner_depth")
        _bounds("model", self, 0, "mlp_ratio", "pos_interp_scale", strict=True)
        if self.width % self.heads or self.input_size % self.patch_size:
            raise ConfigError(f"model.width={self.width} must be a multiple of model.heads={self.heads} and "
                              f"model.input_size={self.input_size} a multiple of model.patch_size={self.patch_size}")
        check_accelerators(self)
        if self.rope and (self.width // self.heads) % 4:
            raise ConfigError(f"model.rope needs a head width (model.width / model.heads = {self.width // self.heads}) "
                              f"divisible by 4: 2-D RoPE turns channel pairs by row and by column")


@dataclass(kw_only=True)
class MicroDiTConfig(Accelerators, ModelConfig):
    """MicroDiT (MicroDiT §3, App. B–D): patch-mixer + deferred patch masking, layer-wise scaling, expert-choice
    MoE. Defaults are MicroDiT_XL_2 at 256² (4×32×32 SDXL-VAE latents, DFN5B CLIP-H 1024-d caption tokens)."""

    family: str = "microdit"
    text_dim: int = 1024  # caption token width (DFN5B CLIP-H)
    patch_size: int = 2
    width: int = 1024  # backbone width
    depth: int = 28  # backbone blocks
    head_dim: int = 64  # heads = attention width / head_dim, per block
    qkv_ratio: tuple[float, float] = (0.5, 1.0)  # layer-wise scaling: attention width / width, first → last block
    ffn_ratio: tuple[float, float] = (0.5, 4.0)  # layer-wise scaling: FFN hidden / width, first → last block
    multiple_of: int = 256  # FFN hidden sizes are rounded up to a multiple of this
    mixer_depth: int = 6  # patch-mixer blocks, run on all patches before masking (0 = no mixer)
    mixer_width: int = 768
    mixer_mlp_ratio: float = 4.0
    moe: bool = True  # expert-choice MoE FFN in every `experts_every`-th block (never the last backbone block)
    num_experts: int = 8
    expert_capacity: float = 2.0  # each expert takes k = capacity·T/E of a sample's T tokens
    experts_every: int = 2
    mask_ratio: float = 0.75  # training: fraction of patches dropped (0 = unmasked training)
    masking: str = "deferred"  # "deferred" (random, after the mixer), "naive" (random, before it), "block"
    mask_block: int = 2  # block masking: side of a square block of patches; 0 = one kept square (Fig. 9d)
    qk_norm: bool = True  # non-affine LayerNorm on queries and keys (MicroDiT App. B)
    bias: bool = False  # biases in attention / FFN linears (False in both paper models)
    pos_interp_scale: float = 1.0  # 2-D sin-cos positions on a grid scaled by this (2.0 at 512²)
    noise_embed_scale: float = 1.0  # c_noise is multiplied by this before the sinusoid (1.0 as the reference)
    crop_cond: bool = False  # crop-coordinate token appended to the caption (Crop IA, ImageNet-T2I App. F)

    def __post_init__(self):
        check_accelerators(self)
        if self.rope or self.mix_ffn or self.text_film:
            raise ConfigError("model.rope, model.mix_ffn and model.text_film are built for DiT-I only; MicroDiT keeps "
                              "its sin-cos positions, SwiGLU / MoE FFNs and its own pooled caption (set them to false)")
        self.qkv_ratio = tuple(float(r) for r in self.qkv_ratio)
        self.ffn_ratio = tuple(float(r) for r in self.ffn_ratio)
        _choice("model.masking", self.masking, ("deferred", "naive", "block"))
        _bounds("model", self, 1, "in_channels", "input_size", "text_dim", "patch_size", "head_dim", "multiple_of")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio={self.mask_ratio} must be in [0, 1) (0 trains unmasked)")
        if self.input_size % self.patch_size:
            raise ConfigError(f"model.input_size={self.input_size} must be a multiple of "
                              f"model.patch_size={self.patch_size}")
        for key in ("width", "mixer_width"):
            if getattr(self, key) % self.head_dim or getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be a positive multiple of "
                                  f"model.head_dim={self.head_dim}")
        if self.depth < 1 or self.mixer_depth < 0:
            raise ConfigError(f"model.depth={self.depth} must be ≥ 1 and model.mixer_depth={self.mixer_depth} ≥ 0")
        if self.moe and (self.num_experts < 1 or self.expert_capacity <= 0 or self.experts_every < 1):
            raise ConfigError(f"MoE needs model.num_experts ≥ 1, model.expert_capacity > 0 and model.experts_every "
                              f"≥ 1, got {self.num_experts}, {self.expert_capacity}, {self.experts_every}; "
                              f"or set model.moe=false")
        grid = self.input_size // self.patch_size
        if self.masking == "block" and self.mask_block and grid % self.mask_block:
            raise ConfigError(f"model.mask_block={self.mask_block} must divide the {grid}×{grid} patch grid "
                              f"(or be 0 for one kept square)")


@dataclass(kw_only=True)
class CADIConfig(ModelConfig):
    """CAD-I: RIN with text conditioning (ImageNet-T2I App. C / Fig. 6 right; CAD, Dufour et al. 2024; RIN, Jabri et
    al. 2023). Defaults are the paper's `cad-i-256` (the CAD code's `rin_L`)."""

    family: str = "cad-i"
    patch_size: int = 2
    data_dim: int = 256  # width of the data (patch) tokens
    num_latents: int = 256  # learned latent tokens that do the computation
    latent_dim: int = 1024
    num_blocks: int = 4  # RIN blocks: read → process → write
    block_depth: int = 4  # latent self-attention layers per block ("num_processing_layers")
    rw_heads: int = 16  # heads of the read / write / text cross-attentions
    heads: int = 16  # heads of the latent self-attention ("compute heads")
    latent_mlp_ratio: float = 4.0
    data_mlp_ratio: float = 4.0
    num_registers: int = 16  # learned text registers prepended to the caption (CAD)
    refiner_depth: int = 2  # self-attention blocks refining [registers; caption]
    refiner_heads: int = 16
    layerscale_init: float = 0.1  # LayerScale of the refiner blocks (CAD)
    qk_norm: bool = False  # the CAD code has none; DiT-I's QK-norm is one flag away
    noise_embed_scale: float = 1000.0  # the noise condition is multiplied by this before the sinusoid
    self_cond_rate: float = 0.9  # training: P(previous latents are fed back) (RIN §3.4); 0 disables
    # data-token positions: learned, started "trunc_normal" (CAD: std 0.02) or from the 2-D sin-cos table
    # ("sincos"; our world presets: at std 0.02 the tokens stay position-blind for hundreds of CPU steps)
    pos_init: str = "trunc_normal"

    def __post_init__(self):
        _bounds("model", self, 1, "in_channels", "input_size", "text_dim", "patch_size", "data_dim", "num_latents",
                "latent_dim", "num_blocks", "block_depth", "rw_heads", "heads", "refiner_heads")
        _bounds("model", self, 0, "num_registers", "refiner_depth")
        if not 0.0 <= self.self_cond_rate <= 1.0:
            raise ConfigError(f"model.self_cond_rate={self.self_cond_rate} must be in [0, 1]")
        _choice("model.pos_init", self.pos_init, ("trunc_normal", "sincos"))
        if self.input_size % self.patch_size:
            raise ConfigError(f"model.input_size={self.input_size} must be a multiple of model.patch_size={self.patch_size}")


MODEL_FAMILIES: dict[str, type[ModelConfig]] = {"dit-i": DiTIConfig, "microdit": MicroDiTConfig, "cad-i": CADIConfig}


# ---------------------------------------------------------------------------------------------------------------
# Objective, data, augmentation, training, evaluation


@dataclass(kw_only=True)
class ObjectiveConfig:
    kind: str = "edm"  # edm (MicroDiT, MicroDiT §B) | vp (ε-prediction, ImageNet-T2I Eq. 1, CAD-I) | flow (rectified flow)
    sigma_data: float = 0.5  # EDM σ_data; MicroDiT uses 0.9 for SD latents
    p_mean: float = -1.2  # log-normal training σ: ln σ ~ N(p_mean, p_std²) (EDM Table 1)
    p_std: float = 1.2
    sigma_min: float = 0.002  # EDM sampling schedule's last non-zero σ
    sigma_max: float = 80.0  # every objective's sampling starts at this σ (EDM σ-space, x = x0 + σ·n)
    schedule: str = "linear"  # vp: γ(t) = ᾱ(t): linear 1 − t (CAD-I), cosine or sigmoid (Chen 2023)
    schedule_tau: float = 1.0  # vp cosine / sigmoid temperature τ
    sigmoid_start: float = -3.0  # vp sigmoid schedule's range of the sigmoid's argument
    sigmoid_end: float = 3.0
    logit_mean: float = 0.0  # flow: logit-normal training t, logit(t) ~ N(logit_mean, logit_std²) (SD3 §3.1)
    logit_std: float = 1.0
    cond_drop: float = 0.1  # caption dropout for classifier-free guidance
    uncond: str = "zero"  # unconditional text: "zero" embedding (MicroDiT) or "empty" string encoding (CAD-I)
    repa_weight: float = 0.0  # REPA's λ (Yu et al. 2024 Eq. 8: 0.5): loss += λ·(−cos(projected tokens, teacher))
    # min-SNR-γ loss weighting (Hang et al. 2023; γ = 5 there) for vp and flow (diffusion/noise.py); None = off
    snr_gamma: float | None = None

    def __post_init__(self):
        _choice("objective.kind", self.kind, ("edm", "vp", "flow"))
        _choice("objective.schedule", self.schedule, ("linear", "cosine", "sigmoid"))
        _choice("objective.uncond", self.uncond, ("zero", "empty"))
        if self.schedule_tau <= 0 or self.sigmoid_end <= self.sigmoid_start:
            raise ConfigError(f"objective.schedule_tau={self.schedule_tau} must be > 0 and objective.sigmoid_start="
                              f"{self.sigmoid_start} < objective.sigmoid_end={self.sigmoid_end}")
        if self.sigma_max <= 0 or self.logit_std < 0:
            raise ConfigError(f"objective.sigma_max={self.sigma_max} must be > 0 and objective.logit_std="
                              f"{self.logit_std} >= 0")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"objective.cond_drop={self.cond_drop} must be in [0, 1)")
        if self.repa_weight < 0:
            raise ConfigError(f"objective.repa_weight={self.repa_weight} must be >= 0 (0 = REPA off)")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ConfigError(f"objective.snr_gamma={self.snr_gamma} must be > 0 (min-SNR-γ; Hang et al. use 5), or "
                              f"null for no weighting")
        if self.snr_gamma is not None and self.kind == "edm":
            raise ConfigError("objective.snr_gamma weights the vp and flow losses; EDM's λ(σ) already balances its "
                              "loss over σ (EDM §5): use objective.kind=vp or flow, or objective.snr_gamma=null")


@dataclass(kw_only=True)
class MixSource:
    """One finished sharded store of a training mixture (data/mix.py) and its sampling weight."""

    store_dir: str = ""
    weight: float = 1.0

    def __post_init__(self):
        if not self.store_dir or not self.weight > 0:
            raise ConfigError(f"data.mix entry {{store_dir: {self.store_dir!r}, weight: {self.weight}}} needs a store "
                              f"folder and a weight > 0")


@dataclass(kw_only=True)
class DataConfig:
    source: str = "world"  # "world" (embedded world), "imagenet" (train/<synset>/*.JPEG, val/) or "folder" (images)
    # or your own data (data/ingest.py): "sidecar" (images + .txt/.json captions), "webdataset" (img2dataset tar
    # shards), "hf" (a `datasets` folder or hub id with image and text columns)
    root: str = ""  # imagenet / folder: the dataset folder (for ImageNet the one holding train/ and val/)
    split: str = "train"  # imagenet: "train" or "val"
    labels_file: str = ""  # imagenet val as flat files: "filename synset" lines or LOC_val_solution.csv
    caption_file: str = ""  # precompute: captions by image key (`microt2i caption` output; data/captions.py formats)
    resolution: int = 32  # pixels
    num_images: int = 4096  # world: size of the rendered training set
    captions: str = "long"  # "long" (oracle long captions, the paper's TA) or "aio" ("An image of a <class>")
    max_objects: int = 3  # world: main object plus up to max_objects-1 small secondary objects
    codec: str = "pixel"  # "pixel" or a diffusers AutoencoderKL hub id / local path
    text_encoder: str = "minilm"  # "minilm" (offline wheel) or a T5 / CLIP hub id / local path
    text_len: int = 64  # tokens kept per caption
    seed: int = 0
    cache_dir: str = ""  # precomputed stores; "" = $MICROT2I_CACHE or ~/.cache/microt2i
    store_dir: str = ""  # sharded store written by `microt2i precompute` (required for imagenet / folder)
    latent_mode: str = "mean_std"  # store the posterior mean+std, re-sampled every step (CAD-I) | "sample" (MicroDiT)
    # VAE latent normalisation (encoders/codec.py): "scaling" = the VAE config's scaling_factor (SD kl-f8: 0.18215,
    # std ≈ 1) | "sd15-channel" = CAD-I's per-channel SD-1.5 statistics to std 0.5 (T2I-ImageNet's diffusion code) |
    # "world-channel" = the shipped world VAE's per-channel statistics to std 0.5. In the store key.
    latent_norm: str = "scaling"
    text_store: str = "embeddings"  # store text-encoder states, or token "ids" encoded on the fly at train time
    store_dtype: str = "float16"  # latents / text states in the sharded store
    shard_size: int = 1024  # samples per shard
    min_resolution: int = 0  # precompute: skip images whose short side is smaller (MicroDiT's 512² stage: 512)
    clean_captions: bool = False  # precompute: MicroDiT's caption cleaner (data/ingest.py `clean_caption`)
    image_column: str = ""  # hf column / webdataset extension of the image ("" = image, jpg, png, …)
    caption_column: str = ""  # hf column / .json sidecar key of the caption ("" = caption, captions, text, …)
    mix: tuple[MixSource, ...] = ()  # train on finished stores mixed by weight: [{store_dir: a, weight: 0.7}, …]
    repa_teacher: str = ""  # REPA teacher, features precomputed next to the store: effnet-lite0 | a DINOv2 id or folder
    val_fraction: float = 0.0  # held out of training (data/holdout.py) for train.val_every_nimg's loss; 0 = none
    # aspect-ratio buckets (data/buckets.py): precompute resizes each image to the bucket nearest its aspect ratio,
    # the trainer draws every batch from one bucket; bucket_pixels = the pixel budget (0 = resolution²)
    buckets: bool = False
    bucket_pixels: int = 0

    def __post_init__(self):
        _choice("data.source", self.source, ("world", "imagenet", "folder", "sidecar", "webdataset", "hf"))
        if self.source != "hf":  # a datasets split may be any name
            _choice("data.split", self.split, ("train", "val"))
        if self.min_resolution < 0:
            raise ConfigError(f"data.min_resolution={self.min_resolution} must be >= 0 (0 = keep every size)")
        if self.mix and self.store_dir:
            raise ConfigError("data.mix and data.store_dir are exclusive: list every store in data.mix")
        _choice("data.latent_mode", self.latent_mode, ("mean_std", "sample"))
        _choice("data.text_store", self.text_store, ("embeddings", "ids"))
        _choice("data.store_dtype", self.store_dtype, ("float16", "float32"))
        _choice("data.latent_norm", self.latent_norm, LATENT_NORMS)
        if self.latent_norm != "scaling" and self.codec == "pixel":
            raise ConfigError(f"data.latent_norm={self.latent_norm!r} normalises VAE latents; data.codec='pixel' has "
                              f"none (set data.codec=<VAE id> or data.latent_norm=scaling)")
        if self.shard_size < 1:
            raise ConfigError(f"data.shard_size={self.shard_size} must be >= 1")
        _choice("data.captions", self.captions, ("long", "aio"))
        if not 8 <= self.resolution <= 1024:
            raise ConfigError(f"data.resolution={self.resolution} must be in [8, 1024]")
        _bounds("data", self, 1, "num_images", "text_len", "max_objects")
        if not 0.0 <= self.val_fraction <= 0.5:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in [0, 0.5] (the held-out share; 0 = none)")
        _check_buckets(self)

    def require_dataset(self) -> None:
        """A real source needs its folder and a store folder. Checked where data is read, not when the config is
        built, so a preset can default to ImageNet (ImageNet-T2I) and still print with --dry-run."""
        if self.source != "world" and not self.mix and not (self.root and self.store_dir):
            raise ConfigError(f"data.source={self.source!r} needs data.root=<dataset folder> and data.store_dir=<store "
                              f"folder> (fill it with `microt2i precompute`), or data.source=world for the embedded "
                              f"world")


LATENT_NORMS = ("scaling", "sd15-channel", "world-channel")
CUTMIX_SETTINGS = ("all", "1/2", "1/4", "1/9", "1/16")


@dataclass(kw_only=True)
class CutMixConfig:
    """CutMix IA (ImageNet-T2I App. E): a sample is swapped for one of its composites iff its noise level is above τ
    and Bernoulli(p) fires (Algorithm 1, Eq. 2–4). Composites: `microt2i cutmix` (augment/cutmix.py)."""

    enabled: bool = False
    setting: str = "all"  # CM^all (uniform over the four patterns, the paper's best) | 1/2 | 1/4 | 1/9 | 1/16
    p: float = 0.5  # Bernoulli(p) above τ (Table 10: p ≤ 0.5)
    tau: float = 400.0  # threshold on the paper's scale: τ of T = 1000 steps of the linear-ᾱ schedule (Table 11)
    times: int = 1  # composites per source image (the reference's `dataset_times`)
    seed: int = 0  # partners, patterns and positions are a function of (seed, source index, composite index)

    def __post_init__(self):
        _choice("augment.cutmix.setting", self.setting, CUTMIX_SETTINGS)
        if not 0.0 <= self.p <= 1.0 or not 0.0 < self.tau < 1000.0 or self.times < 1:
            raise ConfigError(f"augment.cutmix.p={self.p} must be in [0, 1], augment.cutmix.tau={self.tau} in "
                              f"(0, 1000) (paper scale) and augment.cutmix.times={self.times} >= 1")


@dataclass(kw_only=True)
class CropConfig:
    """Crop IA (ImageNet-T2I App. F): with probability p a micro-batch sees only a square crop of its tokens (side ≥
    min_side of the patch grid); crop-coordinate tokens join the caption. Needs model.crop_cond=true."""

    enabled: bool = False
    p: float = 0.5  # probability that a micro-batch is cropped (one crop size per micro-batch, positions per sample)
    min_side: float = 0.5  # crop side ≥ this fraction of the patch grid's side (App. F: "> 50 %")

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0 or not 0.0 < self.min_side < 1.0:
            raise ConfigError(f"augment.crop.p={self.p} must be in [0, 1] and augment.crop.min_side="
                              f"{self.min_side} in (0, 1)")


@dataclass(kw_only=True)
class AugmentConfig:
    """Image augmentation (IA, ImageNet-T2I §2.2): `augment.cutmix.*` and `augment.crop.*`; both may be on."""

    cutmix: CutMixConfig = field(default_factory=CutMixConfig)
    crop: CropConfig = field(default_factory=CropConfig)


@dataclass(kw_only=True)
class TrainConfig:
    total_nimg: int = 100_000  # training length in images seen (EDM2)
    batch_size: int = 64  # global batch
    micro_batch: int = 0  # per-step memory bound; 0 = batch_size. Accumulation rounds are derived.
    lr: float = 1e-4
    optimizer: str = "adamw"  # "adamw", "lamb" (CAD-I; You et al. 2020) or "muon" (hidden matrices; AdamW elsewhere)
    muon_momentum: float = 0.95  # Muon's Nesterov momentum (Jordan et al. 2024)
    lr_schedule: str = "cosine"  # "cosine" or "constant" (after warm-up)
    warmup_nimg: int = 0
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    cosine_rate: float = 1.0  # CAD's `rate`: the cosine runs to angle rate·π (0.7 ends at ≈ 0.21·lr with ratio 0)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    expert_lr_scale: float = 0.5  # MoE experts train at lr × this (MicroDiT App. B: "reduce the learning rate … by half")
    ema_decay: float = 0.9999  # per optimizer step
    ema_start_nimg: int = 0  # EMA copies the weights until then
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    device: str = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave as is
    seed: int = 0
    log_every_nimg: int = 1024
    ckpt_every_nimg: int = 16384
    # distributed and memory (train/dist.py): applied to the model from outside
    loader_workers: int = 0  # sharded stores: processes reading the next micro-batches ahead (0 = read in the step)
    parallel: str = "ddp"  # "ddp" (replicated; the default under torchrun) or "fsdp" (FSDP2 fully_shard per block)
    compile: bool = False  # torch.compile each block
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    dist_timeout_s: float = 1800.0  # bound on every collective (NCCL / gloo), so a dead rank ends the job
    nan_abort_streak: int = 100  # abort after this many consecutive non-finite steps (0 = never); single ones are skipped
    val_every_nimg: int = 0  # loss on the held-out split (data.val_fraction) at fixed σ and noise; 0 = off
    val_n: int = 64  # held-out samples scored (the first of the split), each at every fixed noise level
    # logs (train/logger.py): stats.jsonl always; these mirror it when their package is installed
    tensorboard: bool = False  # TensorBoard events in <run>/tensorboard (scalars + eval grids)
    wandb: str = ""  # W&B project name; "" = off (WANDB_MODE=offline logs without a server)
    # fine-tuning (train/finetune.py; `microt2i train --init`): a run's first checkpoint comes from another model
    init: str = ""  # a run folder or an exported model folder (model.safetensors + config.json); "" = from scratch
    init_mode: str = "weights"  # "weights": its EMA weights, fresh optimizer | "state": weights, EMA, AdamW moments
    freeze: tuple[str, ...] = ()  # parameter-name prefixes not trained (requires_grad off), e.g. [t_embedder, blocks.0.]
    # LoRA (models/lora.py, peft): only adapters on these projections train; ema/ holds the merged weights
    lora_rank: int = 0  # 0 = off; r of W + (alpha/r)·B·A
    lora_alpha: float = 0.0  # 0 = the rank (scale 1)
    lora_targets: str = "both"  # "attention" (q/k/v/out projections), "mlp" (fc1/fc2), or "both"

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        _choice("train.optimizer", self.optimizer, ("adamw", "lamb", "muon"))
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise ConfigError("train.optimizer=muon runs on whole matrices: use train.parallel=ddp (or train.optimizer="
                              "adamw with fsdp)")
        _choice("train.lr_schedule", self.lr_schedule, ("cosine", "constant"))
        if not 0.0 < self.cosine_rate <= 1.0:
            raise ConfigError(f"train.cosine_rate={self.cosine_rate} must be in (0, 1]")
        _choice("train.precision", self.precision, ("fp32", "bf16"))
        _choice("train.parallel", self.parallel, ("ddp", "fsdp"))
        _choice("train.init_mode", self.init_mode, ("weights", "state"))
        _check_lora(self)
        if self.dist_timeout_s <= 0 or self.nan_abort_streak < 0:
            raise ConfigError(f"train.dist_timeout_s={self.dist_timeout_s} must be > 0 and train.nan_abort_streak="
                              f"{self.nan_abort_streak} >= 0 (0 = never abort)")
        mb = self.micro_batch or self.batch_size
        if self.batch_size <= 0 or self.batch_size % mb:
            raise ConfigError(
                f"train.batch_size={self.batch_size} must be a positive multiple of train.micro_batch={mb}"
            )
        if self.total_nimg <= 0:
            raise ConfigError(f"train.total_nimg={self.total_nimg} must be positive")
        _bounds("train", self, 1, "log_every_nimg", "ckpt_every_nimg", hint=" (images between reports / checkpoints)")
        _bounds("train", self, 0, "threads", hint=" (0 = leave torch's default)")
        _bounds("train", self, 0, "val_every_nimg", hint=" (images between held-out losses; 0 = off)")
        _bounds("train", self, 1, "val_n", hint=" (held-out samples scored)")
        _bounds("train", self, 0, "lr", "micro_batch", "warmup_nimg", "weight_decay", "grad_clip", "ema_start_nimg",
                "loader_workers", "min_lr_ratio", "expert_lr_scale")
        _bounds("train", self, 0, "eps", strict=True)
        if not 0.0 <= self.ema_decay < 1.0 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.ema_decay={self.ema_decay} and train.betas={list(self.betas)} must be in [0, 1)")


def _check_buckets(d: DataConfig) -> None:
    """data.buckets / data.bucket_pixels: the settings that need no model (data/buckets.py checks the rest)."""
    if not 0 <= d.bucket_pixels <= d.resolution ** 2:
        raise ConfigError(f"data.bucket_pixels={d.bucket_pixels} must be in [0, data.resolution² = "
                          f"{d.resolution ** 2}] (0 = resolution²; the model's token budget is its square grid)")
    if not d.buckets:
        return
    if d.source == "imagenet":  # ImageNet-T2I §2 / MicroDiT §4 train on centre crops: the presets keep them
        raise ConfigError("data.buckets=true is for your own data (folder, sidecar, webdataset, hf); ImageNet "
                          "keeps the papers' centre crop (ImageNet-T2I and MicroDiT train on it): set data.buckets=false")
    if d.source == "world":
        raise ConfigError("data.buckets=true needs images of mixed aspect ratios; the embedded world renders squares: "
                          "set data.source=folder|sidecar|webdataset|hf, or data.buckets=false")
    if d.mix:
        raise ConfigError("data.buckets=true reads one bucketed data.store_dir; data.mix mixes square stores: drop one")
    if d.val_fraction:
        raise ConfigError("data.buckets=true does not take data.val_fraction yet (held-out batches would mix buckets): "
                          "set data.val_fraction=0")


def _check_lora(t) -> None:
    """LoRA settings: one error line each (models/lora.py holds the rest; peft is imported only when used)."""
    if isinstance(t.lora_rank, bool) or not isinstance(t.lora_rank, int) or t.lora_rank < 0:
        raise ConfigError(f"train.lora_rank={t.lora_rank!r} must be a positive integer (0 = no LoRA)")
    _choice("train.lora_targets", t.lora_targets, ("attention", "mlp", "both"))
    if t.lora_alpha < 0:
        raise ConfigError(f"train.lora_alpha={t.lora_alpha} must be > 0 (0 = the rank, i.e. scale 1)")
    if t.lora_rank and t.init_mode == "state":
        raise ConfigError("train.lora_rank > 0 starts fresh adapters: use train.init_mode=weights")
    if t.lora_rank and t.parallel == "fsdp":
        raise ConfigError("train.lora_rank > 0 runs replicated: use train.parallel=ddp (the adapters are small)")


@dataclass(kw_only=True)
class EvalConfig:
    sampler: str = "heun"  # any name in diffusion.samplers.SAMPLERS
    steps: int = 30  # sampler steps (Heun: 2·steps−1 network evaluations)
    cfg_scale: float = 3.0  # uncond + scale·(cond − uncond), for metrics (MicroDiT App. B: 3; 1.5 at scale); CAD w = scale − 1
    # qualitative images (grids, `microt2i sample`, exports; MicroDiT App. B recommends 5); None = cfg_scale
    grid_cfg_scale: float | None = None
    clamp: float = 0.0  # clamp the denoised estimate x̂0 to [−clamp, clamp] in every sampler step (CAD: 1.0); 0 = off
    eta: float = 0.0  # ddim: η (0 = deterministic DDIM, 1 = DDPM-like ancestral noise)

    def __post_init__(self):
        check_sampling(self.steps, self.cfg_scale, "eval.steps", "eval.cfg_scale")
        if self.grid_cfg_scale is not None:
            check_sampling(self.steps, self.grid_cfg_scale, "eval.steps", "eval.grid_cfg_scale")
        if self.clamp < 0 or not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eval.clamp={self.clamp} must be >= 0 (0 = off) and eval.eta={self.eta} in [0, 1]")
        _bounds("eval", self, 1, "grid_size", hint=" (the sample grid is grid_size × grid_size)")
        if self.every_nimg < 0 or self.fd_n < 0 or self.geneval_per_tag < 0 or self.fd_n == 1 or self.class_n < 0:
            raise ConfigError(f"eval.every_nimg={self.every_nimg}, eval.fd_n={self.fd_n}, eval.geneval_per_tag="
                              f"{self.geneval_per_tag} and eval.class_n={self.class_n} must be >= 0 (0 = off), and "
                              f"fd_n >= 2 when on")
    grid_size: int = 4  # the demo grid is grid_size × grid_size
    seed: int = 0
    # in-training eval (eval/live.py): grid + mini world-GenEval + FD-EffNetLite0 against cached reference features
    every_nimg: int = 0  # evaluate every this many images seen; 0 = off
    fd_n: int = 128  # samples for the in-training FD (0 = skip it); only compare FDs at equal N
    geneval_per_tag: int = 8  # world-GenEval prompts per tag in training, one image each (0 = skip it)
    class_n: int = 0  # world: class / colour accuracy of this many single-object grid prompts in training (0 = off)
    # the grid's prompts (data/prompts.py): a list, or a prompts file (one per line, or .jsonl "prompt" fields);
    # () = the world grid on world data, else captions of the data set (held-out ones with data.val_fraction)
    prompts: tuple[str, ...] | str = ()

    @property
    def grid_scale(self) -> float:
        """The CFG scale of qualitative images: `grid_cfg_scale`, else `cfg_scale` (the metrics' scale)."""
        return self.cfg_scale if self.grid_cfg_scale is None else self.grid_cfg_scale


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


def _bounds(section: str, obj, low: float, *names: str, strict: bool = False, hint: str = "") -> None:
    """Every field in `names` must be >= `low` (> `low` with `strict`); else one ConfigError naming the first."""
    for name in names:
        value = getattr(obj, name)
        if value < low or (strict and value == low):
            raise ConfigError(f"{section}.{name}={value} must be {'>' if strict else '>='} {low:g}{hint}")


def check_sampling(steps: int, cfg_scale: float, steps_name: str = "--steps", scale_name: str = "--cfg-scale") -> None:
    """Sampler steps ≥ 1 and a guidance scale ≥ 0 (0 = unconditional, 1 = no guidance), else one ConfigError."""
    if steps < 1 or steps > 10_000:
        raise ConfigError(f"{steps_name}={steps} must be in [1, 10000] (sampler steps; the presets use 4-250)")
    if not 0.0 <= cfg_scale <= 100.0:
        raise ConfigError(f"{scale_name}={cfg_scale} must be in [0, 100] (0 = unconditional, 1 = no guidance, "
                          f"3-7 typical)")


def check_device(name: str, key: str = "train.device") -> None:
    """`name` is a device this torch build can use ("auto", "cpu", "cuda", "cuda:N", "mps"); else one ConfigError."""
    if name == "auto":
        return

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but this torch build has no CUDA or sees no GPU "
                          f"(torch {torch.__version__}); use {key}=cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name!r} but only {torch.cuda.device_count()} GPU(s) are visible; use cuda:0 … "
                          f"cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name!r} but MPS is not available here; use {key}=cpu (or auto)")


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
        if value is None:
            return None
        for a in args[1:]:  # e.g. `tuple[str, ...] | str`: the first type that takes the value
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        return _coerce(value, args[0], where)
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
    text = yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)
    atomic_write_text(path, text)


def load_yaml(path: str | os.PathLike) -> RunConfig:
    """A RunConfig from YAML; a missing, unreadable or malformed file is one ConfigError naming file:line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML written by `microt2i train` or a preset name")
    raw = p.read_bytes()
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a byte-order mark is fine
    try:
        d = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 (byte {raw[e.start]:#04x}); re-encode the file, e.g. "
                          f"`iconv -f latin1 -t utf-8`") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ConfigError(f"{where}: malformed YAML ({getattr(e, 'problem', None) or e}); fix that line or start "
                          f"from `microt2i train <preset> --dry-run > config.yaml`") from None
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (model:, train:, …), got "
                          f"{type(d).__name__}; see `microt2i train <preset> --dry-run`")
    return from_dict(RunConfig, d or {})


def plain(x):
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x
