"""Named run presets: `get(name) -> RunConfig`, `names()`. Paper presets state their model's parameter count
(tests check it on the meta device); `world-*` presets run the whole chain on a CPU in minutes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .config import ConfigError, DataConfig, EvalConfig, ObjectiveConfig, RunConfig, TrainConfig
from .models.dit_i import DIT_I_CONFIGS


def _dit_i_256() -> RunConfig:
    # Paper 000 §2 / App. C: SD VAE latents (sd-vae-ft-ema), flan-T5-XL captions; objective here is EDM.
    return RunConfig(
        name="dit-i-256",
        model=DIT_I_CONFIGS["dit-i-256"],
        objective=ObjectiveConfig(sigma_data=0.5, p_mean=-0.6, p_std=1.2),
        data=DataConfig(resolution=256, codec="stabilityai/sd-vae-ft-ema", text_encoder="google/flan-t5-xl",
                        text_len=128, num_images=1_281_167),
        train=TrainConfig(total_nimg=250_000 * 1024, batch_size=1024, micro_batch=64, lr=1e-4, warmup_nimg=5000 * 1024,
                          weight_decay=0.01, grad_clip=2.0, ema_decay=0.9999, precision="bf16",
                          log_every_nimg=100 * 1024, ckpt_every_nimg=5000 * 1024),
        eval=EvalConfig(steps=30, cfg_scale=5.0),
    )


def _dit_i_512() -> RunConfig:
    # Paper 000 §3.3: continue the 256² checkpoint at 512² for 100k steps, same data.
    base = _dit_i_256()
    return replace(base, name="dit-i-512", model=DIT_I_CONFIGS["dit-i-512"],
                   objective=replace(base.objective, p_mean=0.0, p_std=0.6),
                   data=replace(base.data, resolution=512),
                   train=replace(base.train, total_nimg=100_000 * 1024, micro_batch=16, warmup_nimg=0))


def _world_s() -> RunConfig:
    # The CPU demo: 32 px pixel-space world images, oracle long captions, MiniLM tokens, ≈ 6 min on 2 cores.
    return RunConfig(
        name="world-s",
        model=DIT_I_CONFIGS["world-s"],
        objective=ObjectiveConfig(sigma_data=0.5, p_mean=-0.8, p_std=1.2),
        data=DataConfig(resolution=32, num_images=4096, captions="long", text_encoder="minilm", text_len=64),
        train=TrainConfig(total_nimg=24_576, batch_size=64, lr=1e-3, warmup_nimg=1024, min_lr_ratio=0.1,
                          grad_clip=1.0, ema_decay=0.995, ema_start_nimg=4096, log_every_nimg=512,
                          ckpt_every_nimg=8192),
        eval=EvalConfig(steps=24, cfg_scale=3.0, grid_size=4),
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


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "dit-i-256": _dit_i_256,
    "dit-i-512": _dit_i_512,
    "world-s": _world_s,
    "world-tiny": _world_tiny,
}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
