"""Aspect-ratio buckets (SDXL §2.3 "multi-aspect training"; NovelAI's bucketing): a fixed set of resolutions at a
pixel budget, each image assigned to the bucket nearest its aspect ratio, resized to cover it and centre-cropped,
and a resumable batch order whose every batch comes from one bucket.

- `bucket_sizes(base, multiple, pixels=None, max_ratio=4)`: every (h, w), both multiples of `multiple` (the VAE
  factor × the patch size, so the latent grid is whole patches), with w from `multiple` upwards and h the largest
  multiple with h·w ≤ pixels (default base²), aspect ratio within [1/max_ratio, max_ratio]; the SDXL list is this
  with base 1024, multiple 64. The square bucket (base, base) is always one of them.
- `assign_bucket(h, w, buckets)`: argmin_b |ln(w/h) − ln(w_b/h_b)| (the first on a tie).
- `resize_to_bucket(img, h, w)`: scale so the image covers h × w (PIL bicubic), then the central h × w.
- `BucketBatchSampler`: batch k of epoch e is a pure function of (seed, e, k): per epoch each bucket's items are
  permuted and cut into full batches (a bucket's last partial batch waits for the next epoch's permutation), and
  the batches are shuffled together. Position = batches served, so resume needs only that integer (`state_dict`).
- `run_buckets(cfg)`: the bucket list of a run config with `data.buckets=true` (None without): base
  `data.resolution`, multiple = VAE factor (`data.resolution / model.input_size`) × `model.patch_size`, budget
  `data.bucket_pixels` (0 = resolution²); refuses, in one line each, the models and augmentations that assume a
  square grid. Precompute writes the store with it; the trainer checks the store against it (store key).
- `BucketPositions`: the trainer's sampler for a bucketed store. Global image position p lies in batch
  k = p div batch_size of a `BucketBatchSampler`, so the trainer's micro-batches and ranks slice one bucket's
  batch, and resume at nimg (a multiple of the batch size) is exact; its state goes into the training checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..config import ConfigError
from .sampler import rank_indices


def bucket_sizes(base: int, multiple: int, pixels: int | None = None, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """[(h, w), ...] sorted by aspect ratio w/h (see module doc). One clear error per bad input."""
    if multiple <= 0 or base <= 0 or base % multiple:
        raise ConfigError(f"bucket base resolution {base} must be a positive multiple of {multiple} (VAE factor × "
                          f"patch size)")
    pixels = base * base if pixels is None else pixels
    if pixels <= 0 or pixels % (multiple * multiple):
        raise ConfigError(f"data.bucket_pixels={pixels} must be a positive multiple of {multiple}² = "
                          f"{multiple * multiple} (e.g. {base}² = {base * base})")
    if max_ratio < 1:
        raise ConfigError(f"bucket max aspect ratio {max_ratio} must be >= 1")
    out = set()
    w = multiple
    while w * multiple <= pixels:
        h = (pixels // w) // multiple * multiple
        if h >= multiple and 1 / max_ratio <= w / h <= max_ratio:
            out.add((h, w))
        w += multiple
    if pixels >= base * base:
        out.add((base, base))
    return sorted(out, key=lambda hw: (hw[1] / hw[0], hw[1]))


def assign_bucket(h: int, w: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest (in log) to the image's w/h; the first on a tie."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size {w}x{h} must be positive")
    target = math.log(w / h)
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][1] / buckets[i][0]) - target), i))


def resize_to_bucket(img, h: int, w: int):
    """PIL image → PIL image of exactly w × h: scaled (bicubic) to cover it, then the central crop."""
    img = img.convert("RGB")
    W, H = img.size
    s = max(w / W, h / H)
    nw, nh = max(w, math.ceil(W * s - 1e-9)), max(h, math.ceil(H * s - 1e-9))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.crop((left, top, left + w, top + h))


class BucketBatchSampler:
    """Single-bucket batches in a resumable order (see module doc). `bucket_of[i]` = item i's bucket."""

    def __init__(self, bucket_of, batch_size: int, *, seed: int = 0):
        self.bucket_of = np.asarray(bucket_of, dtype=np.int64)
        if batch_size <= 0:
            raise ValueError(f"batch size {batch_size} must be positive")
        counts = np.bincount(self.bucket_of) if len(self.bucket_of) else np.zeros(0, dtype=np.int64)
        if not (counts >= batch_size).any():
            raise ValueError(f"no bucket holds a full batch of {batch_size} images (largest: "
                             f"{int(counts.max()) if len(counts) else 0}); lower the batch size or add images")
        self.batch_size, self.seed, self.position = batch_size, seed, 0
        self._epochs: dict[int, list[np.ndarray]] = {}

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The batches of `epoch` (item indices, each from one bucket), a pure function of (seed, epoch)."""
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.clear()
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for b in np.unique(self.bucket_of):
                items = rng.permutation(np.flatnonzero(self.bucket_of == b))
                n = len(items) // self.batch_size * self.batch_size
                batches += list(items[:n].reshape(-1, self.batch_size))
            self._epochs[epoch] = [batches[i] for i in rng.permutation(len(batches))]
        return self._epochs[epoch]

    def batch(self, k: int) -> np.ndarray:
        """The k-th batch the run will ever see."""
        per = len(self.epoch_batches(0))
        return self.epoch_batches(k // per)[k % per]

    def __next__(self) -> np.ndarray:
        out = self.batch(self.position)
        self.position += 1
        return out

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "n": int(len(self.bucket_of))}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for k in ("seed", "batch_size", "n"):
            if state[k] != mine[k]:
                raise ValueError(f"bucket sampler state has {k}={state[k]}, this run {mine[k]}: not the same data order")
        self.position = int(state["position"])


# square-grid assumptions that bucketing cannot serve yet, each with its reason (one line to the user)
_SQUARE_ONLY = {
    "microdit": "MicroDiT's patch masking (mask_block) and its crop code assume a square patch grid",
    "cad-i": "CAD-I's learned data-position table is one square grid",
}


def run_buckets(cfg) -> list[tuple[int, int]] | None:
    """The pixel (h, w) buckets of run config `cfg` (see module doc), or None when `data.buckets` is off."""
    d, m = cfg.data, cfg.model
    if not d.buckets:
        return None
    if m.family in _SQUARE_ONLY:
        raise ConfigError(f"data.buckets=true trains DiT-I only: {_SQUARE_ONLY[m.family]} (model.family="
                          f"{m.family!r}); use a dit-i preset or data.buckets=false")
    for on, what in ((cfg.augment.crop.enabled, "augment.crop.enabled"),
                     (cfg.augment.cutmix.enabled, "augment.cutmix.enabled"),
                     (getattr(m, "route_ratio", 0.0), "model.route_ratio"),
                     (cfg.objective.repa_weight, "objective.repa_weight")):
        if on:
            raise ConfigError(f"data.buckets=true does not take {what} (it assumes the square {m.input_size}² latent "
                              f"grid): switch one of them off")
    if d.resolution % m.input_size:
        raise ConfigError(f"data.resolution={d.resolution} must be a multiple of model.input_size={m.input_size} "
                          f"(the VAE factor) for data.buckets=true")
    multiple = d.resolution // m.input_size * m.patch_size
    return bucket_sizes(d.resolution, multiple, d.bucket_pixels or None)


class BucketPositions:
    """`ResumableSampler`'s interface (`indices(start, count)`, `rank_indices`) over single-bucket batches:
    positions [k·B, (k+1)·B) are batch k of `BucketBatchSampler(bucket_of[subset], B, seed)`. A request must lie in
    one batch (the trainer's micro-batches do)."""

    def __init__(self, bucket_of, batch_size: int, *, seed: int = 0, subset=None):
        bucket_of = np.asarray(bucket_of, dtype=np.int64)
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        if self.subset is not None:
            bucket_of = bucket_of[self.subset]
        try:
            self.batches = BucketBatchSampler(bucket_of, batch_size, seed=seed)
        except ValueError as e:
            raise ConfigError(f"train.batch_size={batch_size} with data.buckets=true: {e}") from None
        self.n, self.batch_size = len(bucket_of), batch_size

    def indices(self, start: int, count: int) -> np.ndarray:
        k, j = divmod(start, self.batch_size)
        if j + count > self.batch_size:
            raise ValueError(f"positions [{start}, {start + count}) cross a batch of {self.batch_size}: a bucketed "
                             f"run reads whole batches from one bucket")
        out = self.batches.batch(k)[j:j + count]
        return out if self.subset is None else self.subset[out]

    def rank_indices(self, start: int, global_batch: int, rank: int, world_size: int) -> np.ndarray:
        return rank_indices(self, start, global_batch, rank, world_size)

    def seek(self, nimg: int) -> None:
        """Position the batch sampler at image `nimg` (a whole number of batches)."""
        self.batches.position = nimg // self.batch_size

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def check_bucket_store(cfg, store) -> None:
    """A bucketed store's latent buckets must be the model's: each pixel bucket / (data.resolution / input_size)."""
    factor = cfg.data.resolution // cfg.model.input_size
    want = [(h // factor, w // factor) for h, w in run_buckets(cfg)]
    got = [tuple(b) for b in store.latent_buckets]
    if got != want or store.latents.shape[1] != cfg.model.in_channels:
        raise ValueError(f"the bucketed store {store.dir} holds latents of {store.latents.shape[1]} channels in the "
                         f"buckets {got[:3]}… but the model takes {cfg.model.in_channels} channels in {want[:3]}… "
                         f"(data.resolution={cfg.data.resolution}, model.input_size={cfg.model.input_size}: the VAE "
                         f"factor); set them to the codec's, or precompute again")
