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
"""

from __future__ import annotations

import math

import numpy as np

from ..config import ConfigError


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
    from PIL import Image

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
