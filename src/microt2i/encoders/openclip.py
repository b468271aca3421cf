"""OpenCLIP checkpoints as transformers' `CLIPTextModelWithProjection` (text tower only).

MicroDiT's text encoder, DFN5B-CLIP-H (`apple/DFN5B-CLIP-ViT-H-14-378`, MicroDiT App. B, micro_diffusion's data pipeline), is published
as OpenCLIP files: `open_clip_config.json` and `open_clip_pytorch_model.bin` (some OpenCLIP repos also ship
`open_clip_model.safetensors`, preferred when present). The `.bin` is read with `torch.load(weights_only=True)`, which
builds tensors only and runs no pickled code. OpenCLIP's standard text tower (token + learned position embeddings,
pre-LN blocks with a fused q/k/v projection under a causal mask, final LayerNorm, EOT pooling, a bias-free
projection matrix) is the same network as transformers' CLIP text model, so its weights are renamed onto it:

    token_embedding.weight                 → text_model.embeddings.token_embedding.weight
    positional_embedding                   → text_model.embeddings.position_embedding.weight
    transformer.resblocks.i.ln_1 / ln_2    → text_model.encoder.layers.i.layer_norm1 / layer_norm2
    transformer.resblocks.i.attn.in_proj_* → ….self_attn.{q,k,v}_proj.* (split in three along the output axis)
    transformer.resblocks.i.attn.out_proj  → ….self_attn.out_proj
    transformer.resblocks.i.mlp.c_fc/c_proj → ….mlp.fc1 / fc2
    ln_final                               → text_model.final_layer_norm
    text_projection [width, embed_dim]     → text_projection.weight (transposed: OpenCLIP computes x @ P)

The vision tower, `logit_scale` and buffers are dropped. Text-tower variants with no transformers counterpart
(LayerScale, a class token, no causal mask, a non-EOT pooling, a projection bias, an HF text backbone) are refused.
OpenCLIP repos carry no transformers tokenizer: one saved in the folder is used, else the CLIP BPE tokenizer of
`openai/clip-vit-large-patch14` (the same 49,408-token vocabulary OpenCLIP's default tokenizer reads).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from .hub import resolve_pretrained

OPENCLIP_CONFIG = "open_clip_config.json"
OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # in order of preference
CLIP_TOKENIZER_ID = "openai/clip-vit-large-patch14"
_UNSUPPORTED = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "pool_type": "argmax",
                "proj_bias": False, "hf_model_name": None}


def is_openclip_folder(folder: Path) -> bool:
    """An OpenCLIP checkpoint folder: `open_clip_config.json` and no transformers `config.json`."""
    folder = Path(folder)
    return (folder / OPENCLIP_CONFIG).is_file() and not (folder / "config.json").is_file()


def text_config(folder: Path, tokenizer=None):
    """transformers `CLIPTextConfig` of the OpenCLIP text tower in `folder/open_clip_config.json`."""
    from transformers import CLIPTextConfig  # heavy (seconds to import): only when this model is loaded

    path = Path(folder) / OPENCLIP_CONFIG
    cfg = json.loads(path.read_text())
    model = cfg.get("model_cfg", cfg)
    text = model.get("text_cfg", {})
    odd = {k: text[k] for k, default in _UNSUPPORTED.items() if text.get(k, default) != default}
    if odd:
        raise ValueError(f"{path}: text tower options {odd} have no transformers CLIP counterpart; only OpenCLIP's "
                         f"standard text tower loads")
    width = int(text.get("width", 512))
    extra = {}
    if tokenizer is not None:
        extra = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                 "pad_token_id": tokenizer.pad_token_id}
    return CLIPTextConfig(vocab_size=int(text.get("vocab_size", 49408)), hidden_size=width,
                          intermediate_size=int(width * float(text.get("mlp_ratio", 4.0))),
                          num_hidden_layers=int(text.get("layers", 12)), num_attention_heads=int(text.get("heads", 8)),
                          max_position_embeddings=int(text.get("context_length", 77)),
                          hidden_act="quick_gelu" if model.get("quick_gelu", False) else "gelu",
                          projection_dim=int(model.get("embed_dim", width)), layer_norm_eps=1e-5, **extra)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict: safetensors if present, else the `.bin` with `torch.load(weights_only=True)`."""
    folder = Path(folder)
    for name in OPENCLIP_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)  # tensors only; a pickled object is refused
        return sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    raise FileNotFoundError(f"{folder} has {OPENCLIP_CONFIG} but no weights ({' or '.join(OPENCLIP_WEIGHTS)})")


def to_transformers(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower keys (top level, or under `text.` for OpenCLIP's CustomTextCLIP) → CLIPTextModelWith-
    Projection keys. Raises on a text-tower tensor it cannot place."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    prefix = "text." if "text.token_embedding.weight" in sd else ""
    out, used = {}, set()

    def take(key: str) -> torch.Tensor:
        used.add(prefix + key)
        return sd[prefix + key]

    tm = "text_model."
    out[tm + "embeddings.token_embedding.weight"] = take("token_embedding.weight")
    out[tm + "embeddings.position_embedding.weight"] = take("positional_embedding")
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(num_layers):
        src, dst = f"transformer.resblocks.{i}.", f"{tm}encoder.layers.{i}."
        for a, b in names.items():
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = take(f"{src}{a}.{p}")
        for p in ("weight", "bias"):
            q, k, v = take(f"{src}attn.in_proj_{p}").chunk(3, dim=0)
            out.update({f"{dst}self_attn.{n}_proj.{p}": t for n, t in zip("qkv", (q, k, v))})
    for p in ("weight", "bias"):
        out[f"{tm}final_layer_norm.{p}"] = take(f"ln_final.{p}")
    out["text_projection.weight"] = take("text_projection").t().contiguous()
    dropped = ("visual.", "logit_scale", "logit_bias", "attn_mask")
    left = sorted(k for k in sd if k not in used and not k.removeprefix(prefix).startswith(dropped)
                  and (not prefix or k.startswith(prefix)))
    if left:
        raise ValueError(f"OpenCLIP text tower tensors with no transformers CLIP counterpart: {left[:4]}"
                         f"{' …' if len(left) > 4 else ''} (a text-tower variant this loader does not map)")
    return out


def load_tokenizer(folder: Path):
    """A tokenizer saved in the folder, else the CLIP BPE tokenizer (`openai/clip-vit-large-patch14`)."""
    from transformers import AutoTokenizer  # heavy (seconds to import): only when this model is loaded

    folder = Path(folder)
    if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(resolve_pretrained(CLIP_TOKENIZER_ID, what="CLIP tokenizer (for OpenCLIP)"))


def load_text_model(folder: Path, tokenizer, dtype: torch.dtype = torch.float32):
    """`CLIPTextModelWithProjection` holding the OpenCLIP checkpoint's text tower (strict: nothing missing)."""
    from transformers import CLIPTextModelWithProjection  # heavy (seconds to import): only when this model is loaded

    config = text_config(folder, tokenizer)
    sd = to_transformers(read_weights(folder), config.num_hidden_layers)
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    buffers = {k: v for k, v in model.state_dict().items() if k not in sd}  # position_ids: rebuilt below
    missing = sorted(k for k in buffers if not k.endswith("position_ids"))
    if missing:
        raise ValueError(f"{folder}: the OpenCLIP checkpoint lacks {len(missing)} text weights, e.g. {missing[:3]}")
    model.load_state_dict(sd, strict=False, assign=True)
    emb = model.text_model.embeddings
    if hasattr(emb, "position_ids"):
        emb.position_ids = torch.arange(config.max_position_embeddings).unsqueeze(0)
    return model.to(dtype).eval()
