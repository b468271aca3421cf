"""Your own image–caption data into the sharded store: listing, decoding, filtering, caption cleaning.

Sources (`data.source`, `data.root`), beside `world`, `imagenet` and `folder` (data/imagenet.py):
- `sidecar`: a folder of images, each with a caption next to it: `cat.jpg` + `cat.txt` (the whole file) or
  `cat.json` (its `data.caption_column`, else the first of "caption", "captions", "text", …) — the layout of
  img2dataset's `files` output and of most scraped sets; a caption file (`data.caption_file`) may replace them.
- `webdataset`: uncompressed tar shards as img2dataset writes them (`00000.tar` holding `000000001.jpg`,
  `000000001.txt`, `000000001.json`, …): `data.root` is a folder (every `*.tar`), a glob or a brace range
  `shards/{00000..00099}.tar`. Members are read by offset, so loader workers need no tar index. Any fsspec URL
  (`s3://`, `https://`, `file://`, …, gzip-compressed too) or `pipe:<command>` is fetched once into the data
  cache and then read the same way (data/remote.py).
- `hf`: a `datasets` dataset with an image and a text column: a `save_to_disk` folder or a hub id (`data.split`),
  columns `data.image_column` / `data.caption_column` or the usual names.

`data.min_resolution` skips images whose short side is smaller (MicroDiT trains its 512² stage on images ≥ 512, MicroDiT
§4 and its `convert.py`'s `min_image_size`); `data.clean_captions` runs `clean_caption`, MicroDiT's caption cleaner
(DeepFloyd-IF's: URLs, HTML, handles, ids, file names, shop spam and stray punctuation removed, lower-cased).
Skips are counted per reason in the precompute report ("below min_resolution", "no caption", "empty caption", …).
"""

from __future__ import annotations

import glob
import hashlib
import html
import io
import json
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import DataConfig
from .captions import CAPTION_COLUMNS, KEY_COLUMNS, decode_utf8, read_text_utf8
from .imagenet import IMAGE_SUFFIXES, ImageItem, UnreadableImage, list_folder, resize_center_crop, try_load
from .captions import load_hf_dataset, pick_caption
from .buckets import assign_bucket, resize_to_bucket
from .remote import fetch_shards, is_remote
from .store import cache_root
from ..encoders.captioner import TemplateCaptioner
from ..io import atomic_write_bytes, atomic_write_text
from ..world import make_dataset
from ..world.scenes import BACKGROUNDS

INGEST_SOURCES = ("sidecar", "webdataset", "hf")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img")
_EXTS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class IngestItem:
    """One image of an ingest source: its key, where its bytes are, and its captions (empty: none found)."""

    key: str
    ref: tuple  # ("file", path) | ("tar", path, offset, size) | ("hf", source, split, column, row)
    captions: tuple[str, ...]
    label: int = -1
    name: str = ""


# --------------------------------------------------------------------------------------------------- listing


def list_ingest(data: DataConfig) -> list[IngestItem]:
    """The items of `data.source` in a fixed order (the store's shard layout follows it)."""
    if data.source == "sidecar":
        return list_sidecar(data.root, data.caption_column)
    if data.source == "webdataset":
        return list_webdataset(data.root, data.image_column, data.caption_column, cache=cache_root(data))
    if data.source == "hf":
        return list_hf(data.root, data.split, data.image_column, data.caption_column)
    raise ValueError(f"data.source={data.source!r} is not an ingest source ({', '.join(INGEST_SOURCES)})")


def _json_captions(text: str, column: str, where: str) -> tuple[str, ...]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg}); fix or delete it") from None
    if not isinstance(row, dict):
        return ()
    name = column or next((c for c in CAPTION_COLUMNS if row.get(c)), None)
    value = row.get(name) if name else None
    values = value if isinstance(value, list) else [value]
    return tuple(v for v in values if isinstance(v, str) and v.strip())


def list_sidecar(root: str, caption_column: str = "") -> list[IngestItem]:
    """Every image under `root` with the captions of its `.txt` (preferred) or `.json` sidecar."""
    items = []
    for it in list_folder(root):
        txt, js = it.path.with_suffix(".txt"), it.path.with_suffix(".json")
        if txt.is_file():
            caps = tuple(c for c in [read_text_utf8(txt).strip()] if c)
        elif js.is_file():
            caps = _json_captions(read_text_utf8(js), caption_column, str(js))
        else:
            caps = ()
        items.append(IngestItem(it.key, ("file", str(it.path)), caps, it.label, it.name))
    return items


def expand_shards(spec: str) -> list[Path]:
    """Tar shards of `spec`: a folder (its *.tar), a glob, or a brace range `a/{00000..00012}.tar` (img2dataset and
    webdataset notation, zero padding kept); sorted, each must exist."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if m:
        lo, hi, width = int(m[1]), int(m[2]), len(m[1])
        paths = [Path(spec[:m.start()] + f"{i:0{width}d}" + spec[m.end():]).expanduser() for i in range(lo, hi + 1)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shards of {spec} do not exist (e.g. {missing[0]}); fix the "
                                    f"range in data.root")
        return paths
    p = Path(spec).expanduser()
    paths = sorted(p.glob("*.tar")) if p.is_dir() else [Path(f) for f in sorted(glob.glob(str(p)))]
    if not paths:
        raise FileNotFoundError(f"no tar shards at data.root={spec!r}; pass a folder of .tar files, a glob or a "
                                f"range like shards/{{00000..00099}}.tar")
    return paths


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the basename, the rest the extension."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def list_webdataset(root: str, image_column: str = "", caption_column: str = "", cache=None) -> list[IngestItem]:
    """Every sample of every shard; a sample is the members sharing a key. Key = `<shard stem>/<sample key>`.
    A URL or `pipe:` root is fetched into `cache` first (data/remote.py), then read like local shards."""
    items = []
    image_exts = (image_column,) if image_column else _EXTS
    if is_remote(root):
        shards = fetch_shards(root, Path(cache) if cache else cache_root())
    else:
        shards = expand_shards(root)
    for shard in shards:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        members, cut = _tar_members(shard)
        for m in members:
            key, ext = _split_member(m.name)
            samples.setdefault(key, {})[ext] = m
        with open(shard, "rb") as f:
            texts = {}
            for k, parts in samples.items():
                for e, m in parts.items():
                    if e in ("txt", "json"):
                        f.seek(m.offset_data)
                        texts[(k, e)] = decode_utf8(f.read(m.size), f"{shard}:{m.name}")
        if cut:  # what a cut archive lost is unknowable: one "truncated archive" skip names the shard and where
            items.append(IngestItem(f"{shard.stem}/(truncated: {cut})", ("skip", "truncated archive"), ()))
        for key, parts in samples.items():
            ext = next((e for e in image_exts if e in parts), None)
            if ext is None:  # a caption or metadata file without an image: counted, never silently dropped
                items.append(IngestItem(f"{shard.stem}/{key}", ("skip", "no image"), ()))
                continue
            if ("txt" in parts and not caption_column) or "json" not in parts:
                caps = tuple(c for c in [texts.get((key, "txt"), "").strip()] if c)
            else:
                caps = _json_captions(texts[(key, "json")], caption_column, f"{shard}:{key}.json")
            m = parts[ext]
            items.append(IngestItem(f"{shard.stem}/{key}", ("tar", str(shard), m.offset_data, m.size), caps))
    if all(it.ref[0] == "skip" for it in items):
        raise FileNotFoundError(f"no images ({', '.join(image_exts)}) in the shards of {root}")
    return items


def _tar_members(shard: Path) -> tuple[list[tarfile.TarInfo], str]:
    """The file members of an uncompressed tar whose data is complete, and "" or where the archive was cut: inside a
    member, or at a member boundary (no end-of-archive marker: tarfile would just stop, losing the rest silently)."""
    size, members, cut = shard.stat().st_size, [], ""
    try:
        tar = tarfile.open(shard, "r:")  # "r:" refuses compressed shards: members are read by offset
    except tarfile.ReadError as e:
        raise ValueError(f"{shard} is not an uncompressed tar ({e}); img2dataset writes plain .tar shards — "
                         f"decompress .tar.gz shards first, or pass them as a file:// URL (gunzipped into the data "
                         f"cache)") from None
    with tar:
        it = iter(tar)
        while True:
            try:
                m = next(it)
            except StopIteration:
                break
            except tarfile.ReadError:  # a header or member data past the end of the file
                cut = "cut"
                break
            if m.isfile():
                members.append(m)
        whole = [m for m in members if m.offset_data + m.size <= size]
        if len(whole) < len(members):
            cut = "cut"
        if cut or size < tar.offset + 1024:  # a whole tar ends with two zero blocks
            cut = f"{cut or 'no end-of-archive marker'} after {whole[-1].name if whole else 'its start'}"
    return whole, cut


_HF_CACHE: dict[tuple, object] = {}


def open_hf(source: str, split: str = "train", image_column: str = ""):
    """(dataset, image column) of a `save_to_disk` folder or hub id; the image column is cast to undecoded bytes so
    decoding and its errors stay ours. Cached per process (loader workers open it once)."""
    key = (source, split, image_column)
    if key in _HF_CACHE:
        return _HF_CACHE[key]
    import datasets  # optional extra `data`: Hub / saved data sets only

    ds = load_hf_dataset(source, split, error=FileNotFoundError, split_error=ValueError, hint="set data.root/data.split")
    col = image_column or next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)
    if col not in ds.column_names:
        raise ValueError(f"{source}: no image column ({image_column or ', '.join(IMAGE_COLUMNS)}) among "
                         f"{ds.column_names}; set data.image_column")
    if isinstance(ds.features[col], datasets.Image):
        ds = ds.cast_column(col, datasets.Image(decode=False))
    _HF_CACHE[key] = (ds, col)
    return ds, col


def list_hf(source: str, split: str = "train", image_column: str = "", caption_column: str = "") -> list[IngestItem]:
    ds, col = open_hf(source, split, image_column)
    cc = caption_column or next((c for c in CAPTION_COLUMNS if c in ds.column_names), None)
    if cc not in ds.column_names:
        raise ValueError(f"{source}: no caption column ({caption_column or ', '.join(CAPTION_COLUMNS)}) among "
                         f"{ds.column_names}; set data.caption_column")
    kc = next((c for c in KEY_COLUMNS if c in ds.column_names and c not in (col, cc)), None)
    keys = [str(k) for k in ds[kc]] if kc else [f"{i:08d}" for i in range(len(ds))]
    items = []
    for row, (key, cap) in enumerate(zip(keys, ds[cc])):
        caps = tuple(c for c in (cap if isinstance(cap, list) else [cap]) if isinstance(c, str) and c.strip())
        items.append(IngestItem(key, ("hf", source, split, image_column, row), caps))
    return items


# --------------------------------------------------------------------------------------------------- decoding


def decode_image(src, resolution: int, min_resolution: int = 0, buckets=None) -> np.ndarray:
    """uint8 [resolution, resolution, 3] from encoded bytes or a PIL image, or `UnreadableImage` with the reason;
    an image whose short side is below `min_resolution` is skipped before it is decoded. With `buckets` [(h, w), …]
    (data.buckets) the image goes to the bucket nearest its aspect ratio instead: uint8 [h, w, 3] (data/buckets.py)."""
    if isinstance(src, (bytes, bytearray)) and not src:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = src if isinstance(src, Image.Image) else Image.open(io.BytesIO(src))
            if min(img.size) < min_resolution:  # the header is enough (MicroDiT's min_image_size)
                raise UnreadableImage("below min_resolution")
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGBA").convert("RGB") if "transparency" in img.info else img.convert("RGB")
            if buckets:
                h, w = buckets[assign_bucket(img.size[1], img.size[0], buckets)]
                return np.asarray(resize_to_bucket(img, h, w), dtype=np.uint8)
            return np.asarray(resize_center_crop(img, resolution), dtype=np.uint8)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, UnreadableImage):
            raise
        raise UnreadableImage("truncated" if "truncat" in str(e).lower() else f"decode error: {type(e).__name__}") \
            from None


def _read_ref(ref: tuple):
    kind = ref[0]
    if kind == "file":
        return Path(ref[1]).read_bytes()
    if kind == "tar":
        with open(ref[1], "rb") as f:
            f.seek(ref[2])
            return f.read(ref[3])
    ds, col = open_hf(ref[1], ref[2], ref[3])
    value = ds[ref[4]][col]
    if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes", "path"}
        return value["bytes"] if value.get("bytes") else Path(value["path"]).read_bytes()
    if isinstance(value, str):
        return Path(value).read_bytes()
    return value  # raw bytes, or a PIL image


def load_item(args: tuple) -> tuple[np.ndarray | None, str | None]:
    """(image, None) or (None, reason) for `(ref, resolution, min_resolution[, buckets])`: picklable, for a process
    pool."""
    ref, resolution, min_resolution, *buckets = args
    if ref[0] == "skip":  # listed only to be counted (a truncated archive)
        return None, ref[1]
    try:
        return decode_image(_read_ref(ref), resolution, min_resolution, *buckets), None
    except UnreadableImage as e:
        return None, str(e)
    except FileNotFoundError:
        return None, "missing"


def item_loader(data: DataConfig, items: list, buckets=None) -> tuple:
    """(function, picklable args) that load `items` for precompute: `try_load` for plain ImageNet / folder files
    (unchanged behaviour), `load_item` for ingest items and whenever `data.min_resolution` or `buckets` is set."""
    if items and isinstance(items[0], ImageItem) and not data.min_resolution and not buckets:
        return try_load, [(str(it.path), data.resolution) for it in items]
    refs = [it.ref if isinstance(it, IngestItem) else ("file", str(it.path)) for it in items]
    extra = (tuple(tuple(b) for b in buckets),) if buckets else ()
    return load_item, [(r, data.resolution, data.min_resolution, *extra) for r in refs]


def item_caption(item, seed: int) -> str | None:
    """The caption precompute stores for `item`: the AIO template of an ImageNet / folder class name, one fixed draw
    among an ingest item's captions (as `precompute._set_caption`), None when it has none."""
    if isinstance(item, ImageItem):
        return TemplateCaptioner.for_name(item.name)
    if not item.captions:
        return None

    return pick_caption(list(item.captions), seed, 0, hash_key(item.key))


def finish_caption(record: dict, data: DataConfig, report) -> bool:
    """Clean the record's caption (with `data.clean_captions`); False, with the skip counted, when none is left."""
    if record["caption"] is None:
        report.add_skip(record["key"], "no caption")
        return False
    if data.clean_captions:
        record["caption"] = clean_caption(record["caption"])
        if not record["caption"]:
            report.add_skip(record["key"], "empty caption")
            return False
    return True


def ingest_content(data: DataConfig, items: list) -> dict:
    """What an ingest store's content depends on beyond the item keys: captions, filter and cleaner settings."""
    h = hashlib.sha256()
    for it in items:
        for c in getattr(it, "captions", ()):
            h.update(c.encode() + b"\0")
        h.update(b"\1")
    return {"captions_sha": h.hexdigest()[:16], "min_resolution": data.min_resolution,
            "clean_captions": data.clean_captions, "image_column": data.image_column,
            "caption_column": data.caption_column}


# --------------------------------------------------------------------------------------------------- cleaning

_URL = re.compile(r"\b(?:https?://|www\.)\S+|\b[\w.\-]+\.(?:com|co|ru|net|org|edu|gov|it|io)(?:/\S*)?\b", re.I)
_CJK = re.compile("[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")
_DASHES = re.compile("[\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0"
                     "\ufe31\ufe32\ufe58\ufe63\uff0d]+")
_SPAM = re.compile(r"(?:worldwide\s+)?(?:free\s+)?shipping|(?:free\s)?download(?:\sfree)?|\bclick\s(?:for|on)\s\w+|"
                   r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(?:\simages?)?\b|\bpage\s+\d+\b")
_CODES = re.compile(r"\b[a-z]{1,3}\d{3,15}\b|\b[a-z]+\d+[a-z]+\b|\b\d+[a-z]+\d+\b|\b\d*[a-z]+\d+[a-z]+\d+[a-z\d]*\b")
_BAD_PUNCT = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+")


def _clean_once(text: str) -> str:
    t = html.unescape(html.unescape(unquote_plus(str(text)))).strip().lower()
    t = t.replace("<person>", "person")
    t = _URL.sub("", t)
    t = re.sub(r"<[^>]{0,200}>", "", t)  # HTML tags
    t = re.sub(r"@[\w\d]+\b", "", t)  # @handles
    t = _CJK.sub("", t)
    t = _DASHES.sub("-", t)  # every dash → "-", every quote → ' or "
    t = re.sub("[`´«»“”¨]", '"', t).replace("‘", "'").replace("’", "'")
    t = re.sub(r"&quot;?|&amp;?", "", t)
    t = re.sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ", t)  # IP addresses
    t = re.sub(r"\d:\d\d\s+$", "", t).replace("\\n", " ")
    t = re.sub(r"#\d{1,3}\b|#\d{5,}\b|\b\d{6,}\b", "", t)  # ids and long numbers
    t = re.sub(r"\S+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)\b", "", t)  # file names
    t = re.sub(r"[\"']{2,}", '"', t)
    t = re.sub(r"\.{2,}", " ", t)
    t = _BAD_PUNCT.sub(" ", t)
    t = re.sub(r"\s+\.\s+", " ", t)
    if len(re.findall(r"[-_]", t)) > 3:  # this-is-a-slug / this_is_a_file_name
        t = re.sub(r"[-_]", " ", t)
    t = _CODES.sub(" ", t)  # product codes: jc6640, 6640vc231, j2d1a2a
    t = _SPAM.sub("", t)
    t = re.sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", "", t)  # sizes 1920x1080
    t = re.sub(r"\b\s+:\s+", ": ", t)
    t = re.sub(r"(\D[,./])\b", r"\1 ", t)
    t = re.sub(r"\s+", " ", t).strip()
    t = re.sub(r"^[\"']([\w\W]+)[\"']$", r"\1", t)
    t = re.sub(r"^['_,\-:;]|['_,\-:+]$", "", t)
    t = re.sub(r"^\.\S+$", "", t)
    return t.strip()


def clean_caption(text: str) -> str:
    """MicroDiT's caption cleaner (its `datasets/captions.py`, DeepFloyd-IF's `clean_caption`), applied twice as
    there: lower-case; URLs, HTML, @handles, CJK, IPs, ids, file names, product codes, shop spam, sizes removed;
    dashes and quotes unified; stray punctuation and whitespace collapsed."""
    return _clean_once(_clean_once(text))


# --------------------------------------------------------------------------------------------------- the world


def write_world_folder(out: str | Path, n: int, *, seed: int = 0, resolution: int = 32, backgrounds=(),
                       captions: str = "long", max_objects: int = 3, scan: int | None = None) -> list[str]:
    """The world as a `sidecar` folder: PNG + .txt caption per item, keeping only the first `n` world items (in
    index order) whose background is in `backgrounds` (all when empty) — a "style" subset of the pre-training world
    for fine-tuning (ImageNet-T2I §5: fine-tune on task-specific data). Keys are `world_key`s. Returns them."""
    bad = [b for b in backgrounds if b not in BACKGROUNDS]
    if bad:
        raise ValueError(f"unknown world background(s) {bad}; choose among {', '.join(BACKGROUNDS)}")
    out, total = Path(out), 8 * n + 64
    limit = scan or 64 * max(n, 1)
    while True:  # item i depends only on (seed, i): render a prefix of the world, keep its subset, grow if short
        images, texts, scenes = make_dataset(min(total, limit), seed=seed, resolution=resolution, captions=captions,
                                             max_objects=max_objects)
        picked = [i for i, s in enumerate(scenes) if not backgrounds or s.background in backgrounds][:n]
        if len(picked) == n or total >= limit:
            break
        total *= 2
    keys = []
    for i in picked:
        key = world_key(seed, i)
        stem = out / key.replace("/", "_")
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="PNG")
        atomic_write_bytes(stem.with_suffix(".png"), buf.getvalue())
        atomic_write_text(stem.with_suffix(".txt"), texts[i] + "\n")
        keys.append(key)
    if len(keys) < n:
        raise ValueError(f"only {len(keys)} of the first {limit} world items have background {list(backgrounds)}")
    return keys


def world_key(seed: int, i: int) -> str:
    """The key of world item i (the keys `microt2i caption --source world` writes)."""
    return f"world-{seed}/{i:07d}"


def hash_key(key: str) -> int:
    """A stable integer of a sample key (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
