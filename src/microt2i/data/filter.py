"""Filtered dataset builder (MicroDiT §4 "CIFAR-Captions"): keep images whose image–text score for a class prompt
exceeds a threshold, and write the kept set with its scores.

The paper scores web images with CLIP ViT-H-14, averaging the CLIP score over CLIP's eighteen CIFAR prompt
templates ("a photo of a {}."), and keeps those above 0.25 (1.25 % of 120M). Here:
- `clip`: a CLIP model by hub id or folder (eval/clipscore.py loads it); the score of an image for a class is the
  mean over templates of cos(image, text); a labelled image is scored for its own class, an unlabelled one for
  its best class (which becomes its label);
- `world`: the embedded world's rule-based detector stands in for CLIP: the score of a class is the highest
  confidence of a detection of that class (templates do not change a detector's answer).
Output: a JSONL (or TSV) of kept images, `{"key", "label", "class", "score"}` per line, written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..io import atomic_write_text
import torch.nn.functional as F
from .imagenet import IngestReport, try_load
from .precompute import list_items, world_key
from ..encoders.clip import load_image_text_model
from ..world import CLASSES, detect, make_dataset

# CLIP's eighteen CIFAR-10 prompt templates (MicroDiT §4 averages the CLIP score over them)
CIFAR_TEMPLATES = tuple(f"a {q}photo of {a} {{}}." for a in ("a", "the") for q in (
    "", "blurry ", "black and white ", "low contrast ", "high contrast ", "bad ", "good ")) + tuple(
    f"a photo of {a} {s} {{}}." for a in ("a", "the") for s in ("small", "big"))
PAPER_THRESHOLD = 0.25  # CLIP ViT-H-14 score threshold of CIFAR-Captions


def clip_class_scores(images: np.ndarray, classes: Sequence[str], model, templates=CIFAR_TEMPLATES) -> np.ndarray:
    """[N, K] mean over templates of cos(image, template(class)) for `model` (eval.clipscore.ImageTextModel)."""
    img = F.normalize(model.embed_images(images), dim=-1)  # [N, E]
    texts = [t.format(c) for c in classes for t in templates]
    txt = F.normalize(model.embed_texts(texts)[0], dim=-1).view(len(classes), len(templates), -1)
    return (img @ txt.reshape(-1, txt.shape[-1]).T).view(len(images), len(classes), len(templates)).mean(-1).numpy()


def world_class_scores(images: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """[N, K] highest detector confidence of each class in each image (0 when not detected)."""
    out = np.zeros((len(images), len(classes)))
    col = {c: k for k, c in enumerate(classes)}
    for i, img in enumerate(images):
        for d in detect(img):
            if d.cls in col:
                out[i, col[d.cls]] = max(out[i, col[d.cls]], d.confidence)
    return out


def _batches(data: DataConfig, batch_size: int):
    """(images uint8 [n, R, R, 3], keys, labels, class names) per batch; unreadable images are dropped and counted."""
    items = list_items(data)
    report = IngestReport()
    if data.source == "world":
        images, _, scenes = make_dataset(len(items), seed=data.seed, resolution=data.resolution, captions="aio",
                                         max_objects=data.max_objects)
        report.total = report.kept = len(items)
        for i in range(0, len(items), batch_size):
            part = scenes[i:i + batch_size]
            yield (images[i:i + batch_size], [world_key(data.seed, k) for k in items[i:i + batch_size]],
                   [CLASSES.index(s.main.cls) for s in part], [s.main.cls for s in part]), report
        return
    for i in range(0, len(items), batch_size):
        keep, imgs = [], []
        for it in items[i:i + batch_size]:
            img, reason = try_load((str(it.path), data.resolution))
            report.total += 1
            if reason is not None:
                report.add_skip(it.key, reason)
                continue
            report.kept += 1
            keep.append(it)
            imgs.append(img)
        if keep:
            yield (np.stack(imgs), [it.key for it in keep], [it.label for it in keep], [it.name for it in keep]), report


def filter_dataset(data: DataConfig, out: str | Path, *, classes: Sequence[str], scorer: str = "world",
                   threshold: float = PAPER_THRESHOLD, templates: Sequence[str] = CIFAR_TEMPLATES,
                   batch_size: int = 64, device: str = "cpu", log=print) -> dict:
    """Score every image of `data` (world / imagenet / folder) against `classes` and write the kept ones to `out`.

    `scorer` is "world" (the world detector) or a CLIP hub id / folder. A labelled image (its class name is in
    `classes`) is scored for that class; any other image for its best class. Kept iff score > threshold."""
    if not classes:
        raise ValueError("filter needs at least one class name (--classes airplane,car,...)")
    classes = list(classes)
    if scorer == "world":
        score_fn = world_class_scores
    else:
        model = load_image_text_model(scorer, device=device)
        score_fn = lambda imgs, cls: clip_class_scores(imgs, cls, model, templates)  # noqa: E731
    col = {c: k for k, c in enumerate(classes)}
    rows, n, report = [], 0, None
    for (images, keys, labels, names), report in _batches(data, batch_size):
        scores = score_fn(images, classes)
        for i, (key, label, name) in enumerate(zip(keys, labels, names)):
            k = col[name] if name in col else int(scores[i].argmax())
            n += 1
            if scores[i, k] > threshold:
                rows.append({"key": key, "label": label if name in col else k, "class": classes[k],
                             "score": round(float(scores[i, k]), 6)})
    out = Path(out)
    if out.suffix == ".tsv":
        text = "".join(f"{r['key']}\t{r['label']}\t{r['class']}\t{r['score']}\n" for r in rows)
        atomic_write_text(out, "key\tlabel\tclass\tscore\n" + text)
    else:
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    summary = {"scored": n, "kept": len(rows), "acceptance": len(rows) / max(n, 1), "threshold": threshold,
               "scorer": scorer, "skipped": dict(report.skipped) if report else {}, "out": str(out)}
    log(f"[filter] kept {len(rows)} of {n} images ({100 * summary['acceptance']:.1f} %) with {scorer} score > "
        f"{threshold} → {out}")
    return summary
