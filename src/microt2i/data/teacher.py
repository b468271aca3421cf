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


def _world_images(data: DataConfig, n: int) -> np.ndarray:
    from ..world import make_dataset

    images, _, _ = make_dataset(n, seed=data.seed, resolution=data.resolution, captions=data.captions,
                                max_objects=data.max_objects)
    return images


def _sharded_images(data: DataConfig, store, log):
    """Yield uint8 images of every sample of a sharded store, in store order, shard by shard."""
    from .ingest import item_loader
    from .precompute import list_items, world_key

    items = list_items(data)
    by_key = {world_key(data.seed, i) if isinstance(i, int) else i.key: i for i in items}
    for shard in store.manifest["shards"]:
        keys = [r["key"] for r in shard_info(store.dir, shard["index"])["records"]]
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise FileNotFoundError(f"REPA teacher features need the store's images: {len(missing)} keys of "
                                    f"{store.dir} (e.g. {missing[0]!r}) are not under data.root={data.root!r}; point "
                                    f"data.root at the images the store was built from")
        if data.source == "world":
            yield _world_images(data, max(int(k.rsplit("/", 1)[1]) for k in keys) + 1)[
                [int(k.rsplit("/", 1)[1]) for k in keys]]
            continue
        load, args = item_loader(data, [by_key[k] for k in keys])
        images = []
        for key, (img, reason) in zip(keys, map(load, args)):
            if reason is not None:
                raise ValueError(f"REPA teacher features: image {key!r} of {store.dir} can no longer be read "
                                 f"({reason}); rebuild the store with `microt2i precompute`")
            images.append(img)
        log(f"[repa] teacher features: shard {shard['index']} ({len(images)} images)")
        yield np.stack(images)


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
