"""CutMix image augmentation (ImageNet-T2I §2.2, App. E; the original code: reference/anchors.md §3.5).

Offline: every source image i gets `times` composites, k = i·times + j. Composite k pastes a partner image of a
**different class** (the released code may pick the same class; we never do) into the source following one of
the four patterns of App. E, is captioned, and is encoded like the base set (codec latents + text tokens) under a
cache key that includes the augmentation parameters. Two stores:
- the world without `data.store_dir`: one Store file, oracle captions, built on first use (`build_cutmix_store`);
- any sharded store (ImageNet, a folder of class folders, the world): `microt2i cutmix` (`build_cutmix_shards`)
  writes `<data.store_dir>/cutmix-<setting>-x<times>-s<seed>/` through the precompute engine (plan + key, atomic
  shards, resume, `--num-shards/--shard-index`, `--verify`). Captions: the world oracle; on real images
  LLaVA-NeXT with the CutMix prompt and App. D's token choice (`LlavaCaptioner` reads each composite's metadata
  {"source", "partner", "pattern", "box", "src"}), or with data.captions=aio the template of both classes.

| pattern | pasted | where (App. E; positions are ours where the paper leaves room) |
|---|---|---|
| 1/2  | the partner's own right or bottom half, unscaled | right or bottom half (50 %) |
| 1/4  | the whole partner at 1/2 side | one of the four corners (25 %) |
| 1/9  | the whole partner at 1/3 side | middle of one border: centre and corners stay intact (11.1 %) |
| 1/16 | the whole partner at 1/4 side | uniform, 5 % margin, not overlapping the central 20 %×20 % (6.25 %) |
| all  | one of the four, uniformly | |

(The released code places 1/9 at a random offset along the border; App. E says corners stay intact, which at 1/3
side leaves the border's middle cell: we follow the paper.) Pixel boxes are side = round(S·fraction), so areas are
exact when S is a multiple of 12.

Online (Algorithm 1, Eq. 2–4; DESIGN §3 "IA gating"): each sample's noise level is drawn first; iff it is above
τ and Bernoulli(p) fires, the sample is replaced by one of its composites (`ia_gate`, `twin_index`). τ is given
on the paper's scale (400 of 1000 steps of the linear-ᾱ schedule) and compared as an EDM σ (`noise.py`:
σ > σ_τ ⇔ log-SNR < λ_τ), so it means the same noise level under EDM, VP and flow. One loader serves both sets:
only the selected samples' twins are fetched (the released code loads two full batches and drops half).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import CutMixConfig, DataConfig
from ..world.scenes import article
import multiprocessing as mp
from ..data.captions import append_captions, read_captions, repair_tail
from ..data.imagenet import ImageItem, try_load
from ..data.precompute import check_shard_args, list_items, make_plan, run_store_job, world_key
from ..data.store import (MANIFEST, Store, StoreMismatchError, cache_key, cache_root, encode_set, load_store,
                          model_revision, open_store, save_store, store_key)
from ..encoders.captioner import LLAVA_HUB_ID, LlavaCaptioner, shard_path
from ..world import make_dataset, render
from ..world.scenes import cutmix_caption, sample_scene

PATTERNS = ("1/2", "1/4", "1/9", "1/16")
FRACTION = {"1/2": 1.0, "1/4": 1 / 2, "1/9": 1 / 3, "1/16": 1 / 4}  # side of the pasted square (1/2: full side)
_CENTRE_ZONE = (0.4, 0.6)  # CM1/16 never overlaps the central 20 % × 20 % (released code's "red zone")
_MARGIN = 0.05  # CM1/16 keeps 5 % from the borders (released code)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CutMixBox:
    """Where a partner goes: `box` (x0, y0, x1, y1) in pixels of the composite, showing the partner's window `src`
    (normalised (x0, y0, x1, y1); the whole image except for 1/2)."""

    pattern: str
    box: tuple[int, int, int, int]
    src: tuple[float, float, float, float]

    def normalised(self, size: int) -> tuple[float, float, float, float]:
        return tuple(v / size for v in self.box)

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def sample_box(setting: str, size: int, rng: np.random.Generator) -> CutMixBox:
    """The paste box of one composite of side `size` px for `setting` ("all" draws a pattern uniformly)."""
    if setting not in ("all", *PATTERNS):
        raise ValueError(f"CutMix setting {setting!r} is not one of all, {', '.join(PATTERNS)}")
    pattern = PATTERNS[int(rng.integers(4))] if setting == "all" else setting
    whole = (0.0, 0.0, 1.0, 1.0)
    if pattern == "1/2":  # the partner's own half over the same half of the base
        h = size // 2
        box = (h, 0, size, size) if rng.random() < 0.5 else (0, h, size, size)
        return CutMixBox(pattern, box, tuple(v / size for v in box))
    s = max(1, round(size * FRACTION[pattern]))
    if pattern == "1/4":  # a corner
        x, y = (0, size - s)[int(rng.integers(2))], (0, size - s)[int(rng.integers(2))]
    elif pattern == "1/9":  # the middle of a border
        mid, edge = (size - s) // 2, (0, size - s)[int(rng.integers(2))]
        x, y = (mid, edge) if rng.random() < 0.5 else (edge, mid)
    else:  # 1/16: uniform inside the margin, rejecting boxes that overlap the central zone
        lo, hi = round(_MARGIN * size), size - s - round(_MARGIN * size)
        zlo, zhi = _CENTRE_ZONE[0] * size, _CENTRE_ZONE[1] * size
        for _ in range(1000):
            x, y = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            if x >= zhi or x + s <= zlo or y >= zhi or y + s <= zlo:
                break
        else:
            raise ValueError(f"no CM1/16 position avoids the centre of a {size}px image")
    return CutMixBox(pattern, (x, y, x + s, y + s), whole)


def paste(base: np.ndarray, partner: np.ndarray, cm: CutMixBox) -> np.ndarray:
    """The composite uint8 [S, S, 3]: partner's window `cm.src` resized (box filter) into `cm.box` of base."""
    x0, y0, x1, y1 = cm.box
    sx0, sy0, sx1, sy1 = (round(v * partner.shape[0]) for v in cm.src)
    window = Image.fromarray(partner[sy0:sy1, sx0:sx1])
    out = base.copy()
    out[y0:y1, x0:x1] = np.asarray(window.resize((x1 - x0, y1 - y0), Image.BOX) if window.size != (x1 - x0, y1 - y0)
                                   else window)
    return out


def choose_partner(i: int, classes: np.ndarray, rng: np.random.Generator, _cache: dict | None = None) -> int:
    """A uniform random index whose class differs from classes[i]: the r-th of those indices, in index order.

    Found without listing them (ImageNet: 1.28M indices per class would be 10 GB over 1000 classes): with pos the
    sorted indices of class c and q_j = pos_j − j (how many other-class indices precede pos_j), the r-th other index
    is r + #{j : q_j ≤ r}. `_cache` keeps q per class (N integers in all)."""
    key = classes[i]
    q = None if _cache is None else _cache.get(key)
    if q is None:
        pos = np.flatnonzero(classes == key)
        q = pos - np.arange(len(pos))
        if _cache is not None:
            _cache[key] = q
    n_others = len(classes) - len(q)
    if n_others == 0:
        raise ValueError(f"CutMix needs images of at least two classes; every image is a {key!r}")
    r = int(rng.integers(n_others))
    return r + int(np.searchsorted(q, r, side="right"))


def composite_rng(seed: int, i: int, j: int) -> np.random.Generator:
    """The generator of composite j of source i: partner, pattern, position and caption wording."""
    return np.random.default_rng([seed, 0xC0FFEE, i, j])


def plan_composite(i: int, j: int, classes: np.ndarray, cfg: CutMixConfig, size: int,
                   cache: dict | None = None) -> tuple[int, CutMixBox, np.random.Generator]:
    """(partner, paste box, generator) of composite j of source i: a function of (cfg.seed, i, j) and the classes.
    The generator, past its partner and box draws, is what the world oracle words the caption with."""
    rng = composite_rng(cfg.seed, i, j)
    partner = choose_partner(i, classes, rng, cache)
    return partner, sample_box(cfg.setting, size, rng), rng


def box_meta(i: int, partner: int, cm: CutMixBox) -> dict:
    """A composite's metadata: what `LlavaCaptioner` reads ("box" in pixels, "pattern") and where it came from."""
    return {"source": int(i), "partner": int(partner), "pattern": cm.pattern, "box": list(cm.box), "src": list(cm.src)}


def make_composites(images: np.ndarray, scenes: list, cfg: CutMixConfig, *, captions: str = "long",
                    sources=None) -> tuple[np.ndarray, list[str], list[dict]]:
    """Composites k = i·times + j of the sources (all by default), their oracle captions and metadata
    (source, partner, pattern, box, src). A pure function of (images, scenes, cfg, k)."""
    classes = np.array([s.main.cls for s in scenes])
    sources = range(len(images)) if sources is None else sources
    S, cache = images.shape[1], {}
    out, texts, meta = [], [], []
    for i in sources:
        for j in range(cfg.times):
            partner, cm, rng = plan_composite(i, j, classes, cfg, S, cache)
            out.append(paste(images[i], images[partner], cm))
            texts.append(cutmix_caption(scenes[i], scenes[partner], cm.normalised(S), cm.src, rng, captions=captions))
            meta.append(box_meta(i, partner, cm))
    return np.stack(out) if out else np.empty((0, *images.shape[1:]), np.uint8), texts, meta


def pair_caption(names: Sequence[str]) -> str:
    """The AIO caption of a composite: "An image of a <base class> and a <partner class>" (the world's wording,
    `world.scenes.cutmix_caption(captions="aio")`); a repeated name is said once."""
    return "An image of " + " and ".join(f"{article(n.lower())} {n}" for n in dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------------------------
# Training-time selection (Algorithm 1)


def ia_gate(sigma: torch.Tensor, tau: float, p: float, *, generator=None) -> torch.Tensor:
    """[B] bool: sample b takes its augmented twin iff σ_b > σ(τ) (τ on the paper's 1000-step linear-ᾱ scale,
    `paper_tau_to_sigma`) and Bernoulli(p) fires (Eq. 3). One uniform is drawn per sample either way."""
    gen_device = generator.device if generator is not None else sigma.device
    u = torch.rand(sigma.shape, generator=generator, device=gen_device).to(sigma.device)
    return (sigma > paper_tau_to_sigma(tau)) & (u < p)


def twin_index(idx, times: int, *, generator=None) -> np.ndarray:
    """The composite k = i·times + j of each source index i, j drawn uniformly from the step generator."""
    idx = np.asarray(idx, dtype=np.int64)
    j = torch.randint(times, (len(idx),), generator=generator,
                      device=generator.device if generator is not None else "cpu").cpu().numpy()
    return idx * times + j


# ---------------------------------------------------------------------------------------------------------------
# The composite store: `microt2i cutmix` or the first training run builds it, chunk by chunk (resumable)


def cutmix_key(data_cfg: DataConfig, cfg: CutMixConfig) -> str:
    """Cache key of the composite set: the base set's key plus the augmentation parameters."""
    d = {"data": cache_key(data_cfg), "setting": cfg.setting, "times": cfg.times, "seed": cfg.seed,
         "format_version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cutmix_path(data_cfg: DataConfig, cfg: CutMixConfig) -> Path:
    return cache_root(data_cfg) / "stores" / f"cutmix-{cutmix_key(data_cfg, cfg)}"


def build_cutmix_store(data_cfg: DataConfig, cfg: CutMixConfig, make_encoders, *, chunk: int = 512, log=print,
                       stop_after_chunks: int | None = None):
    """The cached composite Store for (data_cfg, cfg), else build it: composites of `chunk` sources at a time are
    encoded and saved under `<path>.parts/`, so an interrupted build resumes at its first missing chunk; the parts
    are merged into `<path>.safetensors` at the end. `stop_after_chunks` interrupts on purpose (tests).
    Returns None when stopped early."""
    if data_cfg.source != "world":
        raise ValueError(f"the one-file composite store is the world's; data.source={data_cfg.source!r} builds its "
                         f"composites into data.store_dir with `microt2i cutmix` (build_cutmix_shards)")
    path = cutmix_path(data_cfg, cfg)
    if path.with_suffix(".safetensors").exists():
        log(f"[cutmix] cached composites {path}.safetensors")
        return load_store(path)
    parts = path.parent / f"{path.name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    images, _, scenes = make_dataset(data_cfg.num_images, seed=data_cfg.seed, resolution=data_cfg.resolution,
                                     captions=data_cfg.captions, max_objects=data_cfg.max_objects)
    n_chunks = -(-len(images) // chunk)
    encoders, done = None, 0
    for c in range(n_chunks):
        part = parts / f"part-{c:05d}"
        if part.with_suffix(".safetensors").exists():
            continue
        if stop_after_chunks is not None and done >= stop_after_chunks:
            log(f"[cutmix] stopped after {done} chunks; run again to resume")
            return None
        encoders = encoders or make_encoders()
        src = range(c * chunk, min((c + 1) * chunk, len(images)))
        comp, texts, meta = make_composites(images, scenes, cfg, captions=data_cfg.captions, sources=src)
        log(f"[cutmix] chunk {c + 1}/{n_chunks}: {len(comp)} composites ({cfg.setting}, ×{cfg.times})")
        lat, tok, mask = encode_set(comp, texts, *encoders)
        empty = encoders[1].encode([""])
        save_store(Store(lat, tok, mask, texts, {"boxes": meta}, empty.tokens.to(torch.float16).cpu(),
                         empty.mask.cpu()), part)
        done += 1
    stores = [load_store(parts / f"part-{c:05d}") for c in range(n_chunks)]
    meta = {"key": cutmix_key(data_cfg, cfg), "data": dataclasses.asdict(data_cfg), "cutmix": dataclasses.asdict(cfg),
            "boxes": [b for s in stores for b in s.meta["boxes"]], "format_version": FORMAT_VERSION}
    store = Store(torch.cat([s.latents for s in stores]), torch.cat([s.text_tokens for s in stores]),
                  torch.cat([s.text_mask for s in stores]), [t for s in stores for t in s.captions], meta,
                  stores[0].empty_tokens, stores[0].empty_mask)
    save_store(store, path)
    shutil.rmtree(parts, ignore_errors=True)
    log(f"[cutmix] {len(store)} composites → {path}.safetensors")
    return store


# ---------------------------------------------------------------------------------------------------------------
# Composites of a sharded store (ImageNet, a folder of class folders, or the world): `microt2i cutmix` with
# data.store_dir. Composite k = i·times + j of base-store sample i, written by the precompute engine (data/).

CUTMIX_SOURCES = ("imagenet", "folder", "world")


def cutmix_dir(data_cfg: DataConfig, cfg: CutMixConfig) -> Path:
    """Where the composites of a sharded store go: `<data.store_dir>/cutmix-<setting>-x<times>-s<seed>/`, one folder
    per setting (the paper builds 1,281,167 composites for each of CM-1/2 … CM-all)."""
    slug = f"{cfg.setting.replace('/', '-')}-x{cfg.times}-s{cfg.seed}"
    return Path(data_cfg.store_dir).expanduser() / f"cutmix-{slug}"


def cutmix_augment(cfg: CutMixConfig, base_key: str) -> dict:
    """The `augment` cache-key field of a composite store: the CutMix parameters and the base store it pairs with."""
    return {"cutmix": {"setting": cfg.setting, "times": cfg.times, "seed": cfg.seed, "format_version": FORMAT_VERSION},
            "base": base_key}


@dataclass
class CompositeSource:
    """The base store's samples, in store order, as CutMix needs them: keys, class identities (partners are of
    another class), class names (AIO captions), base labels, and `load(i)` → uint8 [R, R, 3] (`scene(i)`: world)."""

    keys: list[str]
    classes: np.ndarray
    names: list[str]
    labels: list[int]
    paths: list | None  # image files (imagenet / folder), None for the world
    scenes: list | None  # world Scenes
    resolution: int
    base_key: str

    def load_many(self, idx, pool=None) -> dict[int, np.ndarray]:
        idx = sorted(set(int(i) for i in idx))
        if self.paths is None:
            return {i: render(self.scenes[i], self.resolution) for i in idx}
        args = [(str(self.paths[i]), self.resolution) for i in idx]
        loaded = pool.imap(try_load, args, chunksize=4) if pool is not None else map(try_load, args)
        out = {}
        for i, (img, reason) in zip(idx, loaded):
            if reason is not None:
                raise ValueError(f"{self.paths[i]} ({reason}) was readable when the base store was built; restore it, "
                                 f"or rebuild the base store with `microt2i precompute`")
            out[i] = img
        return out


def _class_of(key: str, label: int) -> str:
    """A sample's class identity: its ImageNet index, else the folder holding it (a class-folder set)."""
    return str(label) if label >= 0 else key.rsplit("/", 1)[0] if "/" in key else ""


def composite_source(data_cfg: DataConfig) -> CompositeSource:
    """The finished base store of `data_cfg` (refusing one built with other settings) and what CutMix needs of it;
    one clear error for a source without classes, a single class, or a missing base store."""
    if data_cfg.source not in CUTMIX_SOURCES:
        raise ValueError(f"CutMix pastes an image of another class, and data.source={data_cfg.source!r} has no "
                         f"classes; use data.source=imagenet, or data.source=folder with one sub-folder per class")
    items = list_items(data_cfg)
    if data_cfg.source == "world":
        scenes = {world_key(data_cfg.seed, i): sample_scene(np.random.default_rng([data_cfg.seed, i]),
                                                            max_objects=data_cfg.max_objects) for i in items}
        by_key = {k: (s.main.cls, s.main.cls) for k, s in scenes.items()}
    else:
        loose = [it.key for it in items if _class_of(it.key, it.label) == ""]
        if loose:
            raise ValueError(f"data.root={data_cfg.root} has {len(loose)} images outside class folders (e.g. "
                             f"{loose[0]!r}); CutMix pastes an image of another class, so put every image in a "
                             f"sub-folder named after its class (<root>/<class>/<image>)")
        by_key = {it.key: (_class_of(it.key, it.label), it) for it in items}
    n_classes = len({c for c, _ in by_key.values()})
    if n_classes < 2:
        raise ValueError(f"CutMix needs images of at least two classes; {data_cfg.root or 'the world set'} has "
                         f"{n_classes}")
    try:
        base = open_store(data_cfg.store_dir, store_key(data_cfg))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"CutMix composites pair the samples of the finished base store: {e}. Run `microt2i "
                                f"precompute` with the same data.* settings first") from None
    records = base.records
    missing = [r["key"] for r in records if r["key"] not in by_key]
    if missing:
        raise ValueError(f"the base store {data_cfg.store_dir} holds {len(missing)} samples not in {data_cfg.root} "
                         f"(e.g. {missing[0]!r}); it was built from another tree: rebuild it with `microt2i "
                         f"precompute`")
    keys = [r["key"] for r in records]
    classes = np.array([by_key[k][0] for k in keys])
    if len(set(classes.tolist())) < 2:
        raise ValueError(f"the base store {data_cfg.store_dir} holds {len(keys)} samples of one class only (images "
                         f"without a caption or unreadable are left out); CutMix needs two classes or more")
    if data_cfg.source == "world":
        names, paths, world = [by_key[k][1] for k in keys], None, [scenes[k] for k in keys]
    else:
        its: list[ImageItem] = [by_key[k][1] for k in keys]
        names, paths, world = [it.name for it in its], [it.path for it in its], None
    return CompositeSource(keys, classes, names, [int(r["label"]) for r in records], paths, world,
                           data_cfg.resolution, base.key)


def composite_captioner(data_cfg: DataConfig, model: str, max_new_tokens: int) -> dict:
    """Which captioner words the composites (it is part of the store's key):
    - the world: its oracle (`world.scenes.cutmix_caption`, long or AIO as data.captions);
    - data.captions=aio: the AIO template of both classes, "An image of a <base> and a <partner>" (our choice: the
      template that captions the base set, naming what the composite shows);
    - data.captions=long: LLaVA-NeXT `model` with the CutMix prompt and App. D's token choice (`LlavaCaptioner`)."""
    if data_cfg.source == "world":
        return {"kind": "world", "captioner": f"world-oracle:{data_cfg.captions}"}
    if data_cfg.captions == "aio":
        return {"kind": "aio", "captioner": "aio-pair"}

    return {"kind": "llava", "captioner": f"llava:{model}", "max_new_tokens": max_new_tokens,
            "captioner_revision": model_revision(model, "LLaVA-NeXT captioner")}  # a model not on disk: fails here


def build_cutmix_shards(data_cfg: DataConfig, cfg: CutMixConfig, *, model: str | None = None,
                        max_new_tokens: int = 200, num_shards: int = 1, shard_index: int = 0, workers: int = 0,
                        device: str = "cpu", batch_size: int = 64, caption_batch_size: int = 16, captioner=None,
                        codec=None, text_encoder=None, log=print, on_shard=None) -> dict:
    """Build this job's shards of the composite store `cutmix_dir(data_cfg, cfg)` with the precompute engine
    (`data.precompute.run_store_job`: plan + cache key, atomic shards, resume, `--num-shards/--shard-index`, manifest).

    Shard s holds composites k ∈ [s·shard_size, (s+1)·shard_size). LLaVA captions are appended batch by batch
    (fixed batches from the shard's start) to this job's `captions[.shardI-of-N].tsv` in the folder, so a killed job
    redoes at most one batch and the same batches as an uninterrupted one. `captioner` replaces the LLaVA model
    (anything with `caption(images, metas=)`). Returns precompute's summary."""
    check_shard_args(num_shards, shard_index)
    model = model or LLAVA_HUB_ID
    src = composite_source(data_cfg)
    who = composite_captioner(data_cfg, model, max_new_tokens)
    n, size, T = len(src.keys), data_cfg.resolution, cfg.times
    keys = [f"{src.keys[i]}#{j}" for i in range(n) for j in range(T)]
    plan = make_plan(store_key(data_cfg, cutmix_augment(cfg, src.base_key)), keys,
                     {k: v for k, v in who.items() if k != "kind"}, data_cfg.shard_size)
    out_dir = cutmix_dir(data_cfg, cfg)
    log(f"[cutmix] CM-{cfg.setting} ×{T} of {n} samples → {len(keys)} composites, captioned by {who['captioner']}, "
        f"in {out_dir} (key {plan['key']})")
    caption_file = shard_path(out_dir / "captions.tsv", num_shards, shard_index)
    state: dict = {"pool": None, "captioner": captioner, "done": None, "partners": {}}

    def llava_captions(ks: list[str], images: list[np.ndarray], metas: list[dict]) -> list[str]:
        if state["done"] is None:  # this job's caption file, after cutting a row torn by a kill
            repair_tail(caption_file)
            state["done"] = {k: v[0] for k, v in read_captions(caption_file).items()} if caption_file.exists() else {}
        done, out = state["done"], {}
        for b in range(0, len(ks), caption_batch_size):  # fixed batches: a resumed job redoes the same ones
            todo = [t for t in range(b, min(b + caption_batch_size, len(ks))) if ks[t] not in done]
            if not todo:
                continue
            if state["captioner"] is None:
                state["captioner"] = LlavaCaptioner(model, max_new_tokens=max_new_tokens,
                                                    batch_size=caption_batch_size, device=device)
            caps = state["captioner"].caption([images[t] for t in todo], metas=[metas[t] for t in todo])
            append_captions(caption_file, [(ks[t], c) for t, c in zip(todo, caps)])
            out |= {ks[t]: c for t, c in zip(todo, caps)}
        return [done.get(k, out.get(k)) for k in ks]

    def load_shard(s: int, report):
        ks = list(range(s * data_cfg.shard_size, min((s + 1) * data_cfg.shard_size, len(keys))))
        plans = [(k // T, *plan_composite(k // T, k % T, src.classes, cfg, size, state["partners"])) for k in ks]
        if workers > 0 and state["pool"] is None and src.paths is not None:
            state["pool"] = mp.get_context("spawn").Pool(workers)
        pixels = src.load_many([i for i, *_ in plans] + [p for _, p, *_ in plans], state["pool"])
        images, records, texts = [], [], []
        for k, (i, p, cm, rng) in zip(ks, plans):
            images.append(paste(pixels[i], pixels[p], cm))
            records.append({"key": keys[k], "label": src.labels[i], **box_meta(i, p, cm), "partner_key": src.keys[p]})
            if who["kind"] == "world":
                texts.append(cutmix_caption(src.scenes[i], src.scenes[p], cm.normalised(size), cm.src, rng,
                                            captions=data_cfg.captions))
            elif who["kind"] == "aio":
                texts.append(pair_caption([src.names[i], src.names[p]]))
        if who["kind"] == "llava":
            texts = llava_captions([r["key"] for r in records], images, records)
        for r, t in zip(records, texts):
            r["caption"] = t
        report.total += len(ks)
        report.kept += len(ks)
        return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), records

    try:
        return run_store_job(data_cfg, out_dir, plan, load_shard, num_shards=num_shards, shard_index=shard_index,
                             device=device, batch_size=batch_size, codec=codec, text_encoder=text_encoder, log=log,
                             on_shard=on_shard, tag="cutmix",
                             fix="delete {dir} to rebuild the composites with this config")
    finally:
        if state["pool"] is not None:
            state["pool"].close()
            state["pool"].join()


def open_cutmix_store(data_cfg: DataConfig, cfg: CutMixConfig):
    """The finished composite store of (data_cfg, cfg) for training, refusing one that pairs another base store or
    was built with other settings (one error naming the fields and the fix)."""
    path = cutmix_dir(data_cfg, cfg)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"the CutMix composites of this config ({path}) are not built: run `microt2i cutmix "
                                f"<preset> <the same data.* and augment.cutmix.* overrides>` first (its own job: "
                                f"LLaVA captions every composite), then train")
    base_key = json.loads((Path(data_cfg.store_dir).expanduser() / MANIFEST).read_text())["key"]
    store = open_store(path)
    have, want = store.manifest["fields"], store_key(data_cfg, cutmix_augment(cfg, base_key))
    diff = [k for k in want if have.get(k) != want[k]]
    if diff:
        rebuilt = (have.get("augment") or {}).get("base") != base_key
        what = "; ".join(f"data.{k}: {have.get(k)!r} there, {want[k]!r} here" for k in diff if k != "augment")
        what = "; ".join(filter(None, ["the base store was rebuilt since" if rebuilt else "", what])) or (
            f"augment: {have.get('augment')!r} there, {want['augment']!r} here")
        raise StoreMismatchError(f"the CutMix composites {path} were built with other settings ({what}); delete "
                                 f"{path} and run `microt2i cutmix` with this config again")
    return store


def paper_tau_to_sigma(tau: float = 400, T: int = 1000) -> float:
    """The ImageNet paper's IA threshold τ (of T steps) as an EDM σ: IA applies iff σ > this.

    That paper's schedule is linear in ᾱ: ᾱ = 1 − t with t = τ/T, so τ = 400 ⇒ ᾱ = 0.6 ⇒ σ = √(0.4/0.6) ≈ 0.816.
    """
    if not 0 < tau < T:
        raise ValueError(f"tau={tau} must lie strictly between 0 and T={T}")
    alpha_bar = 1 - tau / T
    return math.sqrt((1 - alpha_bar) / alpha_bar)  # diffusion.noise.alpha_bar_to_sigma, in floats


def describe(aug) -> str:
    """One line naming the active image augmentation of an `AugmentConfig` ("none" when off)."""
    parts = []
    cm, crop = aug.cutmix, aug.crop
    if cm.enabled:
        sigma = paper_tau_to_sigma(cm.tau)
        parts.append(f"CutMix CM-{cm.setting} p={cm.p} above τ={cm.tau:g}/1000 (σ > {sigma:.3f}), "
                     f"{cm.times} composite(s) per image")
    if crop.enabled:
        parts.append(f"Crop p={crop.p}, side ≥ {crop.min_side:.0%}")
    return "; ".join(parts) or "none"
