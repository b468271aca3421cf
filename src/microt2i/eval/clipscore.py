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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .features import check_images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HESSEL_PREFIX = "A photo depicts "
HESSEL_WEIGHT = 2.5
DEFAULT_MODEL = "openai/clip-vit-large-patch14"  # torchmetrics' default, the T2I papers' ViT-L/14


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class ImageTextModel:
    """A dual encoder: `embed_images(uint8 [N,H,W,3])`, `embed_texts(list) -> (emb, truncated flags)`."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    max_tokens: int
    device: torch.device
    remote_code: bool = False  # Jina-CLIP: its own encode_* methods

    @torch.inference_mode()
    def embed_images(self, images, batch_size: int = 32) -> torch.Tensor:
        images = check_images(images)
        if self.remote_code:
            pil = [Image.fromarray(im) for im in images]
            return torch.as_tensor(np.asarray(self.model.encode_image(pil)), dtype=torch.float32)
        out = []
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        for i in range(0, len(images), batch_size):
            batch = np.stack([np.asarray(Image.fromarray(im).resize((self.image_size,) * 2, Image.BICUBIC))
                              for im in images[i:i + batch_size]])
            x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std
            out.append(_pooled(self.model.get_image_features(pixel_values=x.to(self.device))).float().cpu())
        return torch.cat(out)

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        return [len(ids) > self.max_tokens for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, list[bool]]:
        texts = list(texts)
        if self.remote_code:
            emb = torch.as_tensor(np.asarray(self.model.encode_text(texts)), dtype=torch.float32)
            return emb, self.truncated(texts)
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
            out.append(_pooled(self.model.get_text_features(input_ids=tok["input_ids"],
                                                            attention_mask=tok["attention_mask"])).float().cpu())
        return torch.cat(out), self.truncated(texts)


def load_image_text_model(spec: str = DEFAULT_MODEL, device="cpu", *,
                          trust_remote_code: bool | None = None) -> ImageTextModel:
    """A `transformers` CLIPModel, or Jina-CLIP (model_type jina_clip), by hub id or local folder. Jina-CLIP runs
    Python files shipped with the checkpoint: only with `trust_remote_code=True` or MICROT2I_TRUST_REMOTE_CODE=1."""
    import json
    import os

    from transformers import AutoModel, AutoTokenizer, CLIPModel

    from ..encoders.hub import resolve_pretrained

    folder = resolve_pretrained(spec, what="CLIP model")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    device = torch.device(device)
    if model_type == "clip":
        model = CLIPModel.from_pretrained(folder, use_safetensors=True).eval().to(device)
        return ImageTextModel(spec, model, tokenizer, model.config.vision_config.image_size,
                              model.config.text_config.max_position_embeddings, device)
    if model_type == "jina_clip":
        if trust_remote_code is None:
            trust_remote_code = os.environ.get("MICROT2I_TRUST_REMOTE_CODE", "") == "1"
        if not trust_remote_code:
            raise ValueError(f"{spec} is a Jina-CLIP checkpoint, which runs Python code shipped in its folder; "
                             f"read that code, then set MICROT2I_TRUST_REMOTE_CODE=1 (or pass trust_remote_code=True) "
                             f"to load it")
        model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                          use_safetensors=True).eval().to(device)
        return ImageTextModel(spec, model, tokenizer, 0, tokenizer.model_max_length, device, remote_code=True)
    raise ValueError(f"{spec} is a {model_type!r} model; CLIPScore needs a CLIPModel or a Jina-CLIP checkpoint")


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
