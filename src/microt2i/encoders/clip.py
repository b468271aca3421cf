"""Image–text dual encoders behind one protocol (`ImageTextModel`): a `transformers` CLIPModel or Jina-CLIP, by hub
id or local folder. CLIPScore (`eval/clipscore.py`), the CLIP filter (`data/filter.py`), the aesthetic heads and the
world detector's colour model all load theirs here."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .hub import resolve_pretrained
from .teacher import check_images


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    from transformers import AutoModel, AutoTokenizer, CLIPModel  # heavy: imported when a model is loaded

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
