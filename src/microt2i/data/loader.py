"""Batches from a sharded store: worker processes read memory-mapped rows, the training process makes tensors.

The order is the sampler's (data/sampler.py): micro-batch k of this rank holds the sample indices of global
positions start + k·micro … on this rank's slice, so resuming at `nimg` is exact and the batches do not depend on
the number of workers (torch's DataLoader returns batches in sampler order). Workers only do I/O (`store.read`);
latent re-sampling and on-the-fly text encoding run in the caller (`store.to_batch`), on its device.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .sampler import ResumableSampler
from safetensors.torch import save
from .store import EMPTY, PLAN, ShardedStore, finalize_store, write_shard
from ..io import atomic_write_bytes, atomic_write_text


class _Rows(Dataset):
    """Map-style view whose item is a whole micro-batch: `rows[idx_array]` → `store.read(idx_array)`."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, idx):
        if torch.utils.data.get_worker_info() is None:
            return self.store.read(idx)
        # in a worker: gather straight into shared-memory tensors, so the queue to the main process passes handles
        tensors = []

        def alloc(shape, dtype):
            tensors.append(torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).share_memory_())
            return tensors[-1].numpy()

        rows = self.store.read(idx, alloc=alloc)
        return dict(zip(rows, tensors))


class PositionBatches(Sampler):
    """Index arrays of this rank's micro-batches for positions [start, end) in steps of `micro × world_size`."""

    def __init__(self, sampler: ResumableSampler, start: int, end: int, micro: int, rank: int = 0, world_size: int = 1):
        if micro <= 0 or end < start:
            raise ValueError(f"micro batch {micro} must be > 0 and end {end} >= start {start}")
        self.sampler, self.start, self.end, self.micro = sampler, start, end, micro
        self.rank, self.world_size = rank, world_size

    def positions(self) -> range:
        return range(self.start, self.end, self.micro * self.world_size)

    def __len__(self) -> int:
        return len(self.positions())

    def __iter__(self) -> Iterator[np.ndarray]:
        step = self.micro * self.world_size
        for pos in self.positions():
            yield self.sampler.rank_indices(pos, step, self.rank, self.world_size)


def make_loader(store, sampler: ResumableSampler, *, start: int, end: int, micro: int, rank: int = 0,
                world_size: int = 1, workers: int = 0, pin_memory: bool | None = None,
                prefetch: int = 4) -> DataLoader:
    """A DataLoader of raw rows (dicts of tensors) for this rank's micro-batches from position `start` to `end`.

    `pin_memory` defaults to on when CUDA is available (faster, asynchronous host → GPU copies)."""
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return DataLoader(_Rows(store), sampler=PositionBatches(sampler, start, end, micro, rank, world_size),
                      batch_size=None, num_workers=workers, pin_memory=pin,
                      prefetch_factor=prefetch if workers else None, persistent_workers=False)


def iterate(store, sampler: ResumableSampler, *, start: int, end: int, micro: int, rank: int = 0,
            world_size: int = 1, workers: int = 0, device="cpu",
            generator_for: Callable[[int], torch.Generator] | None = None) -> Iterator[tuple[int, dict]]:
    """(position, training batch) pairs; `generator_for(position)` seeds the per-step latent re-sampling."""
    loader = make_loader(store, sampler, start=start, end=end, micro=micro, rank=rank, world_size=world_size,
                         workers=workers)
    for pos, rows in zip(loader.sampler.positions(), loader):
        gen = generator_for(pos) if generator_for is not None else None
        yield pos, store.to_batch(rows, device, gen)


def _bench_store(folder: Path, num_samples: int, shard_size: int, latent_shape, text_shape) -> None:
    """A store of random fp16 latents and text states in `folder`, in the layout precompute writes."""
    num_shards = -(-num_samples // shard_size)
    fields = {"text_store": "embeddings", "latent_mode": "sample", "bench": True}
    atomic_write_text(folder / PLAN, json.dumps({"key": "bench", "fields": fields, "content": {},
                                                 "shard_size": shard_size, "num_shards": num_shards}))
    L, D = text_shape
    atomic_write_bytes(folder / EMPTY, save({"tokens": torch.zeros(1, L, D, dtype=torch.float16),
                                             "mask": torch.ones(1, L, dtype=torch.uint8)}))
    gen = torch.Generator().manual_seed(0)
    for s in range(num_shards):
        n = min(shard_size, num_samples - s * shard_size)
        tensors = {"latents": torch.randn(n, *latent_shape, generator=gen).half(),
                   "text_tokens": torch.randn(n, L, D, generator=gen).half(),
                   "text_mask": torch.ones(n, L, dtype=torch.uint8), "labels": torch.zeros(n, dtype=torch.int64)}
        records = [{"key": str(s * shard_size + i), "caption": "", "label": 0} for i in range(n)]
        write_shard(folder, s, tensors, records, {"text_dim": D})
    finalize_store(folder)


def loader_throughput(*, num_samples: int = 4096, workers: int = 0, micro: int = 256, shard_size: int = 1024,
                      epochs: int = 3, latent_shape=(4, 32, 32), text_shape=(77, 1024),
                      tmp_dir: str | None = None) -> dict:
    """Samples/s of the loader over a temporary store of 256²-SD-VAE-shaped fp16 latents (4×32×32) and 77×1024 fp16
    text states (MicroDiT's caption features): shuffled micro-batches read by memory map through `workers`
    processes. The first epoch warms the page cache; the median of the following epochs is reported."""
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="microt2i-loader-bench-") as d:
        t0 = time.perf_counter()
        _bench_store(Path(d), num_samples, shard_size, latent_shape, text_shape)
        build_s = time.perf_counter() - t0
        store = ShardedStore(d)
        sampler = ResumableSampler(len(store), seed=0)
        rates = []
        for epoch in range(epochs):
            start = epoch * num_samples
            loader = make_loader(store, sampler, start=start, end=start + num_samples, micro=micro, workers=workers)
            t0 = time.perf_counter()
            n = sum(rows["latents"].shape[0] for rows in loader)
            rates.append(n / (time.perf_counter() - t0))
        bytes_per_sample = 2 * (int(np.prod(latent_shape)) + int(np.prod(text_shape))) + text_shape[0]
    warm = rates[1:] or rates
    return {"samples_per_s": float(np.median(warm)), "first_epoch_samples_per_s": rates[0], "workers": workers,
            "micro_batch": micro, "num_samples": num_samples, "shard_size": shard_size,
            "latent_shape": list(latent_shape), "text_shape": list(text_shape),
            "mb_per_s": float(np.median(warm)) * bytes_per_sample / 2**20, "build_s": build_s}
