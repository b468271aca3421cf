"""A small fabricated ImageNet tree in the real layout, with the odd files real ImageNet holds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

TENCH, GOLDFISH = "n01440764", "n01443537"  # class indices 0 and 1


def _rgb(rng, w, h) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_tree(root: Path, *, n_good: int = 4) -> dict:
    """train/<synset>/*.JPEG (RGB of several aspect ratios, greyscale, CMYK, a PNG named .JPEG, an RGBA PNG,
    a zero-byte and a truncated file) and a flat val/ with a labels file. Returns what a reader must find."""
    rng = np.random.default_rng(0)
    tench, gold = root / "train" / TENCH, root / "train" / GOLDFISH
    tench.mkdir(parents=True)
    gold.mkdir(parents=True)
    for i in range(n_good):
        _rgb(rng, 40 + 8 * i, 30 + 4 * i).save(tench / f"{TENCH}_{i}.JPEG", quality=90)
        _rgb(rng, 24, 48).save(gold / f"{GOLDFISH}_{i}.JPEG", quality=90)
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8), "L").save(tench / f"{TENCH}_grey.JPEG")
    _rgb(rng, 32, 32).convert("CMYK").save(tench / f"{TENCH}_cmyk.JPEG")
    _rgb(rng, 32, 40).save(tench / f"{TENCH}_png.JPEG", format="PNG")  # PNG bytes behind a .JPEG name
    rgba = np.concatenate([rng.integers(0, 256, (32, 32, 3)), np.full((32, 32, 1), 128)], -1).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(gold / f"{GOLDFISH}_alpha.png")
    (tench / f"{TENCH}_empty.JPEG").write_bytes(b"")
    buf = io.BytesIO()
    _rgb(rng, 64, 64).save(buf, format="JPEG", quality=95)
    (gold / f"{GOLDFISH}_trunc.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (tench / "notes.txt").write_text("not an image")

    val = root / "val"
    val.mkdir()
    labels = []
    for i, syn in enumerate([TENCH, GOLDFISH, TENCH]):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        _rgb(rng, 50, 30).save(val / name)
        labels.append(f"{name} {syn}")
    (root / "val_labels.txt").write_text("\n".join(labels) + "\n")
    train_images = 2 * n_good + 6  # + grey, cmyk, png, alpha, empty, truncated (notes.txt is not an image)
    return {"train_images": train_images, "train_readable": train_images - 2,
            "skipped": {"empty file": 1, "truncated": 1}}
