"""CLIPScore in both conventions (`reference/evaluation.md` §5), over one image–text model protocol.

- T2I convention (torchmetrics `CLIPScore`, used by T2I-ImageNet / DiffEvals / mosaicml): max(mean(100·cos), 0) —
  the clamp comes after the mean; texts are cut at the model's token limit (77 for CLIP).
- Hessel et al. 2021 (jmhessel/clipscore): mean(2.5·max(cos, 0)) with the text prefixed by "A photo depicts ".
Both report how many texts the tokenizer truncated: long world captions lose content past the limit, which is why
the DiffEvals authors also report Jina-CLIP (8k tokens), loaded here through the same protocol when its weights
are available locally (it needs `trust_remote_code`).

Images are resized like the models' own processors (PIL bicubic on uint8 to the input size; inputs are square).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..encoders.clip import ImageTextModel
from ..encoders.teacher import check_images

HESSEL_PREFIX = "A photo depicts "
HESSEL_WEIGHT = 2.5

def clip_cosines(images, texts: Sequence[str], model: ImageTextModel) -> dict:
    """Per-pair cosines (plain text and Hessel's prefixed text) and truncation flags, for one batch of pairs."""
    images = check_images(images)
    if len(images) != len(texts):
        raise ValueError(f"clip_score got {len(images)} images but {len(texts)} texts; pass one text per image")
    img = F.normalize(model.embed_images(images), dim=-1)
    txt, truncated = model.embed_texts(texts)
    hes, truncated_hessel = model.embed_texts([HESSEL_PREFIX + t for t in texts])
    return {"cos": (img * F.normalize(txt, dim=-1)).sum(-1).double(),
            "cos_hessel": (img * F.normalize(hes, dim=-1)).sum(-1).double(),
            "truncated": int(sum(truncated)), "truncated_hessel": int(sum(truncated_hessel))}


def summarize_clip(parts: Sequence[dict], model: ImageTextModel) -> dict:
    """CLIPScore over batches of `clip_cosines`: the T2I convention clamps after the mean, Hessel's per pair."""
    cos = torch.cat([p["cos"] for p in parts])
    cos_hessel = torch.cat([p["cos_hessel"] for p in parts])
    return {"clipscore": max(float(100 * cos.mean()), 0.0),
            "clipscore_hessel": float((HESSEL_WEIGHT * cos_hessel.clamp(min=0)).mean()),
            "n": len(cos), "truncated": sum(p["truncated"] for p in parts),
            "truncated_hessel": sum(p["truncated_hessel"] for p in parts), "max_tokens": model.max_tokens,
            "model": model.name}


def clip_score(images, texts: Sequence[str], model: ImageTextModel) -> dict:
    """CLIPScore of image i against text i, in the T2I convention and Hessel's, with N and truncation counts."""
    return summarize_clip([clip_cosines(images, texts, model)], model)
