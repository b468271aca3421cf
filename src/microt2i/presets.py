"""Named run presets: `get(name) -> RunConfig`, `names()`. Paper presets state their model's parameter count
(`PAPER_PARAMS`; tests check it on the meta device) and follow their paper by default; what still departs from it is
tabled in docs/presets.md. `world-*` presets run the whole chain on a CPU in minutes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .config import (AugmentConfig, ConfigError, CropConfig, CutMixConfig, DataConfig, EvalConfig, ObjectiveConfig,
                     RunConfig, TrainConfig)
from .models.cad_i import CAD_I_CONFIGS
from .models.dit_i import DIT_I_CONFIGS
from .models.microdit import MICRODIT_CONFIGS


# ImageNet-T2I's ε objective (Eq. 1, Algorithm 1: x_t = √γ(t)·x0 + √(1−γ(t))·ε). 000 states neither γ(t) nor the
# sampler, and its DiT-I code is unreleased (the authors' T2I-ImageNet repository has CAD-I only); the authors' released trainer (CAD-I, T2I-ImageNet's diffusion code) uses
# γ = 1 − t, the encoded empty caption as the unconditional one and DDIM 250 steps: taken here. The EDM settings
# (σ_data, P_mean, P_std) stay in the same block, so `--objective edm` (objective.kind=edm) trains DiT-I under EDM.
_DIT_I_OBJECTIVE = ObjectiveConfig(kind="vp", schedule="linear", cond_drop=0.1, uncond="empty",
                                   sigma_data=0.5, p_mean=-0.6, p_std=1.2)
# TA + IA (ImageNet-T2I §2.2, App. E–F): 000's 512² DiT-I and its 256² initialisation train with Crop (p = 0.5, crops > 50 %
# of the side): "Both the pretraining and the fine-tuning use the Crop image augmentation strategy" (§2.3). CutMix
# is reported as a separate model (Tables 2, 3, 6); its settings (CM-all above τ = 400 with p = 0.5, Algorithm 1,
# Tables 9–11) are kept here, so `augment.cutmix.enabled=true` adds it.
_DIT_I_AUGMENT = AugmentConfig(cutmix=CutMixConfig(enabled=False, setting="all", p=0.5, tau=400.0),
                               crop=CropConfig(enabled=True, p=0.5, min_side=0.5))


def _dit_i_256() -> RunConfig:
    # ImageNet-T2I §2 / App. C: ImageNet (1,281,167 images) with LLaVA captions, SD VAE latents (sd-vae-ft-ema),
    # flan-T5-XL tokens; 250k steps at 256² (§2.3). text_len 256: the authors' T5 length (T2I-ImageNet's captioning code), which holds a
    # ≤ 200-token LLaVA caption (docs/presets.md: how it was measured). 439M parameters with the crop token (ImageNet-T2I
    # Table 5: 0.4B).
    return RunConfig(
        name="dit-i-256",
        model=replace(DIT_I_CONFIGS["dit-i-256"], crop_cond=True),
        objective=_DIT_I_OBJECTIVE,
        data=DataConfig(source="imagenet", resolution=256, codec="stabilityai/sd-vae-ft-ema",
                        text_encoder="google/flan-t5-xl", text_len=256, num_images=1_281_167),
        augment=_DIT_I_AUGMENT,
        train=TrainConfig(total_nimg=250_000 * 1024, batch_size=1024, micro_batch=64, lr=1e-4, warmup_nimg=5000 * 1024,
                          weight_decay=0.01, grad_clip=2.0, ema_decay=0.9999, precision="bf16",
                          log_every_nimg=100 * 1024, ckpt_every_nimg=5000 * 1024),
        eval=EvalConfig(sampler="ddim", steps=250, cfg_scale=5.0),
    )


def _dit_i_512() -> RunConfig:
    # ImageNet-T2I §2.3: continue the 256² checkpoint at 512² for 100k steps, same data, same augmentation.
    base = _dit_i_256()
    return replace(base, name="dit-i-512", model=replace(DIT_I_CONFIGS["dit-i-512"], crop_cond=True),
                   objective=replace(base.objective, p_mean=0.0, p_std=0.6),
                   data=replace(base.data, resolution=512),
                   train=replace(base.train, total_nimg=100_000 * 1024, micro_batch=16, warmup_nimg=0))


WORLD_S_NIMG = 65_536  # the demo's training images: what ≈ 5½ minutes on two idle cores buy (README)


def _world_s() -> RunConfig:
    # The CPU demo: 32 px world images in the shipped world VAE's 4×8×8 latent space (latent diffusion, ImageNet-T2I
    # App. C), oracle long captions, MiniLM tokens. Class accuracy grows with the images seen and hardly with width
    # (EXPERIMENTS.md, time-to-quality): a width-64 DiT-I (2.5× the images per CPU second of width 128) under
    # rectified flow at lr 2e-3, as many images as the demo's minutes buy. EDM stays one override away:
    # objective.kind=edm, whose σ is p_mean/p_std below; flow draws its t logit-normal (objective.logit_mean 0,
    # logit_std 1, SD3 §3.1) and reads neither.
    return RunConfig(
        name="world-s",
        model=DIT_I_CONFIGS["world-s"],
        objective=ObjectiveConfig(kind="flow", sigma_data=0.5, p_mean=-0.8, p_std=1.2),
        data=DataConfig(resolution=32, num_images=4096, captions="long", codec="world-vae", text_encoder="minilm",
                        text_len=64),
        train=TrainConfig(total_nimg=WORLD_S_NIMG, batch_size=16, lr=2e-3, warmup_nimg=1024, min_lr_ratio=0.1,
                          grad_clip=1.0, ema_decay=0.998, ema_start_nimg=4096, log_every_nimg=1024,
                          ckpt_every_nimg=16_384),
        # CFG 6 (not 3): +0.06 and +0.01 class accuracy on 280 prompts for two trained world-s, colour 0.99
        # (EXPERIMENTS.md, time-to-quality, session 6)
        eval=EvalConfig(steps=24, cfg_scale=6.0, grid_size=4),
    )


def _world_tiny() -> RunConfig:
    # CI: a few steps on 16 px images in seconds.
    return RunConfig(
        name="world-tiny",
        model=DIT_I_CONFIGS["world-tiny"],
        data=DataConfig(resolution=16, num_images=64, captions="long", text_encoder="minilm", text_len=32),
        train=TrainConfig(total_nimg=128, batch_size=16, lr=1e-3, ema_decay=0.9, log_every_nimg=32, ckpt_every_nimg=64),
        eval=EvalConfig(steps=4, cfg_scale=2.0, grid_size=2),
    )


def _cad_i_256() -> RunConfig:
    # ImageNet-T2I CAD-I = the CAD code's `imagenet_256_rin_L_text_ldm` overrides (T2I-ImageNet's CAD configs and sampler): VP ε-prediction
    # with γ = 1 − t (Eq. 1), SD-VAE latents normalised per channel to std 0.5 with SD-1.5 statistics
    # (`data.latent_norm=sd15-channel`, the CAD code's `channel_wise_normalisation`), flan-T5-XL tokens padded to 256,
    # caption dropout 0.1 to the encoded empty caption; LAMB 1e-3, wd 0.01 (none on norms/biases), 5k-step warm-up
    # then cosine with rate 0.7, clip 2, EMA 0.9999 from step 0; DDIM 250 steps with x̂0 clamped to ±1, CAD's cfg
    # w = 10 (generate.py) i.e. scale 11. TA + CutMix CM-all (τ 400, p 0.5), the CAD-I of ImageNet-T2I Tables 5–6 and of the
    # `_cutmix` overrides; the τ gate is on the noise level (ᾱ < 0.6), whatever the latent scale (DESIGN §3).
    # 330M parameters (ImageNet-T2I Table 5: 0.3B).
    return RunConfig(
        name="cad-i-256",
        model=CAD_I_CONFIGS["cad-i-256"],
        objective=ObjectiveConfig(kind="vp", schedule="linear", cond_drop=0.1, uncond="empty"),
        data=DataConfig(source="imagenet", resolution=256, codec="stabilityai/sd-vae-ft-ema",
                        latent_norm="sd15-channel", text_encoder="google/flan-t5-xl", text_len=256,
                        num_images=1_281_167),
        augment=AugmentConfig(cutmix=CutMixConfig(enabled=True, setting="all", p=0.5, tau=400.0)),
        train=TrainConfig(total_nimg=500_000 * 1024, batch_size=1024, micro_batch=128, optimizer="lamb", lr=1e-3,
                          weight_decay=0.01, warmup_nimg=5000 * 1024, cosine_rate=0.7, grad_clip=2.0,
                          ema_decay=0.9999, precision="bf16", log_every_nimg=100 * 1024,
                          ckpt_every_nimg=25_000 * 1024),
        eval=EvalConfig(sampler="ddim", steps=250, cfg_scale=11.0, clamp=1.0),
    )


def _cad_i_base() -> RunConfig:
    # The CAD code's `imagenet_256_rin_base_text_ldm_cutmix`: the smaller RIN, same recipe.
    base = _cad_i_256()
    return replace(base, name="cad-i-base", model=CAD_I_CONFIGS["cad-i-base"])


def _world_cad_s() -> RunConfig:
    # The CPU demo with CAD-I: world-s's data and AdamW, CAD-I's objective (VP ε, γ = 1 − t), null caption and
    # x̂0 clamp. LAMB moves each tensor by lr·‖θ‖ per step, which suits CAD's 500k steps but not 384: on the world
    # (48 steps of 64) LAMB at 1e-2 left the ε-loss at 0.95, AdamW at 1e-3 took it to 0.54.
    # Its budget stays the width-128 world-s's of session 5 (32,768 images at lr 1e-3): CAD-I's step is dearer.
    base = _world_s()
    base = replace(base, train=replace(base.train, total_nimg=32_768, lr=1e-3, ckpt_every_nimg=8192))
    return replace(base, name="world-cad-s", model=CAD_I_CONFIGS["world-cad-s"],
                   objective=ObjectiveConfig(kind="vp", schedule="linear", uncond="empty"),
                   eval=replace(base.eval, sampler="dpmpp_2m", steps=32, clamp=1.0, cfg_scale=3.0))


def _world_cad_tiny() -> RunConfig:
    # CI: a few steps of CAD-I on 16 px images in seconds.
    base = _world_tiny()
    return replace(base, name="world-cad-tiny", model=CAD_I_CONFIGS["world-cad-tiny"],
                   objective=ObjectiveConfig(kind="vp", schedule="linear", uncond="empty"),
                   train=replace(base.train, optimizer="lamb", weight_decay=0.01, cosine_rate=0.7),
                   eval=replace(base.eval, sampler="ddim", clamp=1.0))


# ---------------------------------------------------------------------------------------------------------------
# MicroDiT (MicroDiT): the 4-stage recipe of Table 3, the App. D small-scale setup, and their world versions

_MICRODIT_STEP = 2048  # Table 3: global batch 2048 in every stage; nimg = steps · 2048


def _microdit_xl_2_stages() -> list[RunConfig]:
    """Table 3 (and the reference configs, micro_diffusion's configs): 256² masked 250k steps → 256² unmasked +30k → 512² masked
    50k → 512² unmasked +5k; AdamW (0.9, 0.999), wd 0.1, eps 1e-8, bf16, σ_data 0.9, caption dropout 0.1 to zero
    embeddings. micro_batch is the reference's per-GPU micro-batch; accumulation rounds are derived from it."""
    B = _MICRODIT_STEP
    xl, xl512 = MICRODIT_CONFIGS["microdit-xl-2"], MICRODIT_CONFIGS["microdit-xl-2-512"]
    obj_256 = ObjectiveConfig(sigma_data=0.9, p_mean=-0.6, p_std=1.2, cond_drop=0.1, uncond="zero")
    obj_512 = replace(obj_256, p_mean=0.0, p_std=0.6)
    # 37M images (22M real + 15M synthetic, App. B); one stored posterior sample per image (micro_diffusion's data pipeline)
    data_256 = DataConfig(resolution=256, codec="stabilityai/sdxl-vae", text_encoder="apple/DFN5B-CLIP-ViT-H-14-378",
                          text_len=77, num_images=37_000_000, latent_mode="sample")
    data_512 = replace(data_256, resolution=512)
    common = dict(batch_size=B, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8, precision="bf16", seed=18,
                  log_every_nimg=100 * B)
    # App. B: Heun 30 steps; guidance 1.5 for the large model's quantitative results, 5 for qualitative images
    ev = EvalConfig(steps=30, cfg_scale=1.5, grid_cfg_scale=5.0)
    return [
        # Stage 1: 75 % masked at 256², cosine with 2500 warm-up steps down to 0.33·lr, clip 0.25, no EMA
        RunConfig(name="microdit-xl-2-256-masked", model=replace(xl, mask_ratio=0.75), objective=obj_256, data=data_256,
                  train=TrainConfig(total_nimg=250_000 * B, micro_batch=256, lr=2.4e-4, lr_schedule="cosine",
                                    warmup_nimg=2500 * B, min_lr_ratio=0.33, grad_clip=0.25, ema_decay=0.0,
                                    ckpt_every_nimg=2500 * B, **common), eval=ev),
        # Stage 2: unmasked fine-tune at 256², constant 8e-5, clip 0.25, no EMA
        RunConfig(name="microdit-xl-2-256-unmasked", model=replace(xl, mask_ratio=0.0), objective=obj_256,
                  data=data_256,
                  train=TrainConfig(total_nimg=30_000 * B, micro_batch=64, lr=8e-5, lr_schedule="constant",
                                    grad_clip=0.25, ema_decay=0.0, ckpt_every_nimg=2500 * B, **common), eval=ev),
        # Stage 3: 75 % masked at 512² (positions interpolated ×2), (P_mean, P_std) = (0, 0.6), 500 warm-up steps,
        # clip 0.5, EMA 0.99975 from step 25k
        RunConfig(name="microdit-xl-2-512-masked", model=replace(xl512, mask_ratio=0.75), objective=obj_512,
                  data=data_512,
                  train=TrainConfig(total_nimg=50_000 * B, micro_batch=32, lr=8e-5, lr_schedule="constant",
                                    warmup_nimg=500 * B, grad_clip=0.5, ema_decay=0.99975, ema_start_nimg=25_000 * B,
                                    ckpt_every_nimg=2500 * B, **common), eval=ev),
        # Stage 4: unmasked fine-tune at 512², constant 8e-5, clip 0.5, EMA 0.9975 from step 1k
        RunConfig(name="microdit-xl-2-512-unmasked", model=replace(xl512, mask_ratio=0.0), objective=obj_512,
                  data=data_512,
                  train=TrainConfig(total_nimg=5_000 * B, micro_batch=16, lr=8e-5, lr_schedule="constant",
                                    grad_clip=0.5, ema_decay=0.9975, ema_start_nimg=1_000 * B,
                                    ckpt_every_nimg=500 * B, **common), eval=ev),
    ]


def _microdit_xl_2() -> RunConfig:
    return replace(_microdit_xl_2_stages()[0], name="microdit-xl-2")


def _microdit_tiny_2() -> RunConfig:
    # App. D small-scale setup: DiT-Tiny/2 on 256² latents, 75 % deferred masking, 60k AdamW steps, cosine, the
    # best Fig. 9 settings (β2 0.999, wd 0.1, (P_mean, P_std) = (−0.6, 1.2), lr 3.2e-4), EMA 0.995 for the last 10k
    # steps; guidance 3 in quantitative evaluation, 5 in qualitative images (App. B). The batch size is not stated in
    # MicroDiT; Table 3's 2048 is used.
    B = _MICRODIT_STEP
    base = _microdit_xl_2_stages()[0]
    return replace(base, name="microdit-tiny-2", model=MICRODIT_CONFIGS["microdit-tiny-2"],
                   train=replace(base.train, total_nimg=60_000 * B, lr=3.2e-4, warmup_nimg=0, min_lr_ratio=0.0,
                                 grad_clip=1.0, ema_decay=0.995, ema_start_nimg=50_000 * B),
                   eval=EvalConfig(steps=30, cfg_scale=3.0, grid_cfg_scale=5.0))


def _world_microdit_stages(size: str) -> list[RunConfig]:
    """Table 3 on the world: half-resolution masked → unmasked → full-resolution masked → unmasked, the stages'
    lengths in roughly the paper's proportions, the same LR drop (×1/3 after stage 1) and EMA pattern; σ_data 0.5
    for pixels in [−1, 1]. The noise distribution stays (P_mean, P_std) = (−0.6, 1.2): the world's full resolution
    (32 px, p = 2: 256 tokens) is the paper's 256² token count, and Table 3's (0, 0.6) for 64×64 latents leaves the
    low noise levels untrained here (speckled samples)."""
    tiny = size == "tiny"
    res = 16 if tiny else 32
    model = MICRODIT_CONFIGS[f"world-microdit-{size}"]
    half = replace(model, input_size=model.input_size // 2)
    full = replace(model, pos_interp_scale=2.0)
    obj = ObjectiveConfig(sigma_data=0.5, p_mean=-0.6, p_std=1.2)
    data = DataConfig(resolution=res, num_images=64 if tiny else 4096, captions="long", text_encoder="minilm",
                      text_len=32 if tiny else 64)
    data_lo = replace(data, resolution=res // 2)
    nimg = (32, 16, 16, 16) if tiny else (12_288, 2048, 3072, 1024)
    B = 8 if tiny else 64
    lr = 1e-3
    t = dict(batch_size=B, weight_decay=0.1, log_every_nimg=8 if tiny else 512, ckpt_every_nimg=16 if tiny else 4096)
    ev = EvalConfig(steps=4 if tiny else 24, cfg_scale=2.0 if tiny else 3.0, grid_size=2 if tiny else 4)
    name = f"world-microdit-{size}"
    return [
        RunConfig(name=f"{name}-{res // 2}-masked", model=replace(half, mask_ratio=0.75), objective=obj,
                  data=data_lo, train=TrainConfig(total_nimg=nimg[0], lr=lr, warmup_nimg=B * 4, min_lr_ratio=0.33,
                                                  grad_clip=1.0, ema_decay=0.0, **t), eval=ev),
        RunConfig(name=f"{name}-{res // 2}-unmasked", model=replace(half, mask_ratio=0.0), objective=obj,
                  data=data_lo, train=TrainConfig(total_nimg=nimg[1], lr=lr / 3, lr_schedule="constant", grad_clip=1.0,
                                                  ema_decay=0.0, **t), eval=ev),
        RunConfig(name=f"{name}-{res}-masked", model=replace(full, mask_ratio=0.75), objective=obj, data=data,
                  train=TrainConfig(total_nimg=nimg[2], lr=lr / 3, lr_schedule="constant", warmup_nimg=B, grad_clip=1.0,
                                    ema_decay=0.98, ema_start_nimg=nimg[2] // 2, **t), eval=ev),
        RunConfig(name=f"{name}-{res}-unmasked", model=replace(full, mask_ratio=0.0), objective=obj, data=data,
                  train=TrainConfig(total_nimg=nimg[3], lr=lr / 3, lr_schedule="constant", grad_clip=1.0,
                                    ema_decay=0.9, ema_start_nimg=nimg[3] // 4, **t), eval=ev),
    ]


def _world_microdit(size: str) -> RunConfig:
    # One masked run at the world's full resolution (`microt2i train`); the demo runs the 4-stage recipe instead.
    stages = _world_microdit_stages(size)
    s1, last = stages[0], stages[-1]
    model = replace(MICRODIT_CONFIGS[f"world-microdit-{size}"], mask_ratio=0.75)
    return replace(last, name=f"world-microdit-{size}", model=model, objective=s1.objective,
                   train=replace(s1.train, total_nimg=sum(s.train.total_nimg for s in stages),
                                 ema_decay=last.train.ema_decay, ema_start_nimg=s1.train.total_nimg))


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "dit-i-256": _dit_i_256,
    "dit-i-512": _dit_i_512,
    "world-s": _world_s,
    "world-tiny": _world_tiny,
    "cad-i-256": _cad_i_256,
    "cad-i-base": _cad_i_base,
    "world-cad-s": _world_cad_s,
    "world-cad-tiny": _world_cad_tiny,
    "microdit-xl-2": _microdit_xl_2,
    "microdit-tiny-2": _microdit_tiny_2,
    "world-microdit-s": lambda: _world_microdit("s"),
    "world-microdit-tiny": lambda: _world_microdit("tiny"),
}

# Parameter counts of the presets that claim a paper model: (exact count, the paper's own figure, where it is stated).
# tests/test_presets.py builds each on the meta device and checks the count, and that the paper's figure is the count
# rounded or truncated to the figure's digits.
PAPER_PARAMS: dict[str, tuple[int, str, str]] = {
    "dit-i-256": (439_197_968, "0.4B", "ImageNet-T2I Table 5"),  # incl. the crop-coordinate token (1.05M)
    "dit-i-512": (439_197_968, "0.4B", "ImageNet-T2I Table 5"),  # positions are fixed sin-cos: same count at 512²
    "cad-i-256": (330_235_152, "0.3B", "ImageNet-T2I Table 5"),  # T2I-ImageNet's CAD config: 330.2M (the reference RINTextCond)
    "microdit-xl-2": (1_165_442_320, "1.16B", "MicroDiT Table 8"),  # every stage of the recipe has this count
}

# Multi-stage recipes (`train/recipe.py` runs them; weights carry from stage to stage)
RECIPES: dict[str, Callable[[], list[RunConfig]]] = {
    "microdit-xl-2": _microdit_xl_2_stages,  # Table 3: 256 masked → 256 unmasked → 512 masked → 512 unmasked
    "world-microdit-s": lambda: _world_microdit_stages("s"),
    "world-microdit-tiny": lambda: _world_microdit_stages("tiny"),
    "dit-i": lambda: [_dit_i_256(), _dit_i_512()],  # ImageNet-T2I §3.3: 256² then 100k steps at 512²
}


# World presets by (model family, size): `microt2i demo --model cad-i` swaps world-s for world-cad-s
WORLD_PRESETS: dict[tuple[str, str], str] = {
    ("dit-i", "s"): "world-s", ("dit-i", "tiny"): "world-tiny",
    ("cad-i", "s"): "world-cad-s", ("cad-i", "tiny"): "world-cad-tiny",
    ("microdit", "s"): "world-microdit-s", ("microdit", "tiny"): "world-microdit-tiny",
}


def world_preset(name: str, family: str) -> str:
    """The world preset of the same size as preset `name` for model `family` (e.g. world-s, cad-i → world-cad-s)."""
    size = next((sz for (_, sz), n in WORLD_PRESETS.items() if n == name), None)
    families = sorted({f for f, _ in WORLD_PRESETS})
    if size is None:
        raise ConfigError(f"--model picks the network of a world preset ({', '.join(sorted(WORLD_PRESETS.values()))}), "
                          f"not of {name!r}; for a paper preset pass its own name (e.g. cad-i-256)")
    if (family, size) not in WORLD_PRESETS:
        raise ConfigError(f"--model {family!r} has no world preset; valid: {', '.join(families)}")
    return WORLD_PRESETS[family, size]


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def recipe_names() -> list[str]:
    return list(RECIPES)


def recipe(name: str) -> list[RunConfig]:
    """The stages of multi-stage recipe `name`, in order."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]()


def stages(name: str) -> list[RunConfig]:
    """A recipe's stages, or a single preset as a one-stage recipe (e.g. `microt2i cost recipe cad-i-256`)."""
    if name in RECIPES:
        return RECIPES[name]()
    if name in PRESETS:
        return [PRESETS[name]()]
    raise ConfigError(f"unknown recipe or preset {name!r}; valid recipes: {', '.join(RECIPES)}; presets: "
                      f"{', '.join(PRESETS)}")
