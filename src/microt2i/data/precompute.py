"""`microt2i precompute`: images + captions → codec latents + text states in a sharded store (data/store.py).

The items (world renders, an ImageNet split, an image folder) are listed in a fixed order and cut into shards of
`data.shard_size` items; shard s is a pure function of its items and the config, so the job is
- resumable: a finished shard (its sidecar JSON exists) is skipped, a half-written one was never renamed into place;
- shardable across machines: `num_shards`/`shard_index` take shards s ≡ shard_index (mod num_shards);
- multi-process: `workers` processes decode and resize images while the main process runs the encoders.
The store's `plan.json` holds the cache key; a folder planned with other settings is refused, never mixed.
Unreadable images are skipped and counted per reason (sidecars, then the manifest's "skipped").
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..io import atomic_write_bytes, atomic_write_text
from ..progress import Progress
from .imagenet import IngestReport, list_folder, list_imagenet
from .ingest import (INGEST_SOURCES, finish_caption, hash_key, ingest_content, item_caption, item_loader, list_ingest,
                     world_key)
from .store import (CONFIG_KEY_FIELDS, EMPTY, PLAN, StoreMismatchError, finalize_store, key_hash,
                    shard_info, shard_name, store_key, write_shard)
from ..world.pixels import images_to_tensor
import glob
from safetensors.torch import save
from .captions import pick_caption, read_captions
from ..encoders import TextEncoder, codec_of
from ..world import CLASSES, make_dataset

_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def list_items(data: DataConfig) -> list:
    """The ordered items of the data source: ImageItems, or world indices 0..num_images-1."""
    if data.source == "world":
        return list(range(data.num_images))
    if data.source == "imagenet":
        return list_imagenet(data.root, data.split, data.labels_file)
    if data.source in INGEST_SOURCES:  # your own data: sidecar folders, WebDataset shards, HF datasets
        return list_ingest(data)
    return list_folder(data.root)


def caption_table(data: DataConfig) -> dict[str, list[str]] | None:
    """Key → captions from `data.caption_file`, or None when captions come from the AIO template / world oracle."""
    if not data.caption_file:
        if data.source not in ("world", *INGEST_SOURCES) and data.captions != "aio":
            raise FileNotFoundError(f"data.source={data.source} with data.captions={data.captions!r} needs a caption "
                                    f"file (write one with `microt2i caption`); or set data.captions=aio for the "
                                    f"'An image of <class>' template")
        return None

    return read_captions(data.caption_file)


def _lookup(table: dict[str, list[str]], key: str) -> list[str] | None:
    """Captions of `key`, also tried as its basename and stem (caption files key by relative path or filename)."""
    name = key.rsplit("/", 1)[-1]
    return table.get(key) or table.get(name) or table.get(name.rsplit(".", 1)[0])


def _match_captions(table: dict[str, list[str]], keys: list[str], data: DataConfig, log) -> None:
    """Refuse a caption file that captions none of the images; report rows that name no image (they are ignored)
    and images without a caption (skipped, counted as "no caption")."""
    names = set(keys) | {k.rsplit("/", 1)[-1] for k in keys} | {k.rsplit("/", 1)[-1].rsplit(".", 1)[0] for k in keys}
    captioned = sum(_lookup(table, k) is not None for k in keys)
    if captioned == 0:
        raise FileNotFoundError(f"data.caption_file={data.caption_file} captions none of the {len(keys)} images of "
                                f"{data.root or 'the world'} (e.g. {keys[0]!r} vs {next(iter(table), None)!r}); keys "
                                f"must be paths relative to data.root, filenames or stems")
    orphans = sum(k not in names for k in table)
    if orphans or captioned < len(keys):
        log(f"[precompute] caption file: {orphans} of {len(table)} keys name no image (ignored); "
            f"{len(keys) - captioned} of {len(keys)} images have no caption (skipped)")


def plan_store(data: DataConfig, items: list, augment: dict | None = None, buckets: list | None = None) -> dict:
    """The plan (cache key, item count, shard layout) of `data`; written once, then every job must agree.
    `buckets`: the pixel bucket list of a `data.buckets` run (data/buckets.py `run_buckets`), in the key."""
    keys = [world_key(data.seed, i) if isinstance(i, int) else i.key for i in items]
    content = {}
    if data.caption_file:
        content["captions_sha"] = _file_sha(data.caption_file)
    if data.source in INGEST_SOURCES or data.min_resolution or data.clean_captions:
        content["ingest"] = ingest_content(data, items)
    return make_plan(store_key(data, augment, buckets), keys, content, data.shard_size)


def make_plan(fields: dict, keys: list[str], content: dict, shard_size: int) -> dict:
    """A store plan: the key hashes the config-derived `fields`, the item keys and the other `content`."""
    content = {"num_items": len(keys), "items_sha": hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16],
               **content}
    return {"key": key_hash({**fields, **content}), "fields": fields, "content": content,
            "shard_size": shard_size, "num_shards": math.ceil(len(keys) / shard_size)}


def _file_sha(spec: str) -> str:
    h = hashlib.sha256()
    for f in sorted(glob.glob(spec)) or [spec]:
        p = Path(f)
        h.update(p.read_bytes() if p.is_file() else f.encode())  # a datasets folder / hub id: keyed by its name
    return h.hexdigest()[:16]


def _check_plan(store_dir: Path, plan: dict,
                fix: str = "pass a new data.store_dir, or delete {dir} to rebuild it") -> None:
    path = store_dir / PLAN
    if not path.is_file():
        atomic_write_text(path, json.dumps(plan, indent=1))
        return
    old = json.loads(path.read_text())
    if old["key"] == plan["key"]:
        return
    diff = [f"data.{k}: {old['fields'].get(k)!r} → {plan['fields'].get(k)!r}" for k in CONFIG_KEY_FIELDS
            if old["fields"].get(k) != plan["fields"].get(k)]
    diff += [f"{k}: {old['content'].get(k)!r} → {plan['content'].get(k)!r}" for k in plan["content"]
             if old["content"].get(k) != plan["content"].get(k)]
    if old["shard_size"] != plan["shard_size"]:
        diff.append(f"data.shard_size: {old['shard_size']} → {plan['shard_size']}")
    raise StoreMismatchError(f"{store_dir} holds a store planned with other settings ({'; '.join(diff)}); "
                             + fix.format(dir=store_dir))


class _Encoders:
    """Codec and text encoder, loaded on first use (a job whose shards are all done loads nothing)."""

    def __init__(self, data: DataConfig, device, codec=None, text_encoder=None):
        self.data, self.device, self._codec, self._text = data, device, codec, text_encoder

    @property
    def codec(self):
        if self._codec is None:
            self._codec = codec_of(self.data, device=self.device)
        return self._codec

    @property
    def text(self):
        if self._text is None:
            self._text = TextEncoder(self.data.text_encoder, max_length=self.data.text_len, device=self.device)
        return self._text


def _encode_text(enc: _Encoders, data: DataConfig, captions: list[str]) -> dict[str, torch.Tensor]:
    dtype = _DTYPES[data.store_dtype]
    if data.text_store == "ids":
        tok = enc.text.tokenizer(captions, padding="max_length", truncation=True, max_length=data.text_len,
                                 return_tensors="pt")
        return {"text_ids": tok["input_ids"].to(torch.int32), "text_mask": tok["attention_mask"].to(torch.uint8)}
    emb = enc.text.encode(captions)
    return {"text_tokens": emb.tokens.to(dtype).cpu(), "text_mask": emb.mask.to(torch.uint8).cpu()}


def _write_empty(store_dir: Path, enc: _Encoders, data: DataConfig) -> None:
    if (store_dir / EMPTY).is_file():
        return

    t = _encode_text(enc, data, [""])
    out = {"mask": t["text_mask"]}
    out["ids" if data.text_store == "ids" else "tokens"] = t.get("text_ids", t.get("text_tokens"))
    atomic_write_bytes(store_dir / EMPTY, save({k: v.contiguous() for k, v in out.items()}))


def load_shard_images(data: DataConfig, items: list, table, pool, report: IngestReport, buckets=None):
    """(uint8 images [n, R, R, 3], records) of one shard's items; unreadable / uncaptioned ones go to `report`.
    With `buckets` (data.buckets) the images are a list of uint8 [h, w, 3], each in its aspect bucket."""
    if data.source == "world":
        stop = items[-1] + 1  # item i depends only on (seed, i): render up to the shard's end and keep its part
        images, captions, scenes = make_dataset(stop, seed=data.seed, resolution=data.resolution,
                                                captions=data.captions, max_objects=data.max_objects)
        keep = slice(items[0], stop)
        records = [{"key": world_key(data.seed, i), "caption": c, "label": CLASSES.index(s.main.cls)}
                   for i, c, s in zip(items, captions[keep], scenes[keep])]
        kept = [j for j, r in enumerate(records) if table is None or _set_caption(r, table, data.seed, report)]
        report.total += len(items)
        report.kept += len(kept)
        return images[keep][kept], [records[j] for j in kept]
    load, args = item_loader(data, items, buckets)  # try_load for plain files; else load_item
    loaded = pool.imap(load, args, chunksize=4) if pool is not None else map(load, args)
    images, records = [], []
    for it, (img, reason) in zip(items, loaded):
        report.total += 1
        if reason is not None:
            report.add_skip(it.key, reason)
            continue
        record = {"key": it.key, "caption": item_caption(it, data.seed), "label": it.label}
        if table is not None and not _set_caption(record, table, data.seed, report):
            continue
        if not finish_caption(record, data, report):  # none found; data.clean_captions cleans it
            continue
        report.kept += 1
        images.append(img)
        records.append(record)
    res = data.resolution
    if buckets:
        return images, records
    return (np.stack(images) if images else np.zeros((0, res, res, 3), np.uint8)), records


def _set_caption(record: dict, table: dict[str, list[str]], seed: int, report: IngestReport) -> bool:
    """Give `record` its caption from the caption file; False (and a "no caption" skip) when the file has none.
    Several captions per image: one fixed draw per sample (ImageNet-T2I §2.1 trains on one long caption each)."""
    caps = _lookup(table, record["key"])
    if not caps:
        report.add_skip(record["key"], "no caption")
        return False
    record["caption"] = pick_caption(caps, seed, 0, hash_key(record["key"]))
    return True


def bytes_per_sample(data: DataConfig, latent_shape: tuple[int, ...], text_dim: int) -> dict[str, int]:
    """Bytes of one sample's tensors in a shard, by name, as `_encode_shard` writes them (the safetensors header
    adds well under 1 KB per shard)."""
    item, n = _DTYPES[data.store_dtype].itemsize, math.prod(latent_shape)
    out = {"latents": n * item} | ({"latents_std": n * item} if data.latent_mode == "mean_std" else {})
    ids = data.text_store == "ids"
    out |= {"text_ids": 4 * data.text_len} if ids else {"text_tokens": item * data.text_len * text_dim}
    return out | {"text_mask": data.text_len, "labels": 8}


@torch.no_grad()
def _encode_shard(enc: _Encoders, data: DataConfig, index: int, images: np.ndarray, records: list[dict],
                  batch_size: int, buckets: list | None = None) -> dict[str, torch.Tensor]:
    if buckets:  # aspect buckets: encode each bucket's images together, store them flattened
        mean, std = _encode_buckets(enc, images, buckets, batch_size)
        index_of = [tuple(b) for b in buckets]
        bucket = torch.tensor([index_of.index(img.shape[:2]) for img in images], dtype=torch.int64)
        return _finish_shard(enc, data, index, mean, std, records) | {"bucket": bucket}
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        m, s = enc.codec.encode_moments(images_to_tensor(images[i:i + batch_size]))
        means.append(m.float().cpu())
        stds.append(s.float().cpu())
    if not records:  # an all-skipped shard still needs well-formed tensors
        c, f = enc.codec.channels, enc.codec.factor
        means = stds = [torch.zeros(0, c, data.resolution // f, data.resolution // f)]
    return _finish_shard(enc, data, index, torch.cat(means), torch.cat(stds), records)


def _finish_shard(enc: _Encoders, data: DataConfig, index: int, mean: torch.Tensor, std: torch.Tensor,
                  records: list[dict]) -> dict[str, torch.Tensor]:
    dtype = _DTYPES[data.store_dtype]
    if data.latent_mode == "sample":  # MicroDiT stores one posterior sample; its noise is a function of (seed, shard)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([data.seed, index]).generate_state(1)[0]))
        tensors = {"latents": (mean + std * torch.randn(mean.shape, generator=gen)).to(dtype)}
    else:
        tensors = {"latents": mean.to(dtype), "latents_std": std.to(dtype)}
    tensors |= _encode_text(enc, data, [r["caption"] for r in records])
    tensors["labels"] = torch.tensor([r["label"] for r in records], dtype=torch.int64)
    return tensors


def _latent_buckets(buckets: list, factor: int) -> list[list[int]]:
    """The latent (h, w) of each pixel bucket."""
    return [[h // factor, w // factor] for h, w in buckets]


@torch.no_grad()
def _encode_buckets(enc: _Encoders, images: list[np.ndarray], buckets: list, batch_size: int):
    """(mean, std) [n, C, P] of bucket-shaped images: each latent [C, h, w] flattened to h·w and zero-padded to P =
    the largest bucket's h·w (the layout `ShardedStore` reshapes back)."""
    c, f = enc.codec.channels, enc.codec.factor
    P = max(h * w for h, w in _latent_buckets(buckets, f))
    mean, std = torch.zeros(len(images), c, P), torch.zeros(len(images), c, P)
    shapes = [img.shape[:2] for img in images]
    for shape in sorted(set(shapes)):
        sel = [i for i, s in enumerate(shapes) if s == shape]
        for j in range(0, len(sel), batch_size):
            part = sel[j:j + batch_size]
            m, s = enc.codec.encode_moments(images_to_tensor(np.stack([images[i] for i in part])))
            hw = m.shape[-2] * m.shape[-1]
            mean[part, :, :hw] = m.float().cpu().flatten(2)
            std[part, :, :hw] = s.float().cpu().flatten(2)
    return mean, std


def precompute(data: DataConfig, *, augment: dict | None = None, num_shards: int = 1, shard_index: int = 0,
               workers: int = 0, device: str = "cpu", batch_size: int = 64, codec=None, text_encoder=None,
               log=print, on_shard=None, progress: bool = False, buckets: list | None = None) -> dict:
    """Fill `data.store_dir` with this job's shards (see the module docstring) and return a summary:
    {"done": shards written now, "skipped_shards": already finished, "report": ingest counts, "manifest": bool}.
    With `data.buckets`, `buckets` is the run's pixel bucket list (`data.buckets.run_buckets(run_cfg)`): each image
    goes to the bucket nearest its aspect ratio, and its record holds the bucket's latent shape.

    `on_shard(index)` runs after each written shard (progress hooks; tests inject failures there); `progress` reports
    images per second and the ETA (progress.py)."""
    if not data.store_dir:
        raise FileNotFoundError("precompute needs data.store_dir=<folder for the sharded store>")
    data.require_dataset()
    if data.buckets and not buckets:
        raise ValueError("data.buckets=true: pass the run's bucket list, precompute(data, buckets=run_buckets(run_cfg))")
    buckets = [tuple(b) for b in buckets] if data.buckets else None
    check_shard_args(num_shards, shard_index)
    table = caption_table(data)
    items = list_items(data)
    if table is not None:
        _match_captions(table, [world_key(data.seed, i) if isinstance(i, int) else i.key for i in items], data, log)
    plan = plan_store(data, items, augment, buckets)
    log(f"[precompute] {len(items)} items → {plan['num_shards']} shards of {data.shard_size} in {data.store_dir} "
        f"(key {plan['key']})")
    pool = None

    def load_shard(s: int, report: IngestReport):
        nonlocal pool
        if pool is None and workers > 0 and data.source != "world":
            pool = mp.get_context("spawn").Pool(workers)
        return load_shard_images(data, items[s * data.shard_size:(s + 1) * data.shard_size], table, pool, report,
                                 buckets)

    try:
        return run_store_job(data, Path(data.store_dir).expanduser(), plan, load_shard, num_shards=num_shards,
                             shard_index=shard_index, device=device, batch_size=batch_size, codec=codec,
                             text_encoder=text_encoder, log=log, on_shard=on_shard, progress=progress)
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def check_shard_args(num_shards: int, shard_index: int) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")


def run_store_job(data: DataConfig, store_dir: Path, plan: dict, load_shard, *, num_shards: int = 1,
                  shard_index: int = 0, device: str = "cpu", batch_size: int = 64, codec=None, text_encoder=None,
                  log=print, on_shard=None, tag: str = "precompute", progress: bool = False,
                  fix: str = "pass a new data.store_dir, or delete {dir} to rebuild it") -> dict:
    """The sharded-store engine behind `precompute` and the CutMix composites (augment/cutmix.py): check or write
    `plan`, then for each of this job's unfinished shards s ≡ shard_index (mod num_shards) call
    `load_shard(s, report) -> (uint8 images, records)`, encode them with `data`'s codec and text encoder and write
    the shard atomically; the manifest is written by whichever job finishes the last shard."""
    store_dir.mkdir(parents=True, exist_ok=True)
    _check_plan(store_dir, plan, fix)
    mine = [s for s in range(plan["num_shards"]) if s % num_shards == shard_index]
    todo = [s for s in mine if shard_info(store_dir, s) is None]
    for s in todo:  # temp files of this job's shard writes a kill cut short (other jobs' are theirs to finish)
        for tmp in store_dir.glob(f".{shard_name(s)}.*.tmp"):
            tmp.unlink(missing_ok=True)
    log(f"[{tag}] this job: {len(mine)} of {plan['num_shards']} shards, {len(mine) - len(todo)} already done")
    enc = _Encoders(data, device, codec, text_encoder)
    report = IngestReport()
    buckets = plan["fields"].get("buckets")  # a bucketed store (data.buckets): the pixel (h, w) list
    bar = Progress(len(todo) * data.shard_size, desc=tag, unit="img", enabled=progress,
                   work=f"{len(todo)} shard{'s' if len(todo) != 1 else ''} of ≤ {data.shard_size}, device {device}")
    try:
        if todo:
            _write_empty(store_dir, enc, data)
        for s in todo:
            t0 = time.perf_counter()
            shard_report = IngestReport()
            images, records = load_shard(s, shard_report)
            tensors = _encode_shard(enc, data, s, images, records, batch_size, buckets)
            extra = {"skipped": dict(shard_report.skipped), "skipped_examples": shard_report.examples,
                     "text_dim": enc.text.dim}
            if "bucket" in tensors:  # aspect buckets: each record names its latent shape, the manifest the list
                extra["latent_buckets"] = _latent_buckets(buckets, enc.codec.factor)
                for r, b in zip(records, tensors["bucket"].tolist()):
                    r["bucket"] = extra["latent_buckets"][b]
            write_shard(store_dir, s, tensors, records, extra)
            report.total += shard_report.total
            report.kept += shard_report.kept
            report.skipped.update(shard_report.skipped)
            report.examples += shard_report.examples[:20 - len(report.examples)]
            log(f"[{tag}] shard {s}: {len(records)} samples, {shard_report.total - shard_report.kept} skipped, "
                f"{shard_report.total / max(time.perf_counter() - t0, 1e-9):.2f} items/s")
            bar.update(shard_report.total)
            if on_shard is not None:
                on_shard(s)
    finally:
        bar.close()
    manifest = finalize_store(store_dir)
    if manifest is None:
        log(f"[{tag}] shards of other jobs are still missing; the store is usable once every --shard-index ran")
    else:
        log(f"[{tag}] store complete: {manifest['count']} samples, skipped {manifest['skipped'] or 'none'}")
    return {"done": todo, "skipped_shards": sorted(set(mine) - set(todo)), "report": report.as_dict(),
            "manifest": manifest is not None, "store_dir": str(store_dir)}
