"""AdamW with decay only on matrices, and the learning-rate schedule as a pure function of images seen."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on ≥2-D weights only; norms, biases, LayerScale γ and tables are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_at(nimg: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_nimg`, then constant or cosine down to lr·min_lr_ratio at `total_nimg`."""
    if cfg.warmup_nimg > 0 and nimg < cfg.warmup_nimg:
        return cfg.lr * (nimg + cfg.batch_size) / (cfg.warmup_nimg + cfg.batch_size)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(cfg.total_nimg - cfg.warmup_nimg, 1)
    progress = min(max(nimg - cfg.warmup_nimg, 0) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
