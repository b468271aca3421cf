"""Precomputed training data: codec latents + text-encoder token states, cached on disk under a cache key.

The key hashes everything that changes the tensors (source, resolution, captions, codec, text encoder, length,
seed), so a changed setting never reads a stale cache. Files are written atomically; a half-written cache is
never picked up. (The sharded, resumable store for ImageNet-sized data builds on this format.)
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

from ..config import DataConfig
from ..diffusion.guidance import null_text
from ..io import atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1


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

    def batch(self, idx, device="cpu") -> dict:
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
    d.pop("cache_dir", None)
    d["format_version"] = FORMAT_VERSION
    if data_cfg.codec == "world-vae":  # the shipped VAE can be retrained: key on its config (holds scaling_factor)
        from ..world.vae import WORLD_VAE_DIR

        cfg_file = WORLD_VAE_DIR / "config.json"
        d["codec_config"] = cfg_file.read_text() if cfg_file.exists() else ""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_store(store: Store, path: str | os.PathLike) -> None:
    path = Path(path)
    tensors = {"latents": store.latents.contiguous(), "text_tokens": store.text_tokens.contiguous(),
               "text_mask": store.text_mask.to(torch.uint8).contiguous(),
               "empty_tokens": store.empty_tokens.contiguous(), "empty_mask": store.empty_mask.to(torch.uint8).contiguous()}
    atomic_write_text(path.with_suffix(".json"), json.dumps({"meta": store.meta, "captions": store.captions}))
    atomic_write_bytes(path.with_suffix(".safetensors"), save(tensors))  # written last: its presence marks done


def load_store(path: str | os.PathLike) -> Store:
    path = Path(path)
    t = load_file(str(path.with_suffix(".safetensors")))
    j = json.loads(path.with_suffix(".json").read_text())
    return Store(t["latents"], t["text_tokens"], t["text_mask"].bool(), j["captions"], j["meta"],
                 t["empty_tokens"], t["empty_mask"].bool())


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float [N, 3, H, W] in [−1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [−1, 1] → uint8 [N, H, W, 3]."""
    x = (x.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def build_store(data_cfg: DataConfig, codec, text_encoder, *, batch_size: int = 256, log=print) -> Store:
    from ..world import make_dataset

    log(f"[data] rendering {data_cfg.num_images} world images at {data_cfg.resolution}px ({data_cfg.captions} captions)")
    images, captions, _ = make_dataset(data_cfg.num_images, seed=data_cfg.seed, resolution=data_cfg.resolution,
                                       captions=data_cfg.captions, max_objects=data_cfg.max_objects)
    latents = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            latents.append(codec.encode(images_to_tensor(images[i:i + batch_size])).float().cpu())
    log(f"[data] encoding {len(captions)} captions with {data_cfg.text_encoder}")
    emb = text_encoder.encode(captions)
    empty = text_encoder.encode([""])
    meta = {"key": cache_key(data_cfg), "data": dataclasses.asdict(data_cfg), "codec": getattr(codec, "name", "?"),
            "text_dim": int(emb.tokens.shape[-1]), "format_version": FORMAT_VERSION}
    return Store(torch.cat(latents), emb.tokens.to(torch.float16).cpu(), emb.mask.cpu(), list(captions), meta,
                 empty.tokens.to(torch.float16).cpu(), empty.mask.cpu())


def load_or_build(data_cfg: DataConfig, make_encoders, *, log=print) -> Store:
    """The cached store for `data_cfg`, else build it with `make_encoders() -> (codec, text_encoder)` and cache it."""
    path = cache_root(data_cfg) / "stores" / f"world-{cache_key(data_cfg)}"
    if path.with_suffix(".safetensors").exists():
        log(f"[data] cached store {path}.safetensors")
        return load_store(path)
    codec, text_encoder = make_encoders()
    store = build_store(data_cfg, codec, text_encoder, log=log)
    save_store(store, path)
    return store
