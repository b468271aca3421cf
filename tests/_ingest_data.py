"""Tiny fabricated image–caption data sets: WebDataset tar shards (img2dataset layout), an HF dataset on disk, a
sidecar folder. Image i is a flat colour with a size that says what it is, so tests can check every pixel."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def colour(i: int) -> tuple[int, int, int]:
    return (40 * i % 256, 255 - 30 * i % 256, 90)


def encode(i: int, size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour(i)).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def write_shards(folder: Path, per_shard: int = 4, shards: int = 2, *, small=(), bad=(), uncaptioned=()) -> list[Path]:
    """img2dataset-style shards `00000.tar`…: `<key>.jpg`, `<key>.txt`, `<key>.json` per sample; sample i is 20×24
    px (10×12 if i in `small`), its caption "photo number <i>"; `bad` are not images, `uncaptioned` have no text."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for j in range(per_shard):
                i = s * per_shard + j
                key = f"{i:09d}"
                img = b"not a jpeg" if i in bad else encode(i, (10, 12) if i in small else (20, 24))
                files = {f"{key}.jpg": img, f"{key}.json": json.dumps({"key": key, "width": 20}).encode()}
                if i not in uncaptioned:
                    files[f"{key}.txt"] = f"Photo number {i} https://example.com/x.jpg".encode()
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def write_hf(folder: Path, n: int = 6, offset: int = 100) -> Path:
    """A `datasets` Dataset with image + text columns, saved with `save_to_disk`; row r shows colour(offset + r)."""
    import datasets

    rows = {"image": [Image.new("RGB", (24, 20), colour(offset + r)) for r in range(n)],
            "text": [f"A drawing of item {offset + r}" for r in range(n)]}
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return folder


def write_sidecar(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(encode(i, (16, 16), "PNG"))
        if i % 2 == 0:
            (folder / f"img{i}.txt").write_text(f"text caption {i}\n")
        elif i == 1:
            (folder / f"img{i}.json").write_text(json.dumps({"caption": f"json caption {i}", "url": "x"}))
    return folder


def mean_colour(latents: np.ndarray) -> np.ndarray:
    """Mean RGB 0..255 of pixel-codec latents [N, 3, H, W] in [-1, 1]."""
    return (np.asarray(latents, np.float64).mean((2, 3)) + 1) * 127.5
