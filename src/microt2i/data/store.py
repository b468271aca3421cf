"""Precomputed training data: codec latents + text-encoder token states, cached on disk under a cache key.

Two stores with one interface (`len`, `batch(idx, device, generator=)`, `null_text`, `captions`, `text_tokens.shape`):
- `Store`: the embedded world in one safetensors file, built on first use (`load_or_build`).
- `ShardedStore`: ImageNet-sized data (DESIGN §4, ecosystem.md §5): fixed-size safetensors shards written by
  `microt2i precompute` (data/precompute.py), each with a JSON sidecar (count, shapes, sha256, keys, captions), a
  `plan.json` holding the cache key and a `manifest.json` once every shard is done. Shards are read by memory map.
  Latents are the VAE posterior mean+std, re-sampled z = mean + std·ε at every step (CAD-I's `vae_sample`), or one
  posterior sample (MicroDiT); text is stored as encoder states or as token ids encoded on the fly.

The key hashes everything that changes the tensors (source, resolution, captions, codec, text encoder, length,
seed), so a changed setting never reads a stale cache. Files are written atomically; a half-written cache is
never picked up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..config import ConfigError, DataConfig
from ..encoders.text import null_text
from ..io import atomic_write_bytes, atomic_write_text, file_sha256
from ..world.pixels import images_to_tensor
from ..encoders.hub import resolve_pretrained
from ..encoders.text import local_folder
from ..world import make_dataset
from ..world.vae import WORLD_VAE_DIR

FORMAT_VERSION = 1
_NOT_IN_WORLD_KEY = ("cache_dir", "store_dir", "root", "split", "labels_file", "caption_file", "latent_mode",
                     "text_store", "store_dtype", "shard_size", "min_resolution", "clean_captions", "image_column",
                     "caption_column", "mix", "repa_teacher", "val_fraction", "buckets", "bucket_pixels")


@dataclass
class Store:
    latents: torch.Tensor  # [N, C, H, W] float32, codec-normalised
    text_tokens: torch.Tensor  # [N, L, D] float16
    text_mask: torch.Tensor  # [N, L] bool, True = real token
    captions: list[str]
    meta: dict
    empty_tokens: torch.Tensor  # [1, L, D] encoding of "" (CAD-I's unconditional caption)
    empty_mask: torch.Tensor  # [1, L]

    def __len__(self) -> int:
        return self.latents.shape[0]

    def null_text(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional caption [1, L, D], [1, L] for `objective.uncond` = "zero" or "empty"."""
        return null_text(mode, self.empty_tokens, self.empty_mask)

    def batch(self, idx, device="cpu", *, generator: torch.Generator | None = None) -> dict:
        """Training tensors for samples `idx`; `generator` is unused (world latents are stored, not re-sampled)."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return {
            "x0": self.latents[idx].to(device, torch.float32),
            "text_tokens": self.text_tokens[idx].to(device, torch.float32),
            "text_mask": self.text_mask[idx].to(device),
        }


def cache_root(data_cfg: DataConfig | None = None) -> Path:
    root = (data_cfg.cache_dir if data_cfg else "") or os.environ.get("MICROT2I_CACHE", "")
    return Path(root or Path.home() / ".cache" / "microt2i")


def cache_key(data_cfg: DataConfig) -> str:
    d = dataclasses.asdict(data_cfg)
    for name in _NOT_IN_WORLD_KEY:  # where / how it is read, or settings only the sharded store uses
        d.pop(name, None)
    d["format_version"] = FORMAT_VERSION
    if d.get("latent_norm") == "scaling":  # the default before the field existed: earlier caches keep their key
        d.pop("latent_norm")
    if data_cfg.codec == "world-vae":  # the shipped VAE can be retrained: key on its config (holds scaling_factor)

        cfg_file = WORLD_VAE_DIR / "config.json"
        d["codec_config"] = cfg_file.read_text() if cfg_file.exists() else ""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_store(store: Store, path: str | os.PathLike) -> None:
    path = Path(path)
    tensors = {"latents": store.latents.contiguous(), "text_tokens": store.text_tokens.contiguous(),
               "text_mask": store.text_mask.to(torch.uint8).contiguous(),
               "empty_tokens": store.empty_tokens.contiguous(), "empty_mask": store.empty_mask.to(torch.uint8).contiguous()}
    data = save(tensors)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"meta": store.meta, "captions": store.captions,
                                                             "sha256": hashlib.sha256(data).hexdigest()}))
    atomic_write_bytes(path.with_suffix(".safetensors"), data)  # written last: its presence marks done


def load_store(path: str | os.PathLike) -> Store:
    """A `save_store` file, its SHA-256 checked (flipped bytes raise ValueError: a cache is then rebuilt)."""
    path = Path(path)
    j = json.loads(path.with_suffix(".json").read_text())
    if j.get("sha256") and file_sha256(path.with_suffix(".safetensors")) != j["sha256"]:
        raise ValueError(f"{path.with_suffix('.safetensors')}: checksum mismatch (flipped bytes or rewritten)")
    t = load_file(str(path.with_suffix(".safetensors")))
    return Store(t["latents"], t["text_tokens"], t["text_mask"].bool(), j["captions"], j["meta"],
                 t["empty_tokens"], t["empty_mask"].bool())


def encode_set(images: np.ndarray, captions: list[str], codec, text_encoder, batch_size: int = 256):
    """(latents [N, C, h, w] float32, text tokens [N, L, D] float16, mask [N, L]) of uint8 images and captions, on
    the CPU; images go through the codec `batch_size` at a time."""
    with torch.no_grad():
        latents = torch.cat([codec.encode(images_to_tensor(images[i:i + batch_size])).float().cpu()
                             for i in range(0, len(images), batch_size)])
    emb = text_encoder.encode(captions)
    return latents, emb.tokens.to(torch.float16).cpu(), emb.mask.cpu()


def build_store(data_cfg: DataConfig, codec, text_encoder, *, batch_size: int = 256, log=print) -> Store:
    log(f"[data] rendering {data_cfg.num_images} world images at {data_cfg.resolution}px ({data_cfg.captions} captions)")
    images, captions, _ = make_dataset(data_cfg.num_images, seed=data_cfg.seed, resolution=data_cfg.resolution,
                                       captions=data_cfg.captions, max_objects=data_cfg.max_objects)
    log(f"[data] encoding {len(images)} images and their captions with {data_cfg.text_encoder}")
    latents, tokens, mask = encode_set(images, captions, codec, text_encoder, batch_size)
    empty = text_encoder.encode([""])
    meta = {"key": cache_key(data_cfg), "data": dataclasses.asdict(data_cfg), "codec": getattr(codec, "name", "?"),
            "text_dim": int(tokens.shape[-1]), "format_version": FORMAT_VERSION}
    return Store(latents, tokens, mask, list(captions), meta, empty.tokens.to(torch.float16).cpu(), empty.mask.cpu())


def load_or_build(data_cfg: DataConfig, make_encoders, *, log=print) -> Store:
    """The cached store for `data_cfg`, else build it with `make_encoders() -> (codec, text_encoder)` and cache it."""
    path = cache_root(data_cfg) / "stores" / f"world-{cache_key(data_cfg)}"
    if path.with_suffix(".safetensors").exists():
        log(f"[data] cached store {path}.safetensors")
        try:
            return load_store(path)
        except Exception as e:  # a damaged cache (disk error, hand-edited): it is only a cache, so rebuild it
            log(f"[data] cached store {path}.safetensors is unreadable ({type(e).__name__}: {e}); rebuilding it")
    codec, text_encoder = make_encoders()
    store = build_store(data_cfg, codec, text_encoder, log=log)
    save_store(store, path)
    return store


# ---------------------------------------------------------------------------------------------------------------
# Sharded store (ImageNet-sized data; written by data/precompute.py)

SHARDED_FORMAT_VERSION = 1
PLAN, MANIFEST, EMPTY = "plan.json", "manifest.json", "empty.safetensors"
# the cache-key fields a training config must agree on with the store it reads (the rest describe the content)
CONFIG_KEY_FIELDS = ("source", "split", "resolution", "captions", "num_images", "max_objects", "codec",
                     "latent_norm", "codec_revision", "text_encoder", "text_revision", "text_len", "text_store",
                     "latent_mode", "store_dtype", "seed", "augment", "format_version", "buckets")
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


class StoreMismatchError(ConfigError):
    """A store was built with other settings than the config asks for; the message names both and the fix."""


class StoreDamagedError(ValueError):
    """A shard file differs from the store's manifest (truncated, rewritten); the message names it and the fix."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def model_revision(spec: str, what: str) -> str:
    """A revision for codec / text-encoder `spec` that needs no model load: the hub snapshot's commit, else a hash
    of the folder's config.json and its weight files' names and sizes ("pixel" for the identity codec)."""
    if spec == "pixel":
        return "pixel"
    if spec == "world-vae":
        folder = WORLD_VAE_DIR
    elif what == "text encoder":
        folder = local_folder(spec)
    else:
        folder = resolve_pretrained(spec, what=what)
    folder = Path(folder)
    if folder.parent.name == "snapshots":
        return folder.name
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        openclip = f.name.startswith("open_clip_")  # an OpenCLIP checkpoint (encoders/openclip.py)
        if f.is_file() and (f.name == "config.json" or f.suffix == ".safetensors" or openclip):
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}\n".encode())
            if f.name in ("config.json", "open_clip_config.json"):
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


def store_key(data_cfg: DataConfig, augment: dict | None = None, buckets: list | None = None) -> dict:
    """The config-derived cache-key fields of a sharded store (`CONFIG_KEY_FIELDS`); with `data.buckets`, `buckets`
    is the run's pixel bucket list (`data.buckets.run_buckets`), keyed as [[h, w], …] (absent otherwise, so square
    stores keep their key)."""
    d = dataclasses.asdict(data_cfg)
    key = {k: d[k] for k in CONFIG_KEY_FIELDS if k in d}
    key.pop("buckets", None)
    if data_cfg.buckets:
        if buckets is None:
            raise ValueError("a bucketed store's key needs the run's bucket list: store_key(data, buckets="
                             "run_buckets(run_cfg))")
        key["buckets"] = [[int(h), int(w)] for h, w in buckets]
    if data_cfg.source != "world":  # world-only settings do not change a real dataset's tensors
        key.pop("num_images"), key.pop("max_objects")
    if key.get("latent_norm") == "scaling":  # the default before the field existed: earlier stores keep their key
        key.pop("latent_norm")
    key["codec_revision"] = model_revision(data_cfg.codec, "VAE")
    key["text_revision"] = model_revision(data_cfg.text_encoder, "text encoder")
    key["augment"] = augment or {}
    key["format_version"] = SHARDED_FORMAT_VERSION
    return key


def key_hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def check_store_key(store_dir: str | os.PathLike, stored: dict, expected: dict) -> None:
    """Refuse a store whose config-derived key differs from `expected`, naming each differing field."""
    diff = [k for k in CONFIG_KEY_FIELDS if stored.get(k) != expected.get(k)]
    if not diff:
        return
    lines = "; ".join(f"data.{k}: the store has {stored.get(k)!r}, the config asks for {expected.get(k)!r}"
                      for k in diff)
    raise StoreMismatchError(
        f"the store {store_dir} was built with other settings ({lines}). Either train with the store's settings, or "
        f"run `microt2i precompute` with this config into a new data.store_dir (a stale cache is never reused)")


def write_shard(store_dir: str | os.PathLike, index: int, tensors: dict[str, torch.Tensor], records: list[dict],
                extra: dict | None = None) -> dict:
    """Write shard `index` atomically: the safetensors file, then its JSON sidecar, whose presence marks it done.

    `records` holds one dict per sample (key, caption, label); `extra` goes into the sidecar (e.g. skipped files)."""
    store_dir = Path(store_dir)
    count = len(records)
    for name, t in tensors.items():
        if t.shape[0] != count:
            raise ValueError(f"shard {index}: tensor {name} has {t.shape[0]} rows for {count} records")
    data = save({k: v.contiguous() for k, v in tensors.items()})
    info = {"index": index, "count": count, "sha256": hashlib.sha256(data).hexdigest(),
            "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                        for k, v in tensors.items()},
            "records": records, **(extra or {})}
    atomic_write_bytes(store_dir / f"{shard_name(index)}.safetensors", data)
    atomic_write_text(store_dir / f"{shard_name(index)}.json", json.dumps(info))
    return info


def shard_info(store_dir: str | os.PathLike, index: int) -> dict | None:
    """The sidecar of a finished shard, or None (not written yet, or the data file is missing)."""
    store_dir = Path(store_dir)
    side = store_dir / f"{shard_name(index)}.json"
    if not side.is_file() or not (store_dir / f"{shard_name(index)}.safetensors").is_file():
        return None
    return json.loads(side.read_text())


def finalize_store(store_dir: str | os.PathLike) -> dict | None:
    """Write manifest.json once every planned shard is done (idempotent); None while shards are missing."""
    store_dir = Path(store_dir)
    plan = json.loads((store_dir / PLAN).read_text())
    infos = [shard_info(store_dir, i) for i in range(plan["num_shards"])]
    if any(i is None for i in infos):
        return None
    shards = [{k: i[k] for k in ("index", "count", "sha256", "tensors")} for i in infos]
    skipped: dict[str, int] = {}
    for i in infos:
        for reason, n in i.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    manifest = {**plan, "count": sum(s["count"] for s in shards), "text_dim": infos[0]["text_dim"], "shards": shards,
                "skipped": skipped}
    if "latent_buckets" in infos[0]:  # a bucketed store (data.buckets): the latent (h, w) of each bucket index
        manifest["latent_buckets"] = infos[0]["latent_buckets"]
    atomic_write_text(store_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(path.stat().st_size - 8, 100 << 20):  # a foreign file: never allocate its length
            raise ValueError(f"{path.name}: header length {n} does not fit the file; not a safetensors file")
        return json.loads(f.read(n)), 8 + n


def _mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only numpy view of one memory map (no copy, no full read)."""
    header, start = _header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        b, e = h["data_offsets"]
        out[name] = raw[start + b:start + e].view(_NP_DTYPES[h["dtype"]]).reshape(h["shape"])
    return out


def verify_store(store_dir: str | os.PathLike) -> list[str]:
    """Check every shard against the manifest: present, sha256, tensor names, dtypes, shapes and row counts.
    Returns the problems found (empty = the store is sound)."""
    store_dir = Path(store_dir)
    if not (store_dir / MANIFEST).is_file():
        if not (store_dir / PLAN).is_file():
            return [f"{store_dir} is not a store (no {PLAN}); build it with `microt2i precompute`"]
        plan = json.loads((store_dir / PLAN).read_text())
        missing = [i for i in range(plan["num_shards"]) if shard_info(store_dir, i) is None]
        return [f"{len(missing)} of {plan['num_shards']} shards not done (e.g. {shard_name(missing[0])}); "
                f"re-run `microt2i precompute` (finished shards are skipped)"]
    manifest = json.loads((store_dir / MANIFEST).read_text())
    problems = []
    for s in manifest["shards"]:
        path = store_dir / f"{shard_name(s['index'])}.safetensors"
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        if file_sha256(path) != s["sha256"]:
            problems.append(f"{path.name}: checksum mismatch (corrupt or rewritten)")
            continue
        problems += _layout_problems(path, s)
    return problems


def _layout_problems(path: Path, entry: dict) -> list[str]:
    """What differs between shard file `path` and its manifest `entry`: size, tensor names, dtypes, shapes, rows
    (no checksum: cheap enough to run whenever a shard is opened)."""
    try:
        header, start = _header(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return [f"{path.name}: unreadable safetensors header (truncated or not a shard)"]
    header.pop("__metadata__", None)
    end = start + max((h["data_offsets"][1] for h in header.values()), default=0)
    if path.stat().st_size != end:
        return [f"{path.name}: {path.stat().st_size} bytes, its header needs {end} (truncated or rewritten)"]
    problems = []
    if set(header) != set(entry["tensors"]):
        problems.append(f"{path.name}: tensors {sorted(header)} != manifest {sorted(entry['tensors'])}")
    for name, t in entry["tensors"].items():
        got = header.get(name, {})
        dtype = np.dtype(_NP_DTYPES[got["dtype"]]).name if got.get("dtype") in _NP_DTYPES else got.get("dtype")
        if got and (dtype != t["dtype"] or got["shape"] != t["shape"] or got["shape"][0] != entry["count"]):
            problems.append(f"{path.name}: {name} is {dtype}{got['shape']}, manifest says {t['dtype']}{t['shape']} "
                            f"with {entry['count']} rows")
    return problems


def encode_ids(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token states [B, L, D] float32 of stored token ids: the on-the-fly text path (`data.text_store=ids`)."""
    with torch.no_grad():
        out = text_encoder.model(input_ids=ids.to(text_encoder.device).long(),
                                 attention_mask=mask.to(text_encoder.device).long())
    return out.last_hidden_state.float()


class _Column:
    """A virtual [N, ...] tensor over the shards: `.shape`, `len`, and `col[idx]` gathers rows (like Store fields)."""

    def __init__(self, shape: tuple, dtype: torch.dtype, fetch):
        self.shape, self.dtype, self._fetch = torch.Size(shape), dtype, fetch

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = np.arange(self.shape[0])[idx]
        return self._fetch(np.atleast_1d(np.asarray(idx)))


def _to_device(x: torch.Tensor, device) -> torch.Tensor:
    return x.to(device, non_blocking=x.is_pinned())


class ShardedStore:
    """Read a finished sharded store by memory map. `read(idx)` does the I/O (numpy rows, what loader workers run);
    `to_batch(rows, device, generator)` turns rows into training tensors (latent re-sampling, on-the-fly text
    encoding); `batch(idx, device, generator=)` is both, with `Store.batch`'s keys plus "label"."""

    def __init__(self, store_dir: str | os.PathLike):
        self.dir = Path(store_dir)
        if not (self.dir / MANIFEST).is_file():
            problems = verify_store(self.dir)
            raise FileNotFoundError(f"{self.dir} is not a finished store: {problems[0] if problems else 'no manifest'}")
        self.manifest = json.loads((self.dir / MANIFEST).read_text())
        self.meta = self.manifest
        self.key = self.manifest["key"]
        counts = [s["count"] for s in self.manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.text_mode = self.manifest["fields"]["text_store"]
        self.latent_mode = self.manifest["fields"]["latent_mode"]
        self.text_encoder = None  # needed for text_mode == "ids": attach_text_encoder
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._records: list[dict] | None = None
        first = next((s["tensors"] for s in self.manifest["shards"] if s["count"]), None)
        if first is None:
            raise ValueError(f"the store {self.dir} holds no samples (every image was skipped?); see the skipped "
                             f"counts in its shard sidecars")
        n = len(self)
        # a bucketed store (data.buckets) keeps each latent [C, h, w] flattened into [C, P] (P = the largest bucket's
        # h·w, zero-padded), `bucket` its index in latent_buckets; to_batch reshapes a single-bucket batch
        self.latent_buckets = [tuple(b) for b in self.manifest.get("latent_buckets", [])] or None
        shape = first["latents"]["shape"][1:]
        if self.latent_buckets:
            h, w = max(self.latent_buckets, key=lambda b: (b[0] * b[1], b[0] == b[1]))
            shape = [shape[0], h, w]  # the shape of the largest (the square) bucket
        self.latents = _Column((n, *shape), torch.float32, (lambda i: self.batch(i)["x0"]) if self.latent_buckets else
                               lambda i: torch.from_numpy(self.read(i, ("latents",))["latents"]).float())
        self.text_mask = _Column((n, *first["text_mask"]["shape"][1:]), torch.bool,
                                 lambda i: torch.from_numpy(self.read(i, ("text_mask",))["text_mask"]).bool())
        text_len = first["text_mask"]["shape"][1]
        self.text_tokens = _Column((n, text_len, self.manifest["text_dim"]), torch.float32,
                                   lambda i: self.batch(i)["text_tokens"])
        empty = load_file(str(self.dir / EMPTY))
        self.empty_mask = empty["mask"].bool()
        self._empty = empty

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def bucket_of(self) -> np.ndarray | None:
        """Each sample's bucket index into `latent_buckets` (int64 [N]); None for a square store."""
        if not self.latent_buckets:
            return None
        return self.read(np.arange(len(self)), ("bucket",))["bucket"].astype(np.int64)

    def __getstate__(self):  # loader workers (spawn) reopen the memory maps themselves
        state = dict(self.__dict__)
        state["_maps"], state["text_encoder"] = {}, None
        return state

    def attach_text_encoder(self, text_encoder) -> None:
        """The encoder that turns stored token ids into states (`data.text_store=ids`); must be the store's."""
        self.text_encoder = text_encoder

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._maps:
            path = self.dir / f"{shard_name(s)}.safetensors"
            entry = self.manifest["shards"][s]
            problems = _layout_problems(path, entry) if path.is_file() else [f"{path.name}: missing"]
            if not problems and entry.get("sha256") and file_sha256(path) != entry["sha256"]:  # once per process
                problems = [f"{path.name}: checksum mismatch (flipped bytes or rewritten)"]
            if problems:  # a damaged shard never reaches training as garbage rows
                raise StoreDamagedError(
                    f"the store {self.dir} is damaged: {'; '.join(problems)}. Run `microt2i precompute --verify` on it, "
                    f"delete the damaged shards' .safetensors and .json files, and re-run `microt2i precompute` with "
                    f"the same config (it rewrites only those shards)")
            self._maps[s] = _mmap_safetensors(path)
        return self._maps[s]

    def read(self, idx, names: tuple[str, ...] | None = None, alloc=np.empty) -> dict[str, np.ndarray]:
        """Rows `idx` of the stored tensors (all, or `names`), gathered shard by shard in sorted order, returned in
        `idx` order. `alloc(shape, dtype)` makes the outputs (loader workers gather straight into shared memory)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)}) in the store {self.dir}")
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            local = idx[sel] - self.offsets[s]
            order = np.argsort(local, kind="stable")
            for name, arr in self._shard(int(s)).items():
                if names is not None and name not in names:
                    continue
                if name not in out:
                    out[name] = alloc((len(idx), *arr.shape[1:]), arr.dtype)
                out[name][sel[order]] = arr[local[order]]
        return out

    def to_batch(self, rows: dict, device="cpu", generator: torch.Generator | None = None) -> dict:
        """Training tensors from `read` rows (numpy or tensors): z = mean + std·ε when the store holds the posterior
        and a generator is given (CAD-I re-samples every step), else the stored latents."""
        # stored dtype over the bus (fp16: half the bytes), asynchronously from a loader's pinned rows; cast on device
        t = {k: _to_device(torch.as_tensor(v), device) for k, v in rows.items()}
        if self.latent_buckets:
            t = self._unflatten(t)
        x0 = t["latents"].float()
        if "latents_std" in t and generator is not None:
            eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(device)
            x0 = x0 + t["latents_std"].float() * eps
        mask = t["text_mask"].bool()
        if self.text_mode == "ids":
            if self.text_encoder is None:
                raise RuntimeError(f"the store {self.dir} holds token ids (data.text_store=ids): attach the text "
                                   f"encoder {self.manifest['fields']['text_encoder']!r} with "
                                   f"store.attach_text_encoder(...)")
            tokens = encode_ids(self.text_encoder, t["text_ids"], mask).to(device)
        else:
            tokens = t["text_tokens"].float()
        return {"x0": x0, "text_tokens": tokens, "text_mask": mask, "label": t["labels"]}

    def batch(self, idx, device="cpu", *, generator: torch.Generator | None = None) -> dict:
        return self.to_batch(self.read(idx), device, generator)

    def _unflatten(self, t: dict) -> dict:
        """Bucketed rows → latents [n, C, h, w] of their one bucket (a mixed batch is refused: never padded)."""
        b = t.pop("bucket").cpu()
        if len(b) == 0:
            return t
        if not bool((b == b[0]).all()):
            raise ValueError(f"a batch from the bucketed store {self.dir} mixes buckets {sorted(set(b.tolist()))}: "
                             f"draw batches with data.buckets.BucketPositions (train with data.buckets=true)")
        h, w = self.latent_buckets[int(b[0])]
        for k in ("latents", "latents_std"):
            if k in t:
                t[k] = t[k][:, :, :h * w].reshape(*t[k].shape[:2], h, w)
        return t

    def null_text(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional caption [1, L, D], [1, L] ("zero" or "empty", as `Store.null_text`)."""
        if "tokens" in self._empty:
            tokens = self._empty["tokens"]
        elif mode == "empty":
            if self.text_encoder is None:
                raise RuntimeError("null_text('empty') of an ids store needs its text encoder: "
                                   "store.attach_text_encoder(...)")
            tokens = encode_ids(self.text_encoder, self._empty["ids"], self.empty_mask).cpu()
        else:
            tokens = torch.zeros(1, self.empty_mask.shape[1], self.manifest["text_dim"])
        return null_text(mode, tokens, self.empty_mask)

    def _all_records(self) -> list[dict]:
        if self._records is None:
            self._records = [r for s in self.manifest["shards"] for r in shard_info(self.dir, s["index"])["records"]]
        return self._records

    @property
    def records(self) -> list[dict]:
        """Every sample's sidecar record ({"key", "caption", "label", ...}), in store order."""
        return self._all_records()

    @property
    def captions(self) -> list[str]:
        return [r["caption"] for r in self._all_records()]

    @property
    def keys(self) -> list[str]:
        return [r["key"] for r in self._all_records()]


def open_store(store_dir: str | os.PathLike, expected: dict | None = None) -> ShardedStore:
    """Open a finished sharded store; with `expected` (from `store_key`) refuse one built with other settings."""
    store = ShardedStore(store_dir)
    if expected is not None:
        check_store_key(store_dir, store.manifest["fields"], expected)
    return store
