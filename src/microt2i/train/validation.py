"""Held-out loss every `train.val_every_nimg` images: the objective's own loss on the held-out split
(`data.val_fraction`, data/holdout.py) at fixed noise levels with fixed noise.

The training loss is a noisy estimate (fresh σ, noise, caption dropout and patch masks every step); this one is a
deterministic function of the weights: the first `train.val_n` held-out samples, each scored at every one of
`LEVELS` noise levels — the quantiles 1/8, 3/8, 5/8, 7/8 of the objective's own training σ distribution (estimated
once from a fixed draw), so each level carries the weight training gives it — with noise drawn from a generator
seeded by (`train.seed`, level), unmasked, with the full caption (no dropout), in eval mode. Two evaluations of the
same weights give the same number; two runs compare at equal nimg. Logged as `val_loss` (mean over levels) and
`val_loss/sigma_<σ>` per level on a line of its own in stats.jsonl, next to the training loss (report curves).
The held-out samples are never trained on: the trainer's sampler draws from the training split only.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import ConfigError
from ..data.holdout import split_indices

LEVELS = (0.125, 0.375, 0.625, 0.875)  # quantiles of the training σ distribution


def check_validation(cfg) -> None:
    """`train.val_every_nimg` needs a held-out split; one ConfigError otherwise."""
    if cfg.train.val_every_nimg and not cfg.data.val_fraction:
        raise ConfigError(f"train.val_every_nimg={cfg.train.val_every_nimg} needs a held-out split: set "
                          f"data.val_fraction (e.g. 0.05; those samples are then never trained on)")


def fixed_sigmas(objective, seed: int = 0, n: int = 8192) -> torch.Tensor:
    """The `LEVELS` quantiles of `objective.sample_sigma` from one fixed draw of n: float32 [len(LEVELS)]."""
    draw = objective.sample_sigma(n, torch.Generator().manual_seed(seed), "cpu").double()
    return torch.quantile(draw, torch.tensor(LEVELS, dtype=torch.float64)).float()


class HeldOutLoss:
    """`due(nimg, batch_size)` says when; `__call__(model, nimg)` returns the stats line."""

    def __init__(self, cfg, store, objective, device, batch: int = 64):
        check_validation(cfg)
        t = cfg.train
        self.every, self.total, self.device, self.batch = t.val_every_nimg, t.total_nimg, device, batch
        self.objective, self.store, self.seed = objective, store, t.seed
        held = split_indices(len(store), cfg.data.val_fraction, cfg.data.seed)[1]
        self.indices = held[:t.val_n]
        self.sigmas = fixed_sigmas(objective, t.seed)

    def due(self, nimg: int, batch_size: int) -> bool:
        return nimg // self.every != (nimg - batch_size) // self.every or nimg >= self.total

    @torch.no_grad()
    def __call__(self, model, nimg: int) -> dict:
        was_training = model.training
        model.eval()
        per_level = []
        try:
            for j, sigma in enumerate(self.sigmas.tolist()):
                total, count = 0.0, 0
                for k in range(0, len(self.indices), self.batch):
                    idx = self.indices[k:k + self.batch]
                    # the latents of a posterior store and the noise: fixed per (seed, level, chunk), drawn on
                    # the CPU (the objectives move the noise to x0's device), so every device scores the same draw
                    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 7919, j, k])
                                                            .generate_state(1)[0]))
                    b = self.store.batch(idx, self.device, generator=gen)
                    s = torch.full((len(idx),), sigma, device=self.device)
                    loss = self.objective.loss(model, b["x0"], b["text_tokens"].float(), b["text_mask"],
                                               generator=gen, sigma=s)
                    total += float(loss.double().sum())
                    count += len(idx)
                per_level.append(total / count)
        finally:
            model.train(was_training)
        stats = {"nimg": nimg, "val_loss": float(np.mean(per_level))}
        stats.update({f"val_loss/sigma_{s:.3g}": v for s, v in zip(self.sigmas.tolist(), per_level)})
        return stats

