"""Tiny random Hugging Face models saved to a folder, so loaders can be tested offline by path."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "a an the one two three red green blue cube sphere cone on left right of above below next to small".split()


def tiny_tokenizer(folder: Path, *, specials: dict[str, str], template: str):
    """A word-level tokenizer (special tokens first, then WORDS) saved with `save_pretrained`.

    `specials` maps roles (pad_token, eos_token, bos_token, unk_token, ...) to token strings; `template` is the
    single-sequence template of `tokenizers.processors.TemplateProcessing`, e.g. "$A </s>"."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials.values(), *WORDS]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special_in_template = [t for t in template.split() if t != "$A"]
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in special_in_template]
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **specials)
    wrapped.save_pretrained(folder)
    return wrapped


def tiny_t5(folder: Path, *, encoder_only: bool = True) -> Path:
    """A tiny T5: `T5EncoderModel`, or a full encoder-decoder checkpoint as flan-T5 ships."""
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    tok = tiny_tokenizer(folder, specials=specials, template="$A </s>")
    config = T5Config(
        vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    (T5EncoderModel if encoder_only else T5ForConditionalGeneration)(config).save_pretrained(folder)
    return folder


def tiny_clip(folder: Path, *, kind: str) -> Path:
    """A tiny CLIP text model; `kind` is "text" (CLIPTextModel), "projection" (CLIPTextModelWithProjection) or
    "full" (a CLIPModel checkpoint with a vision tower)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    specials = {"pad_token": "<pad>", "unk_token": "<unk>"}
    specials |= {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    tok = tiny_tokenizer(folder, specials=specials, template="<|startoftext|> $A <|endoftext|>")
    text = dict(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, projection_dim=8, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    if kind == "full":
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
        vision |= dict(image_size=32, patch_size=16)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    else:
        model = {"text": CLIPTextModel, "projection": CLIPTextModelWithProjection}[kind](CLIPTextConfig(**text))
    model.save_pretrained(folder)
    return folder


def tiny_vae(folder: Path, *, scaling_factor: float = 0.25) -> Path:
    """AutoencoderKL with factor 2 (two blocks), 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
        scaling_factor=scaling_factor,
    )  # fmt: skip
    vae.save_pretrained(folder, safe_serialization=True)
    return folder
