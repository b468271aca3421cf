"""Resumable data order: a global permutation per epoch, addressed by images seen (EDM2's InfiniteSampler idea).

Position p (the p-th image the run will ever see) maps to sample perm_e[p mod n] with e = p div n and perm_e drawn
from (seed, e). Resuming at nimg therefore needs no replay, and the order does not depend on the micro-batch size
or on how the global batch is split over ranks.
"""

from __future__ import annotations

import numpy as np


def rank_indices(sampler, start: int, global_batch: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous slice of the global batch that starts at `start` (any sampler with `indices`)."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
    per = global_batch // world_size
    return sampler.indices(start + rank * per, per)


class ResumableSampler:
    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, subset=None):
        """`subset`: the sample indices to draw from (e.g. the training split, data/holdout.py); None = all n."""
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        n = n if self.subset is None else len(self.subset)
        if n <= 0:
            raise ValueError(f"the dataset is empty (n={n}); build or point to a dataset with at least one sample")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Sample indices for global positions [start, start + count)."""
        pos = np.arange(start, start + count, dtype=np.int64)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            out[sel] = self._perm(int(epoch))[pos[sel] % self.n]
        return out if self.subset is None else self.subset[out]

    def rank_indices(self, start: int, global_batch: int, rank: int, world_size: int) -> np.ndarray:
        return rank_indices(self, start, global_batch, rank, world_size)
