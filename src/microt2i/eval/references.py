"""Reference sets for FD / KID / PRDC / CLIPScore: real images on disk, their prompts, and cached features.

A reference is a list of images and one generation prompt per image (the generated set is sampled from the
reference's prompts, as COCO-30k FID samples COCO captions). `--reference` takes:
- `world`: held-out world renders (`eval/runner.py` `world_reference`); the default on a world run.
- `val` (the run's `data.root/val`, with `data.labels_file` for a flat val/), or `imagenet-val:ROOT` (ROOT holds
  val/): ImageNet validation. Prompts: a caption file keyed like `microt2i caption` writes (`--captions`; ImageNet-T2I
  Table 7 samples long-caption models from LLaVA captions of the val images), else the AIO template
  "An image of a <class>" (Table 7's prompts for AIO models). The default on an ImageNet run.
- `folder:PATH` (or a bare PATH): any image folder. With `--captions FILE` it is an image + caption set (COCO-30k
  style, MicroDiT Table 8: a folder of images and captions keyed by their relative paths; the first caption of an
  image is its prompt; images without one are left out and counted). Without captions, the images must sit in
  class folders (`PATH/<class>/*.jpg`), whose names give AIO prompts.

N (`--n`) defaults to the papers' protocols: 50,000 for ImageNet val (ImageNet-T2I Table 1, "ImageNet-50k") and for a
plain folder (dgm-eval's default), 30,000 for an image + caption set (MicroDiT Table 8, COCO-30k). A smaller N
is allowed and written next to every number; a reference holding fewer images than N is one error that names both
numbers and the flag. Which N images: a fixed-seed permutation of the sorted file list, the first N (all of them
at N = the set's size); generated image j is sampled from the prompt of reference image j with noise (seed, j).

Resize protocol: every reference image is decoded to RGB, its short side resized to the run's resolution (PIL
bicubic, antialiased) and centre-cropped (`data/imagenet.py` `load_image`: the preprocessing of training), so
real and generated images meet the extractor at one size; the extractor then applies its own protocol (FID:
bilinear to 299², as pytorch-fid). Features are cached under `<data cache>/eval-features/`, keyed by the extractor
(weights + resize), the set (kind, folder, the N files' names and sizes, captions file), N and this protocol, and
written atomically; a second evaluation against the same reference reads them back.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..world import make_dataset
from ..encoders.teacher import file_id
from .features import cached_features
from ..data.captions import read_captions
from ..data.imagenet import UnreadableImage, list_folder, list_imagenet, load_image
from ..encoders.captioner import TemplateCaptioner

PAPER_N = {"imagenet-val": 50_000, "folder": 50_000, "captioned": 30_000}
PAPER_N_SOURCE = {"imagenet-val": "ImageNet-T2I Table 1 (ImageNet-50k)", "folder": "dgm-eval's default",
                  "captioned": "MicroDiT Table 8 (COCO-30k)"}
ORDER_SEED = 1_000_003
RESIZE = "short side to the run's resolution (PIL bicubic, antialiased), centre crop"
KINDS = "world | val | imagenet-val:ROOT | folder:PATH (with --captions FILE: an image + caption set)"


@dataclass
class Reference:
    """N reference images (read lazily, in batches) with one prompt each; `spec` is its JSON-able identity."""

    kind: str  # world | imagenet-val | folder | captioned
    label: str  # what to call it in messages and reports
    prompts: list[str]
    spec: dict
    paths: list[Path] = field(default_factory=list)
    resolution: int = 0
    images: np.ndarray | None = None  # world renders, held in memory
    paper_n: int | None = None

    @property
    def n(self) -> int:
        return len(self.prompts)

    def batches(self, size: int = 256) -> Iterator[np.ndarray]:
        """uint8 [≤ size, R, R, 3] batches in reference order (decoded by a few threads)."""
        if self.images is not None:
            for i in range(0, len(self.images), size):
                yield self.images[i:i + size]
            return
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i in range(0, len(self.paths), size):
                yield np.stack(list(pool.map(self._load, self.paths[i:i + size])))

    def _load(self, path: Path) -> np.ndarray:
        try:
            return load_image(path, self.resolution)
        except (UnreadableImage, FileNotFoundError) as e:
            raise ValueError(f"reference image {path} cannot be read ({e}); remove or replace it, then run again"
                             ) from None

    def features(self, extractor, cache_dir: str | os.PathLike) -> np.ndarray:
        images_only = {k: v for k, v in self.spec.items() if k != "prompts"}  # features do not depend on prompts
        return cached_features(extractor, images_only, self.batches, cache_dir)


def _id(path: Path) -> str:
    return file_id(path)


def _too_small(label: str, have: int, n: int, paper: int | None) -> ValueError:
    also = f" (the papers use N = {paper:,})" if paper else ""
    return ValueError(f"reference {label} holds {have:,} images, fewer than N = {n:,}{also}; pass --n {have} or "
                      f"less, or a larger reference")


def _pick(total: int, n: int) -> np.ndarray:
    """Indices of the N images used: the first N of a fixed permutation of the sorted list."""
    return np.random.default_rng(ORDER_SEED).permutation(total)[:n]


def _caption_lookup(captions_file: str) -> tuple[dict[str, list[str]], str]:
    table = read_captions(captions_file)
    if not table:
        raise ValueError(f"caption file {captions_file} holds no captions; pass a file written by `microt2i caption` "
                         f"(or a .tsv/.jsonl keyed by image path)")
    path = Path(captions_file).expanduser()
    return table, (_id(path) if path.is_file() else str(captions_file))


def _first_caption(table: dict[str, list[str]], key: str) -> str | None:
    found = table.get(key) or table.get(Path(key).name)  # a flat caption file also serves the val/<synset>/ layout
    return found[0] if found else None


def _build(kind: str, label: str, root: Path, items, prompts: list[str], n: int | None, resolution: int,
           extra: dict) -> Reference:
    paper = PAPER_N[kind]
    n = paper if n is None else n
    if n < 2:
        raise ValueError(f"--n {n}: distribution metrics need at least 2 images")
    if len(items) < n:
        raise _too_small(label, len(items), n, paper)
    total = len(items)
    chosen = _pick(total, n)
    items = [items[i] for i in chosen]
    prompts = [prompts[i] for i in chosen]
    files = hashlib.sha256("\n".join(f"{it.key}:{it.path.stat().st_size}" for it in items).encode()).hexdigest()
    spec = {"kind": kind, "root": str(root.resolve()), "n": n, "of": total, "files": files[:16],
            "order_seed": ORDER_SEED, "resolution": resolution, "resize": RESIZE, **extra}
    return Reference(kind, label, prompts, spec, [it.path for it in items], resolution, paper_n=paper)


def imagenet_val(root: str | os.PathLike, labels_file: str = "", *, n: int | None = None, resolution: int,
                 captions: str | None = None) -> Reference:
    """ImageNet val under `root/val` (class folders, or flat files + `labels_file`); prompts from `captions` or AIO."""
    root = Path(root).expanduser()
    val = root / "val"
    if not val.is_dir():
        raise FileNotFoundError(f"no val/ folder in {root}; an ImageNet reference is ROOT/val/<synset>/*.JPEG, or "
                                f"flat ROOT/val/*.JPEG with --labels-file (data.labels_file)")
    if not labels_file and not any(p.is_dir() for p in val.iterdir()):
        raise FileNotFoundError(f"{val} holds flat files and no <synset>/ folders, so its classes are unknown; pass "
                                f"--labels-file <'filename synset' lines or LOC_val_solution.csv> (or set "
                                f"data.labels_file in the run)")
    items = list_imagenet(root, "val", labels_file)
    extra = {"split": "val", "labels_file": _id(Path(labels_file).expanduser()) if labels_file else ""}
    if captions:
        table, cid = _caption_lookup(captions)
        prompts = [_first_caption(table, it.key) for it in items]
        missing = [it.key for it, p in zip(items, prompts) if p is None]
        if missing:
            raise ValueError(f"{len(missing)} ImageNet val image(s) have no caption in {captions} (first: "
                             f"{missing[0]}); caption every val image (`microt2i caption`), or drop --captions for "
                             f"the AIO prompts")
        extra["prompts"] = f"captions:{cid}"
    else:
        prompts = TemplateCaptioner(classes=[it.name for it in items]).caption(metas=list(range(len(items))))
        extra["prompts"] = "aio"
    return _build("imagenet-val", f"ImageNet val ({val})", root, items, prompts, n, resolution,
                  extra)


def image_folder(root: str | os.PathLike, *, n: int | None = None, resolution: int,
                 captions: str | None = None) -> Reference:
    """Any image folder: with `captions` an image + caption set, else class folders with AIO prompts."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"reference folder {root} does not exist; pass --reference folder:<folder of images>")
    items = list_folder(root)
    if captions:
        table, cid = _caption_lookup(captions)
        pairs = [(it, _first_caption(table, it.key)) for it in items]
        kept = [(it, p) for it, p in pairs if p is not None]
        if not kept:
            raise ValueError(f"no image of {root} has a caption in {captions}; its keys must be the images' paths "
                             f"relative to {root} (e.g. {items[0].key})")
        return _build("captioned", f"image + caption set ({root}, {captions})", root, [it for it, _ in kept],
                      [p for _, p in kept], n, resolution,
                      {"prompts": f"captions:{cid}", "uncaptioned": len(pairs) - len(kept)})
    unnamed = [it.key for it in items if not it.name]
    if unnamed:
        raise ValueError(f"image folder {root} has images outside class folders (e.g. {unnamed[0]}) and no captions, "
                         f"so there is nothing to prompt the model with; pass --captions FILE (an image + caption "
                         f"set) or put the images in {root}/<class name>/")
    prompts = TemplateCaptioner(classes=[it.name.replace("_", " ") for it in items]).caption(
        metas=list(range(len(items))))
    return _build("folder", f"image folder {root}", root, items, prompts, n, resolution,
                  {"prompts": "aio"})


def world(cfg, n: int) -> Reference:
    images, captions, _, spec = world_reference(cfg, n)
    return Reference("world", "held-out world renders", list(captions), spec, images=images,
                     resolution=cfg.data.resolution)


def default_spec(cfg) -> str:
    """`val` on an ImageNet run, `world` on the world; other sources must name their reference."""
    source = cfg.data.source
    if source == "world":
        return "world"
    if source == "imagenet":
        return "val"
    raise ValueError(f"this run trained on data.source={source!r}, which has no default reference set; pass "
                     f"--reference {KINDS}")


def make_reference(spec: str | None, cfg, *, n: int | None = None, captions: str | None = None,
                   labels_file: str | None = None, world_n: int = 256) -> Reference:
    """The reference named by `spec` (see the module docstring) at the run's resolution, with N images."""
    spec = spec or default_spec(cfg)
    res = cfg.data.resolution
    if spec == "world":
        if captions:
            raise ValueError("--captions applies to image references, not to the world (its renders carry captions)")
        return world(cfg, n or world_n)
    if spec == "val":
        if cfg.data.source != "imagenet" or not cfg.data.root:
            raise ValueError(f"--reference val means the run's data.root/val, but this run trained on "
                             f"data.source={cfg.data.source!r}; pass --reference imagenet-val:/path/to/imagenet")
        return imagenet_val(cfg.data.root, labels_file or cfg.data.labels_file, n=n, resolution=res,
                            captions=captions)
    kind, sep, path = spec.partition(":")
    if sep and kind == "imagenet-val":
        labels = labels_file or (cfg.data.labels_file if cfg.data.source == "imagenet" else "")
        return imagenet_val(path, labels, n=n, resolution=res, captions=captions)
    if sep and kind == "folder":
        return image_folder(path, n=n, resolution=res, captions=captions)
    if Path(spec).expanduser().is_dir():
        return image_folder(spec, n=n, resolution=res, captions=captions)
    raise FileNotFoundError(f"--reference {spec!r} is neither a known reference nor a folder; pass {KINDS}")


REFERENCE_SEED = 1_000_003


def world_reference(cfg, n: int, seed: int = REFERENCE_SEED):
    """(images, captions, scenes, spec) of n held-out world scenes drawn like the run's training data."""
    d = cfg.data
    if d.source != "world":
        raise ValueError(f"held-out world scenes exist for data.source='world' only (this run has {d.source!r}); "
                         f"fid/fd/kid/prdc/clipscore take --reference val | imagenet-val:ROOT | folder:PATH, dpg "
                         f"--csv, aesthetic/pickscore/preference --prompts")
    spec = {"source": "world", "seed": seed, "n": n, "resolution": d.resolution, "captions": d.captions,
            "max_objects": d.max_objects}
    images, captions, scenes = make_dataset(n, seed=seed, resolution=d.resolution, captions=d.captions,
                                            max_objects=d.max_objects)
    return images, captions, scenes, spec
