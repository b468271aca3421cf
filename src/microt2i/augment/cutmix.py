"""CutMix image augmentation (paper 000 §2.2, App. E; the original code: reference/anchors.md §3.5).

Offline: every source image i gets `times` composites, k = i·times + j. Composite k pastes a partner image of a
**different class** (the released code may pick the same class; we never do) into the source following one of
the four patterns of App. E, then the world oracle captions the composite and it is encoded like the base set
(codec latents + text tokens) into a Store cached under a key that includes the augmentation parameters. Each
composite's metadata ({"source", "partner", "pattern", "box", "src"}) is what `encoders.captioner.LlavaCaptioner`
takes to caption real composites with the CutMix prompt (App. D).

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
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import CutMixConfig, DataConfig
from ..diffusion.noise import paper_tau_to_sigma

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
    """A uniform random index whose class differs from classes[i]."""
    key = classes[i]
    others = None if _cache is None else _cache.get(key)
    if others is None:
        others = np.flatnonzero(classes != key)
        if _cache is not None:
            _cache[key] = others
    if len(others) == 0:
        raise ValueError(f"CutMix needs images of at least two classes; every image is a {key!r}")
    return int(others[rng.integers(len(others))])


def composite_rng(seed: int, i: int, j: int) -> np.random.Generator:
    """The generator of composite j of source i: partner, pattern, position and caption wording."""
    return np.random.default_rng([seed, 0xC0FFEE, i, j])


def make_composites(images: np.ndarray, scenes: list, cfg: CutMixConfig, *, captions: str = "long",
                    sources=None) -> tuple[np.ndarray, list[str], list[dict]]:
    """Composites k = i·times + j of the sources (all by default), their oracle captions and metadata
    (source, partner, pattern, box, src). A pure function of (images, scenes, cfg, k)."""
    from ..world.scenes import cutmix_caption

    classes = np.array([s.main.cls for s in scenes])
    sources = range(len(images)) if sources is None else sources
    S, cache = images.shape[1], {}
    out, texts, meta = [], [], []
    for i in sources:
        for j in range(cfg.times):
            rng = composite_rng(cfg.seed, i, j)
            partner = choose_partner(i, classes, rng, cache)
            cm = sample_box(cfg.setting, S, rng)
            out.append(paste(images[i], images[partner], cm))
            texts.append(cutmix_caption(scenes[i], scenes[partner], cm.normalised(S), cm.src, rng, captions=captions))
            meta.append({"source": int(i), "partner": partner, "pattern": cm.pattern, "box": list(cm.box),
                         "src": list(cm.src)})
    return np.stack(out) if out else np.empty((0, *images.shape[1:]), np.uint8), texts, meta


# ---------------------------------------------------------------------------------------------------------------
# Training-time selection (Algorithm 1)


def ia_gate(sigma: torch.Tensor, tau: float, p: float, *, generator=None) -> torch.Tensor:
    """[B] bool: sample b takes its augmented twin iff σ_b > σ(τ) (τ on the paper's 1000-step linear-ᾱ scale,
    `noise.paper_tau_to_sigma`) and Bernoulli(p) fires (Eq. 3). One uniform is drawn per sample either way."""
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
    from ..data.store import cache_key

    d = {"data": cache_key(data_cfg), "setting": cfg.setting, "times": cfg.times, "seed": cfg.seed,
         "format_version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cutmix_path(data_cfg: DataConfig, cfg: CutMixConfig) -> Path:
    from ..data.store import cache_root

    return cache_root(data_cfg) / "stores" / f"cutmix-{cutmix_key(data_cfg, cfg)}"


def build_cutmix_store(data_cfg: DataConfig, cfg: CutMixConfig, make_encoders, *, chunk: int = 512, log=print,
                       stop_after_chunks: int | None = None):
    """The cached composite Store for (data_cfg, cfg), else build it: composites of `chunk` sources at a time are
    encoded and saved under `<path>.parts/`, so an interrupted build resumes at its first missing chunk; the parts
    are merged into `<path>.safetensors` at the end. `stop_after_chunks` interrupts on purpose (tests).
    Returns None when stopped early."""
    from ..data.store import Store, encode_set, load_store, save_store
    from ..world import make_dataset

    if data_cfg.source != "world":
        raise ValueError(f"microt2i cutmix builds composites of the embedded world; data.source={data_cfg.source!r} "
                         f"needs the ImageNet data engine")
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
