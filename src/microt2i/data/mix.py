"""Several stores mixed by weight into one training stream (MicroDiT trains on CC12M, SA-1B, JourneyDB, DiffusionDB
and TextCaps at once, MicroDiT §4).

`MixedStore(stores, weights)` is one Store-like object (`len`, `batch`, `null_text`, `text_tokens.shape`) that the
trainer reads through its usual `ResumableSampler`, so the stream stays a pure function of (seed, images seen):
deterministic and resumable exactly like a single store. Each component keeps its own store folder and cache key.

A mixture of length N is N slots; component c owns a contiguous run of q_c ≈ w_c·N slots (largest remainder), and
slot j of component c holds its sample π_c(j mod n_c) with π_c a fixed permutation drawn from (seed, c). N is the
smallest length at which every component's slots cover all its samples (N = max_c ⌈n_c / w_c⌉, weights normalised),
so one epoch of the trainer's sampler shows the components in the ratio of their weights and no sample is never
seen: an up-weighted store repeats within an epoch, none is truncated.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, DataConfig
from .store import CONFIG_KEY_FIELDS, StoreMismatchError, open_store, store_key


def mixture_quotas(sizes: list[int], weights: list[float]) -> list[int]:
    """Slots per component: the total N = max_c ⌈n_c / w_c⌉ (w normalised) split by largest remainder."""
    if len(sizes) != len(weights) or not sizes:
        raise ValueError(f"a mixture needs one weight per store, got {len(sizes)} stores and {len(weights)} weights")
    if any(n <= 0 for n in sizes) or any(not w > 0 for w in weights):
        raise ValueError(f"every mixed store needs samples and a weight > 0, got sizes {sizes}, weights {weights}")
    w = np.asarray(weights, np.float64) / sum(weights)
    total = max(math.ceil(n / wc - 1e-9) for n, wc in zip(sizes, w))
    exact = w * total
    quotas = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - quotas), kind="stable")[:total - int(quotas.sum())]:
        quotas[c] += 1
    return [int(q) for q in quotas]


class MixedStore:
    """Store-like view of `stores` mixed by `weights` (see the module docstring); `source_of(idx)` says which
    component and sample a mixture index is."""

    def __init__(self, stores: list, weights: list[float], *, seed: int = 0, names: list[str] | None = None):
        self.stores, self.weights = list(stores), [float(w) for w in weights]
        self.names = names or [str(getattr(s, "dir", i)) for i, s in enumerate(self.stores)]
        sizes = [len(s) for s in self.stores]
        self.quotas = mixture_quotas(sizes, self.weights)
        self.offsets = np.concatenate([[0], np.cumsum(self.quotas)]).astype(np.int64)
        shapes = {tuple(s.text_tokens.shape[1:]) for s in self.stores}
        latents = {tuple(s.latents.shape[1:]) for s in self.stores}
        if len(shapes) > 1 or len(latents) > 1:
            raise ValueError(f"mixed stores must share the codec, resolution and text encoder: latents {sorted(latents)},"
                             f" text tokens {sorted(shapes)} differ among {self.names}; precompute them with the same "
                             f"data.codec, data.resolution, data.text_encoder and data.text_len")
        self._perms = [np.random.default_rng([seed, c, 0x6D6978]).permutation(n) for c, n in enumerate(sizes)]
        n, (length, dim) = int(self.offsets[-1]), next(iter(shapes))
        self.text_tokens = _Shape((n, length, dim))
        self.latents = _Shape((n, *next(iter(latents))))
        self.meta = {"mix": [{"store": name, "weight": w, "slots": q, "size": len(s),
                              "key": getattr(s, "key", None) or (getattr(s, "meta", {}) or {}).get("key")}
                             for name, w, q, s in zip(self.names, self.weights, self.quotas, self.stores)]}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def source_of(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """(component, sample index within it) of mixture indices `idx`."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"mixture index out of range [0, {len(self)})")
        comp = np.searchsorted(self.offsets, idx, side="right") - 1
        local = np.empty_like(idx)
        for c in np.unique(comp):
            sel = comp == c
            perm = self._perms[c]
            local[sel] = perm[(idx[sel] - self.offsets[c]) % len(perm)]
        return comp, local

    def batch(self, idx, device="cpu", *, generator: torch.Generator | None = None) -> dict:
        """The components' batches gathered in `idx` order (each re-samples its latents from `generator`)."""
        comp, local = self.source_of(idx)
        parts = {int(c): self.stores[c].batch(local[comp == c], device, generator=generator) for c in np.unique(comp)}
        keys = set.intersection(*(set(p) for p in parts.values()))
        out = {}
        for k in keys:
            first = next(iter(parts.values()))[k]
            t = torch.empty((len(comp), *first.shape[1:]), dtype=first.dtype, device=first.device)
            for c, p in parts.items():
                t[torch.from_numpy(np.nonzero(comp == c)[0]).to(t.device)] = p[k].to(t.dtype)
            out[k] = t
        return out

    def null_text(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The first store's unconditional caption (all share the text encoder, so all agree)."""
        return self.stores[0].null_text(mode)

    @property
    def captions(self) -> list[str]:
        """Captions of mixture slots 0..N-1 (a component's captions repeat where it is up-weighted)."""
        comp, local = self.source_of(np.arange(len(self)))
        caps = [s.captions for s in self.stores]
        return [caps[c][i] for c, i in zip(comp, local)]


class _Shape:
    """Stands in for a [N, ...] tensor where only `.shape` is read (the trainer's shape checks)."""

    def __init__(self, shape):
        self.shape = torch.Size(shape)


def open_mixture(data: DataConfig, *, seed: int = 0, text_encoder=None, log=print) -> MixedStore:
    """The mixture of `data.mix`'s finished stores; each must have been built with the config's codec, resolution
    and text encoder (the fields `store_key` checks, except the source-specific ones). `text_encoder()` makes the
    encoder that stores of token ids (`data.text_store=ids`) need."""
    if not data.mix:
        raise ConfigError("data.mix is empty: list the stores, e.g. data.mix='[{store_dir: a, weight: 2}, "
                          "{store_dir: b, weight: 1}]'")
    expected = store_key(data)
    shared = [k for k in CONFIG_KEY_FIELDS if k not in ("source", "split", "num_images", "max_objects", "captions",
                                                         "seed", "augment")]
    stores = []
    for m in data.mix:
        store = open_store(m.store_dir)
        fields = store.manifest["fields"]
        diff = [f"data.{k}: the store has {fields.get(k)!r}, the config {expected.get(k)!r}" for k in shared
                if k in expected and fields.get(k) != expected.get(k)]
        if diff:
            raise StoreMismatchError(f"the mixed store {m.store_dir} was built with other settings ({'; '.join(diff)});"
                                     f" precompute it with this config's data settings, or change them")
        if store.text_mode == "ids":
            store.attach_text_encoder(text_encoder())
        stores.append(store)
    mix = MixedStore(stores, [m.weight for m in data.mix], seed=seed, names=[str(Path(m.store_dir)) for m in data.mix])
    for row in mix.meta["mix"]:
        log(f"[data] mix: {row['store']} ({row['size']} samples, key {row['key']}) weight {row['weight']:g} → "
            f"{row['slots']} of {len(mix)} slots")
    return mix
