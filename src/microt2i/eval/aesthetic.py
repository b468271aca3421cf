"""Aesthetic and human-preference scores of generated images (ImageNet-T2I Table 4: PickScore, Aesthetic score on
PartiPrompts; `reference/evaluation.md` §5).

- **LAION aesthetic predictor**: a head on L2-normalised CLIP ViT-L/14 image embeddings, ~1–10 scale. The head is
  read from a local file: LAION's linear `sa_0_4_vit_l_14_linear.pth` (`weight` [1, 768], `bias` [1]) or the
  "improved" MLP (`layers.<i>.weight/bias`, Linear layers applied in index order with no activation, as that
  checkpoint is built); `.pth` (loaded with weights_only) or `.safetensors`. The CLIP tower is the `clip` feature
  extractor (eval/features.py: projected image embedding, clean resize, CLIP mean/std) of
  `openai/clip-vit-large-patch14` — the same weights as open_clip's ViT-L-14 "openai" — or any CLIP id / folder.
- **PickScore** (Kirstain et al. 2023): `logit_scale.exp() · cos(image, text)` of a `transformers` CLIPModel
  (`yuvalkirstain/PickScore_v1`, a CLIP-H/14), via eval/clipscore.py's image–text model; texts cut at 77 tokens.

Nothing is downloaded: ids resolve to the local HF cache (encoders/hub.py) or a folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import check_images
from .preference import read_prompts, suite_preference
from safetensors.torch import load_file
from .features import clip as clip_extractor
from .runner import world_reference
from ..encoders.clip import load_image_text_model

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"


def load_aesthetic_head(path: str | Path) -> nn.Sequential:
    """The LAION aesthetic head of a local `.pth` / `.safetensors` file: one Linear (`weight`, `bias`) or the
    improved predictor's `layers.<i>.*` Linear stack, in index order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic head {str(path)!r} does not exist; pass --head with LAION's "
                                f"sa_0_4_vit_l_14_linear.pth (github.com/LAION-AI/aesthetic-predictor) or the improved "
                                f"predictor's .pth; nothing is downloaded")
    if path.suffix == ".safetensors":
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise ValueError(f"{path} is not a state dict of an aesthetic head")
    if set(sd) == {"weight", "bias"}:
        pairs = [(sd["weight"], sd["bias"])]
    else:
        idx = sorted({int(m[1]) for k in sd if (m := re.match(r"(?:layers\.)?(\d+)\.weight$", k))})
        prefix = "layers." if any(k.startswith("layers.") for k in sd) else ""
        pairs = [(sd[f"{prefix}{i}.weight"], sd[f"{prefix}{i}.bias"]) for i in idx]
    if not pairs or pairs[-1][0].shape[0] != 1:
        raise ValueError(f"{path}: expected a Linear head ending in one output (keys weight/bias or layers.<i>.*), "
                         f"got keys {sorted(sd)[:6]}")
    layers = []
    for w, b in pairs:
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w.float(), "bias": b.float()})
        layers.append(lin)
    return nn.Sequential(*layers).eval()


class AestheticPredictor:
    """`predictor(uint8 [N, H, W, 3]) -> float64 [N]` aesthetic scores."""

    def __init__(self, head: str | Path, clip: str | None = None, device="cpu", batch_size: int = 32):
        self.head = load_aesthetic_head(head).to(device)
        self.extractor = clip_extractor(clip or AESTHETIC_CLIP, device=device)
        self.extractor.batch_size = batch_size
        need = self.head[0].in_features
        if self.extractor.dim != need:
            raise ValueError(f"the aesthetic head takes {need}-d embeddings but {clip or AESTHETIC_CLIP} gives "
                             f"{self.extractor.dim}-d; LAION's heads need CLIP ViT-L/14 ({AESTHETIC_CLIP})")
        self.device, self.name = torch.device(device), f"laion-aesthetic:{Path(head).name}:{clip or AESTHETIC_CLIP}"

    @torch.inference_mode()
    def __call__(self, images) -> np.ndarray:
        emb = torch.from_numpy(self.extractor(check_images(images))).float()
        emb = F.normalize(emb, dim=-1).to(self.device)  # LAION normalises the embedding before the head
        return self.head(emb).squeeze(-1).double().cpu().numpy()


def pick_score(images, texts: Sequence[str], model) -> np.ndarray:
    """PickScore of image i with text i: logit_scale.exp() · cos (≈ 100·cos for CLIP's scale); float64 [N]."""
    images = check_images(images)
    if len(images) != len(texts):
        raise ValueError(f"pick_score got {len(images)} images but {len(texts)} prompts; pass one prompt per image")
    img = F.normalize(model.embed_images(images), dim=-1)
    txt = F.normalize(model.embed_texts(list(texts))[0], dim=-1)
    scale = float(model.model.logit_scale.detach().exp()) if hasattr(model.model, "logit_scale") else 100.0
    return (scale * (img * txt).sum(-1)).double().numpy()


def summary(scores: np.ndarray, prefix: str) -> dict:
    s = np.asarray(scores, np.float64)
    return {prefix: float(s.mean()), f"{prefix}_std": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
            f"{prefix}_sem": float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else 0.0, "n": int(len(s))}


# -------------------------------------------------------------------------- suites for eval/runner.py's protocol


def _prompts(sampler, n, prompts_file):
    if prompts_file:
        prompts, categories = read_prompts(prompts_file)
        return prompts[:n] if n else prompts, categories[:n] if n else categories
    _, captions, _, _ = world_reference(sampler.cfg, n)
    return captions, [""] * len(captions)


def suite_aesthetic(sampler, n, seed, head=None, model=None, prompts=None, **_):
    """`microt2i eval aesthetic`: mean LAION aesthetic score of samples of world captions or a prompt file."""
    if not head:
        raise ValueError("eval aesthetic needs --head <LAION aesthetic head .pth> (sa_0_4_vit_l_14_linear.pth)")
    texts, cats = _prompts(sampler, n, prompts)
    images = sampler(texts, seed=seed)
    pred = AestheticPredictor(head, model, device=sampler.device)
    scores = pred(images)
    rows = [{"prompt": t, "category": c, "aesthetic": float(s)} for t, c, s in zip(texts, cats, scores)]
    return summary(scores, "aesthetic") | {"model": pred.name}, rows[:400], images


def suite_pickscore(sampler, n, seed, model=None, prompts=None, **_):
    """`microt2i eval pickscore`: mean PickScore of samples against their prompts."""
    texts, cats = _prompts(sampler, n, prompts)
    images = sampler(texts, seed=seed)
    clip = load_image_text_model(model or PICKSCORE_MODEL, device=sampler.device)
    scores = pick_score(images, texts, clip)
    rows = [{"prompt": t, "category": c, "pickscore": float(s)} for t, c, s in zip(texts, cats, scores)]
    return summary(scores, "pickscore") | {"model": clip.name}, rows[:400], images


def register_suites(suites: dict) -> None:
    """Add aesthetic / pickscore / preference to eval/runner.py's SUITES (the `microt2i eval` dispatch table)."""
    suites.setdefault("aesthetic", suite_aesthetic)
    suites.setdefault("pickscore", suite_pickscore)
    suites.setdefault("preference", suite_preference)
