"""Statistics over an experiment's arms: bootstrap intervals over seeds and prompts, FD resampling, the
summary with each claim's verdict."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
import numpy as np
from .eval.distribution import GaussianStats, as_features
from .experiment_defs import CI, Claim


# ------------------------------------------------------------------------------------------------ bootstrap


def _interval(samples: np.ndarray, point: float | None = None) -> tuple[float, float]:
    """Percentile interval; with `point`, shifted by the bootstrap bias (mean of the samples − point). FD needs it:
    a resampled set holds duplicates, fewer distinct samples, and FD is biased upwards at small N."""
    lo, hi = np.quantile(samples, [(1 - CI) / 2, (1 + CI) / 2])
    shift = 0.0 if point is None else float(np.mean(samples)) - point
    return float(lo) - shift, float(hi) - shift


def resample(n_seeds: int, tags: list[str], n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(seed indices [B, S], prompt indices [B, P]): seeds with replacement; prompts with replacement within their
    tag, so position j always holds a prompt of tag tags[j]."""
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    tags_a = np.asarray(tags)
    prompts = np.empty((n_boot, len(tags)), dtype=np.int64)
    for t in dict.fromkeys(tags):
        pos = np.flatnonzero(tags_a == t)
        prompts[:, pos] = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    return seeds, prompts


def geneval_score(correct: np.ndarray, tags: list[str], seed_idx: np.ndarray | None = None,
                  prompt_idx: np.ndarray | None = None, tag: str | None = None) -> np.ndarray:
    """GenEval (mean over tags of the tag's image accuracy; or one `tag`'s accuracy) of correct [S, P, K], for each
    row of the resample indices (or the data as is when none are given: a 1-element array)."""
    c = np.asarray(correct, dtype=np.float64)
    if seed_idx is None:
        seed_idx, prompt_idx = np.arange(c.shape[0])[None], np.arange(c.shape[1])[None]
    g = c[seed_idx[:, :, None], prompt_idx[:, None, :]]  # [B, S, P, K]
    tags_a = np.asarray(tags)
    keep = [tag] if tag else list(dict.fromkeys(tags))
    return np.mean([g[:, :, tags_a == t].mean(axis=(1, 2, 3)) for t in keep], axis=0)


def fd_resampled(real: np.ndarray, fakes: np.ndarray, seed_idx: np.ndarray, sample_idx: np.ndarray) -> np.ndarray:
    """FD (mean over the resampled seeds) of fakes [S, N, D] resampled by rows of sample_idx [B, N] (generated
    sample j answers reference caption j: one index set for every seed) against fixed real statistics.

    Each FD comes from N × N Gram matrices (eval/distribution.py's low-rank identity): with Xc the centred resampled
    rows, Tr Σf = Tr(Xc Xcᵀ)/(N−1) and Tr(ΣrΣf)^½ = Σ √eig(Xc Σr Xcᵀ/(N−1)); Xc = C·F[idx] with C = I − 11ᵀ/N, so
    F Fᵀ and F Σr Fᵀ are computed once per seed."""
    r = GaussianStats.of(real, "real features")
    n = sample_idx.shape[1]
    centre = np.eye(n) - 1.0 / n
    per_seed = []
    for f in fakes:
        f = as_features(f, "fake features")
        per_seed.append((f, f @ f.T, f @ r.sigma @ f.T))
    out = np.empty(len(seed_idx))
    for b, (si, ni) in enumerate(zip(seed_idx, sample_idx)):
        vals = {}
        for s in set(si.tolist()):
            f, gram, gram_r = per_seed[s]
            mu = f[ni].mean(0)
            tr_f = np.trace(centre @ gram[np.ix_(ni, ni)] @ centre) / (n - 1)
            mid = centre @ gram_r[np.ix_(ni, ni)] @ centre / (n - 1)
            root = np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum()
            diff = r.mu - mu
            vals[s] = max(float(diff @ diff + np.trace(r.sigma) + tr_f - 2 * root), 0.0)
        out[b] = np.mean([vals[s] for s in si])
    return out


@dataclass
class ArmData:
    """Every seed's result of one arm, stacked for the bootstrap."""

    name: str
    seeds: list[int]
    results: list[dict]
    correct: np.ndarray  # [S, P, K]
    tags: list[str]
    metrics: dict[str, np.ndarray]  # per-seed scalar metrics
    real: np.ndarray | None = None
    fakes: np.ndarray | None = None  # [S, N, D]
    correct_ext: np.ndarray | None = None  # [S, P, K] on extended prompts (GenEval★), when every seed has it

    @classmethod
    def of(cls, name: str, results: list[dict], folders: list[Path] | None = None) -> ArmData:
        results = sorted(results, key=lambda r: r["seed"])
        tags = results[0]["geneval"]["tags"]
        metrics = {k: np.array([r["metrics"][k] for r in results], np.float64) for k in results[0]["metrics"]}
        real = fakes = None
        if folders and all((f / "features.npz").is_file() for f in folders):
            feats = [np.load(f / "features.npz") for f in sorted(folders, key=lambda f: _seed_of(f))]
            real = feats[0]["real"].astype(np.float64)
            fakes = np.stack([f["fake"].astype(np.float64) for f in feats])
        ext = (np.array([r["geneval_extended"]["correct"] for r in results], dtype=bool)
               if all("geneval_extended" in r for r in results) else None)
        return cls(name, [r["seed"] for r in results], results,
                   np.array([r["geneval"]["correct"] for r in results], dtype=bool), tags, metrics, real, fakes, ext)


def _seed_of(folder: Path) -> int:
    return int(folder.name.rsplit("-s", 1)[1].split("-", 1)[0])


def metric_samples(arm: ArmData, metric: str, seed_idx: np.ndarray, prompt_idx: np.ndarray,
                   sample_idx: np.ndarray) -> tuple[float, np.ndarray]:
    """(point estimate, bootstrap samples) of `metric` ("geneval", "geneval/<tag>", FD key, KID, PRDC keys)."""
    if metric.split("/")[0] in ("geneval", "geneval★"):
        tag = metric.split("/", 1)[1] if "/" in metric else None
        c = arm.correct_ext if metric.startswith("geneval★") else arm.correct
        return (float(geneval_score(c, arm.tags, tag=tag)[0]), geneval_score(c, arm.tags, seed_idx, prompt_idx, tag=tag))
    if metric.startswith("FD-") and arm.fakes is not None:
        return float(arm.metrics[metric].mean()), fd_resampled(arm.real, arm.fakes, seed_idx, sample_idx)
    values = arm.metrics[metric]
    return float(values.mean()), values[seed_idx].mean(axis=1)


def lower_is_better(metric: str) -> bool:
    return metric.startswith("FD") or metric == "KID"


@dataclass
class Summary:
    rows: list[dict]  # one per arm: metric → (point, lo, hi)
    claims: list[dict]
    tags: list[str]


def summarize(arms: list[ArmData], claims: tuple[Claim, ...] = (), *, n_boot: int = 2000, n_boot_fd: int = 200,
              seed: int = 0) -> Summary:
    """Bootstrap intervals for every arm and metric, and the paired difference of each claim (arms share the
    resample indices: they were trained with the same seeds and evaluated on the same prompts and noise)."""
    if not arms:
        raise ValueError("no finished arms to summarise; run the experiment first")
    common = sorted(set.intersection(*[set(a.seeds) for a in arms]))  # pairing needs the same seeds everywhere
    if not common:
        raise ValueError(f"the arms share no seed ({', '.join(f'{a.name}: {a.seeds}' for a in arms)}); "
                         f"run the missing seeds first")
    n_seeds = len(common)
    pos = {a.name: [a.seeds.index(s) for s in common] for a in arms}
    arms = [replace(a, seeds=common, correct=a.correct[pos[a.name]],
                    correct_ext=None if a.correct_ext is None else a.correct_ext[pos[a.name]],
                    fakes=None if a.fakes is None else a.fakes[pos[a.name]],
                    metrics={k: v[pos[a.name]] for k, v in a.metrics.items()}) for a in arms]
    tags = list(dict.fromkeys(arms[0].tags))
    rng = np.random.default_rng(seed)
    seed_idx, prompt_idx = resample(n_seeds, arms[0].tags, n_boot, rng)
    n_fake = 0 if arms[0].fakes is None else arms[0].fakes.shape[1]
    sample_idx = rng.integers(0, max(n_fake, 1), size=(n_boot, max(n_fake, 1)))
    extended = all(a.correct_ext is not None for a in arms)
    metrics = ["geneval", *[f"geneval/{t}" for t in tags], *(["geneval★"] if extended else []), *arms[0].metrics]
    cache: dict[tuple[str, str], tuple[float, np.ndarray]] = {}

    def get(arm: ArmData, metric: str):
        if (arm.name, metric) not in cache:
            fd = metric.startswith("FD-")
            sl = slice(0, n_boot_fd if fd else n_boot)
            cache[arm.name, metric] = metric_samples(arm, metric, seed_idx[sl], prompt_idx[sl], sample_idx[sl])
        return cache[arm.name, metric]

    rows = []
    for a in arms:
        row = {"arm": a.name, "seeds": n_seeds, "nimg": a.results[0]["nimg"]}
        for m in metrics:
            point, boot = get(a, m)
            row[m] = (point, *_interval(boot, point if m.startswith("FD-") else None))
        rows.append(row)
    by_name = {a.name: a for a in arms}
    out_claims = []
    for c in claims:
        if c.better not in by_name or c.worse not in by_name or (c.metric.startswith("geneval★") and not extended):
            out_claims.append({"claim": c, "verdict": "not run", "delta": None})
            continue
        (pb, bb), (pw, bw) = get(by_name[c.better], c.metric), get(by_name[c.worse], c.metric)
        sign = -1.0 if lower_is_better(c.metric) else 1.0  # Δ > 0 means the paper's direction
        delta = sign * (pb - pw)
        lo, hi = _interval(sign * (bb - bw), delta if c.metric.startswith("FD-") else None)
        tie = abs(delta) < 1e-9  # equal estimates (e.g. the same counts of correct images)
        verdict = ("held" if lo > 0 else "reversed" if hi < 0 else "no difference" if tie and lo == hi == 0
                   else "equal estimates, not significant" if tie
                   else "same direction, not significant" if delta > 0 else "opposite direction, not significant")
        out_claims.append({"claim": c, "verdict": verdict, "delta": (delta, lo, hi)})
    return Summary(rows, out_claims, tags)
