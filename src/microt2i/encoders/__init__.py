"""Encoders: image codecs (pixel, diffusers VAE) and frozen text encoders (MiniLM, T5, CLIP)."""

from microt2i.encoders.codec import (
    SD15_CHANNEL_MEAN,
    SD15_CHANNEL_STD,
    SD_SCALING_FACTOR,
    Codec,
    DiffusersVAE,
    PixelCodec,
    codec_of,
    latent_stats,
    load_codec,
)
from microt2i.encoders.hub import MissingModelError, resolve_pretrained
from microt2i.encoders.text import TextEmbedding, TextEncoder

__all__ = [
    "SD15_CHANNEL_MEAN",
    "SD15_CHANNEL_STD",
    "SD_SCALING_FACTOR",
    "Codec",
    "DiffusersVAE",
    "MissingModelError",
    "PixelCodec",
    "TextEmbedding",
    "TextEncoder",
    "codec_of",
    "latent_stats",
    "load_codec",
    "resolve_pretrained",
]
