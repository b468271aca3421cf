"""REPA teacher features, precomputed once next to the training data (Yu et al. 2024 §3.3; the teacher itself is
`encoders/teacher.py`), so a training step only reads them like latents.

`teacher_features(data_cfg, store, grid, teacher) -> float16 [N, grid², dim]`, row i = store sample i:
- a world store (cached renders): the same renders re-made from (seed, i), in the cache folder beside the store;
- a sharded store (`microt2i precompute`: ImageNet, folders, your own data): each shard's images re-read from
  `data.root` by the keys the shard records, with the store's resize + centre crop; the file goes into the store
  folder, `repa-<teacher>-g<grid>.safetensors`.
Files are written atomically and keyed on the teacher's weights, the grid and the store, so a changed setting never
reads stale features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..config import DataConfig
from ..io import atomic_write_bytes
from .store import cache_key, cache_root, shard_info
from .imagenet import IngestReport
from .precompute import caption_table, list_items, load_shard_images
from ..world import make_dataset


def _world_images(data: DataConfig, n: int) -> np.ndarray:
    images, _, _ = make_dataset(n, seed=data.seed, resolution=data.resolution, captions=data.captions,
                                max_objects=data.max_objects)
    return images


def _sharded_images(data: DataConfig, store, log):
    """Yield uint8 images of every sample of a sharded store, in store order, shard by shard: each shard's items
    loaded again the way precompute loaded them (`precompute.load_shard_images`), checked against its records."""
    items, table, size = list_items(data), caption_table(data), data.shard_size
    for shard in store.manifest["shards"]:
        s = shard["index"]
        keys = [r["key"] for r in shard_info(store.dir, s)["records"]]
        images, records = load_shard_images(data, items[s * size:(s + 1) * size], table, None, IngestReport())
        if [r["key"] for r in records] != keys:
            raise FileNotFoundError(f"REPA teacher features need the store's images: shard {s} of {store.dir} no "
                                    f"longer matches data.root={data.root!r} (moved, changed or unreadable images); "
                                    f"point data.root at the images the store was built from, or rebuild the store")
        log(f"[repa] teacher features: shard {s} ({len(images)} images)")
        yield images


def teacher_features(data: DataConfig, store, grid: int, teacher, *, log=print) -> torch.Tensor:
    """float16 [len(store), grid², teacher.dim]: cached, else computed with `teacher(images, grid)` and cached."""
    sharded = hasattr(store, "manifest")
    if sharded:
        path = Path(store.dir) / f"repa-{teacher.key}-g{grid}.safetensors"
    else:
        path = cache_root(data) / "stores" / f"world-{cache_key(data)}-repa-{teacher.key}-g{grid}.safetensors"
    if path.exists():
        try:
            feats = load_file(str(path))["features"]
            if feats.shape == (len(store), grid * grid, teacher.dim):
                return feats
            log(f"[repa] {path} has shape {list(feats.shape)}, not [{len(store)}, {grid * grid}, {teacher.dim}]; "
                f"recomputing it")
        except Exception as e:  # only a cache: recompute it
            log(f"[repa] {path} is unreadable ({type(e).__name__}: {e}); recomputing it")
    log(f"[repa] computing {teacher.name} features of {len(store)} images on a {grid}×{grid} grid → {path}")
    parts = _sharded_images(data, store, log) if sharded else [_world_images(data, len(store))]
    feats = torch.cat([teacher(images, grid) for images in parts])
    if feats.shape[0] != len(store):
        raise ValueError(f"REPA teacher features: {feats.shape[0]} images for a store of {len(store)} samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"features": feats.contiguous()}, metadata={"teacher": teacher.name}))
    return feats
