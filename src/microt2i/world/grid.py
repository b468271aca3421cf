"""The world's fixed-prompt grid and its score: n distinct (class, colour) single-object prompts written as long
captions, and the detector's hit rate on images generated from them (the demo grid, in-training class accuracy and
the time-to-quality experiment all use these)."""

from __future__ import annotations

import numpy as np

from .detect import detect
from .render import paint_background
from .scenes import BACKGROUNDS, CLASSES, COLORS, Scene, long_caption, sample_scene


def grid_scenes(n: int, seed: int) -> list[Scene]:
    """The single-object world scenes of n distinct (class, colour) pairs that `grid_prompts` describes."""
    rng = np.random.default_rng([seed, 7])
    pairs = [(c, k) for c in CLASSES for k in COLORS]
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)]
    return [sample_scene(np.random.default_rng([seed, 11, i]), max_objects=1, classes=[cls], colors=[color])
            for i, (cls, color) in enumerate(chosen)]


def grid_prompts(n: int, seed: int) -> list[dict]:
    """n distinct (class, colour) prompts, each a long caption of a single-object world scene (`grid_scenes`)."""
    return [{"class": scene.main.cls, "color": scene.main.color,
             "prompt": long_caption(scene, np.random.default_rng([seed, 13, i]))}
            for i, scene in enumerate(grid_scenes(n, seed))]


def score_samples(images: np.ndarray, specs: list[dict]) -> tuple[dict, list[dict]]:
    """Detector hit-rate: a sample hits when its largest detection has the prompted class and colour."""
    rows = []
    for img, spec in zip(images, specs):
        dets = detect(img)
        top = dets[0] if dets else None
        rows.append({"prompt_class": spec["class"], "prompt_color": spec["color"],
                     "detected": f"{top.color} {top.cls} ({top.confidence:.2f})" if top else "nothing",
                     "class_ok": bool(top and top.cls == spec["class"]),
                     "color_ok": bool(top and top.color == spec["color"]),
                     "hit": bool(top and top.cls == spec["class"] and top.color == spec["color"])})
    n = max(len(rows), 1)
    metrics = {"hit_rate": sum(r["hit"] for r in rows) / n,
               "class_accuracy": sum(r["class_ok"] for r in rows) / n,
               "color_accuracy": sum(r["color_ok"] for r in rows) / n,
               "chance_hit_rate": 1.0 / (len(CLASSES) * len(COLORS))}
    return metrics, rows


def world_background_share(images: np.ndarray, backgrounds=("slate",)) -> dict:
    """World "style" statistics of uint8 images: each image's border colour (a 2-px frame, where objects rarely are)
    is assigned to the nearest mean colour of the world's backgrounds; returns the share assigned to `backgrounds`,
    the share of every background and the mean border luminance (0–255)."""
    images = np.asarray(images, np.float64)
    h = images.shape[1]
    frame = np.ones((h, h), bool)
    frame[2:-2, 2:-2] = False
    border = images[:, frame].mean(1)  # [N, 3]
    names = list(BACKGROUNDS)
    refs = np.stack([paint_background(b, 64, seed=0).reshape(-1, 3).mean(0) for b in names])
    nearest = np.argmin(((border[:, None] - refs[None]) ** 2).sum(-1), 1)
    shares = {b: float((nearest == i).mean()) for i, b in enumerate(names)}
    return {"share": sum(shares[b] for b in backgrounds), "shares": shares,
            "luminance": float((border @ np.array([0.299, 0.587, 0.114])).mean())}
