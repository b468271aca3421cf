"""Distribution metrics on feature arrays: Fréchet distance, KID and PRDC (`reference/evaluation.md` §3, §4).

Everything runs in float64 numpy. Every result carries the sample counts it was computed from, because all three
metrics are biased by N (FD upwards for small N, PRDC through its k-NN radii): compare numbers only at equal N,
k and feature space.

- FD (Heusel et al.; the FID formula on any features): ||μ1−μ2||² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), unbiased
  covariance. Tr (Σ1Σ2)^½ is computed from the symmetric matrix √Σ1 Σ2 √Σ1 (same eigenvalues as Σ1Σ2), whose
  eigenvalues are clipped at 0, so a singular Σ (N < d) never produces the complex square roots `sqrtm` does;
  when one set is given as N ≤ d samples, the same trace comes from an N × N matrix instead.
- KID (Bińkowski et al.; clean-fid / torch-fidelity defaults): unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y/d + 1)³, averaged over 100 subsets of size min(N, M, 1000) drawn with a fixed seed.
- PRDC (Naeem et al. 2020, clovaai `prdc`): precision, recall, density, coverage from k-NN balls (k-th neighbour
  distance excluding the point itself), strict `<`. Distances are computed in row chunks, so 50k × 50k needs
  a few hundred MB instead of the 20 GB of three dense matrices. `splits` > 1 averages over equal chunks; the
  default, k = 3 over 5 splits, is the convention of T2I-ImageNet / DiffEvals (not comparable with whole-set k=5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK_ELEMENTS = 1 << 24  # float64 entries per distance block: 128 MB


def as_features(x, name: str = "features") -> np.ndarray:
    """A finite float64 [N, D] array with N >= 2, or one ValueError that names the input."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D] of features, got shape {a.shape}; "
                         f"flatten each sample's features into one row")
    if a.shape[0] < 2:
        raise ValueError(f"{name} has {a.shape[0]} sample(s); distribution metrics need at least 2")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; check the images and the feature extractor")
    return a


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"real features have dimension {a.shape[1]} but fake features {b.shape[1]}; "
                         f"extract both with the same feature extractor")


# ------------------------------------------------------------------------------------------------ Fréchet distance


@dataclass(frozen=True)
class GaussianStats:
    """Mean and unbiased covariance of N feature vectors (what FID caches for a reference set)."""

    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D, D]
    n: int

    @classmethod
    def of(cls, features, name: str = "features") -> GaussianStats:
        f = as_features(features, name)
        return cls(f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), f.shape[0])


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(s1: GaussianStats, s2: GaussianStats, low_rank: np.ndarray | None) -> float:
    """Tr (Σ1Σ2)^½. With `low_rank` = the centred samples behind Σ2 scaled by 1/√(n−1) (d × n, n ≤ d), the nonzero
    eigenvalues of √Σ1 Σ2 √Σ1 are those of the n × n matrix Aᵀ Σ1 A: no d × d square root is needed, which makes
    a small-N FD against cached reference statistics cheap (in-training eval)."""
    if low_rank is not None:
        middle = low_rank.T @ s1.sigma @ low_rank
    else:
        root1 = _psd_sqrt(s1.sigma)
        middle = root1 @ s2.sigma @ root1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())


def frechet_distance(a, b) -> float:
    """FD between two feature sets (arrays [N, D]) or their `GaussianStats`."""
    s1 = a if isinstance(a, GaussianStats) else GaussianStats.of(a, "real features")
    s2 = b if isinstance(b, GaussianStats) else GaussianStats.of(b, "fake features")
    if s1.mu.shape != s2.mu.shape:
        raise ValueError(f"real features have dimension {s1.mu.shape[0]} but fake features {s2.mu.shape[0]}; "
                         f"extract both with the same feature extractor")
    low_rank = None
    if not isinstance(b, GaussianStats) and s2.n <= s2.mu.shape[0]:  # Tr sqrt(Σ1Σ2) is symmetric in 1 and 2
        low_rank = (np.asarray(b, np.float64) - s2.mu).T / np.sqrt(s2.n - 1)
    elif not isinstance(a, GaussianStats) and s1.n <= s1.mu.shape[0]:
        s1, s2 = s2, s1
        low_rank = (np.asarray(a, np.float64) - s2.mu).T / np.sqrt(s2.n - 1)
    diff = s1.mu - s2.mu
    fd = diff @ diff + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * _trace_sqrt_product(s1, s2, low_rank)
    return max(float(fd), 0.0)  # rounding can leave -1e-12 for identical sets


# ------------------------------------------------------------------------------------------------------------ KID


def kid(a, b, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance (on any features): mean and std of unbiased MMD² over random subsets."""
    x, y = as_features(a, "real features"), as_features(b, "fake features")
    _same_dim(x, y)
    m = min(x.shape[0], y.shape[0], subset_size)
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((xs, xs), (ys, ys), (xs, ys)))
        # unbiased: the diagonals k(x_i, x_i) are left out of the within-set means
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[s] = within - 2 * kxy.mean()
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "subsets": subsets, "subset_size": m,
            "n_real": x.shape[0], "n_fake": y.shape[0]}


# ----------------------------------------------------------------------------------------------------------- PRDC


def _row_blocks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _distances(p: np.ndarray, q: np.ndarray, q_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(p), len(q)] via |p|² + |q|² − 2p·q (clipped at 0 against rounding)."""
    d2 = (p * p).sum(1)[:, None] + q_sq[None, :] - 2 * p @ q.T
    return np.sqrt(np.clip(d2, 0, None))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest neighbour in x, the point itself excluded (clovaai `prdc`)."""
    sq = (x * x).sum(1)
    radii = np.empty(x.shape[0])
    for sl in _row_blocks(x.shape[0], x.shape[0]):
        d = _distances(x[sl], x, sq)
        # the k+1-th smallest value counts the point itself (distance 0) as the first
        radii[sl] = np.partition(d, k, axis=1)[:, k]
    return radii


def _prdc_once(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    fake_sq = (fake * fake).sum(1)
    fake_inside = np.zeros(fake.shape[0], bool)  # ∃ i: D_ij < r_i        (precision)
    fake_hits = np.zeros(fake.shape[0])  # Σ_i [D_ij < r_i]                (density)
    real_inside = np.zeros(real.shape[0], bool)  # ∃ j: D_ij < r'_j       (recall)
    real_covered = np.zeros(real.shape[0], bool)  # min_j D_ij < r_i      (coverage)
    for sl in _row_blocks(real.shape[0], fake.shape[0]):
        d = _distances(real[sl], fake, fake_sq)  # [rows of real, all fake]
        in_real_ball = d < r_real[sl, None]
        fake_inside |= in_real_ball.any(0)
        fake_hits += in_real_ball.sum(0)
        real_inside[sl] = (d < r_fake[None, :]).any(1)
        real_covered[sl] = d.min(1) < r_real[sl]
    return {"precision": float(fake_inside.mean()), "recall": float(real_inside.mean()),
            "density": float(fake_hits.mean() / k), "coverage": float(real_covered.mean())}


def prdc(real, fake, k: int = 3, *, splits: int = 5) -> dict:
    """Precision, recall, density and coverage of `fake` w.r.t. `real` (k nearest neighbours).

    Both sets are cut into `splits` equal contiguous chunks and the metrics averaged. The defaults, k = 3 over 5
    splits, are the ImageNet-T2I authors' (DiffEvals `calculate_prdc(k=3, prdc_splits=5)`, behind ImageNet-T2I
    Tables 1, 3, 7, 8); clovaai's README example is k = 5 on the whole set (`splits=1`).
    """
    x, y = as_features(real, "real features"), as_features(fake, "fake features")
    _same_dim(x, y)
    if splits < 1:
        raise ValueError(f"splits={splits} must be >= 1")
    n, m = x.shape[0] // splits, y.shape[0] // splits
    if k < 1 or min(n, m) <= k:
        raise ValueError(f"PRDC with k={k} needs more than k samples per split in each set; got {n} real and {m} "
                         f"fake per split ({splits} split(s)); use more samples, fewer splits or a smaller k")
    runs = [_prdc_once(x[i * n:(i + 1) * n], y[i * m:(i + 1) * m], k) for i in range(splits)]
    out = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    return out | {"k": k, "splits": splits, "n_real": n * splits, "n_fake": m * splits}
