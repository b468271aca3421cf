"""A held-out split of the training data (`data.val_fraction`): never trained on, scored by train/validation.py.

The split is a fixed function of (store size, fraction, `data.seed`): a seeded permutation's first
round(n·fraction) samples are held out (at least one). The trainer's sampler draws from the rest only
(`ResumableSampler(subset=…)`), so with `data.val_fraction=0` the data order is exactly the one without a split.
"""

from __future__ import annotations

import numpy as np

from ..config import ConfigError
from .sampler import ResumableSampler


def split_indices(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices), both sorted int64; held-out is empty for fraction 0."""
    if fraction <= 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    k = max(1, int(round(n * fraction)))
    if k >= n:
        raise ConfigError(f"data.val_fraction={fraction} holds out {k} of the data set's {n} samples, leaving none to "
                          f"train on; lower it (e.g. data.val_fraction=0.05)")
    perm = np.random.default_rng([seed, 0x5E1D]).permutation(n)
    return np.sort(perm[k:]).astype(np.int64), np.sort(perm[:k]).astype(np.int64)


def train_sampler(cfg, n: int) -> ResumableSampler:
    """The trainer's resumable sampler over the training split of a store of `n` samples."""
    subset = split_indices(n, cfg.data.val_fraction, cfg.data.seed)[0] if cfg.data.val_fraction else None
    return ResumableSampler(n, seed=cfg.train.seed, subset=subset)
