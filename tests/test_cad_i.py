"""models/cad_i.py (CAD-I, the text-conditional RIN) and its latent self-conditioning (diffusion/backbone.py)."""

from __future__ import annotations

import pytest
import torch

from microt2i.config import ConfigError, ObjectiveConfig, from_dict
from microt2i.diffusion import backbone
from microt2i.diffusion.objectives import build_objective
from microt2i.models import CAD_I_CONFIGS, build, count_params, from_pretrained, save_pretrained
from microt2i.models.layers import patchify

TINY = CAD_I_CONFIGS["world-cad-tiny"]

# Exact parameter counts (also stated next to each config in models/cad_i.py). The reference RINTextCond has
# 330.2M (L) and 188.4M (base) parameters (T2I-ImageNet's CAD config; the released fp32 CAD-I weights are 1.33 GB).
PARAM_COUNTS = {
    "cad-i-256": 330_235_152,
    "cad-i-base": 188_372_752,
    "world-cad-tiny": 427_152,
    "world-cad-s": 11_996_036,
}


def _inputs(cfg, B=2, L=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    noise_cond = torch.rand(B, generator=g)
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L // 2:] = False
    return x, noise_cond, text, mask


def _wake(model, seed=1):
    """Give the zero-initialised output linear and self-conditioning LayerNorm weights, so both paths matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (model.out.weight, model.prev_out_norm.weight, model.prev_out_norm.bias):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return _wake(build(TINY)).eval()


# ---------------------------------------------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_param_counts_on_meta(name):
    with torch.device("meta"):
        model = build(CAD_I_CONFIGS[name])
    assert count_params(model) == PARAM_COUNTS[name]


def test_paper_configs_are_the_reference_rin():
    L, base = CAD_I_CONFIGS["cad-i-256"], CAD_I_CONFIGS["cad-i-base"]
    assert (L.num_latents, L.latent_dim, L.num_blocks, L.block_depth, L.rw_heads, L.heads) == (256, 1024, 4, 4, 16, 16)
    assert (base.num_latents, base.latent_dim, base.heads) == (128, 768, 12)
    for c in (L, base):
        assert (c.data_dim, c.patch_size, c.input_size, c.in_channels, c.text_dim) == (256, 2, 32, 4, 2048)
        assert (c.num_registers, c.refiner_depth, c.layerscale_init, c.self_cond_rate) == (16, 2, 0.1, 0.9)


def test_cross_attention_width_is_the_narrower_side():
    # CAD's CrossAttentionBlock: attention width = min(query, context); the read/write attentions run at data_dim
    with torch.device("meta"):
        block = build(CAD_I_CONFIGS["cad-i-256"]).blocks[0]
    assert block.read.attn.to_q.weight.shape == (256, 1024) and block.read.attn.to_kv.weight.shape == (512, 256)
    assert block.write.attn.to_q.weight.shape == (256, 256) and block.write.attn.to_kv.weight.shape == (512, 1024)
    assert block.text.attn.to_q.weight.shape == (1024, 1024)
    assert len(block.process) == 4


def test_shapes_and_init():
    torch.manual_seed(0)
    model = build(TINY).eval().requires_grad_(False)
    x, t, y, m = _inputs(TINY, B=3, L=5)
    out, z = model(x, t, y, m, return_latents=True)
    assert out.shape == x.shape and z.shape == (3, TINY.num_latents, TINY.latent_dim)
    assert torch.equal(out, torch.zeros_like(out))  # zero output layer: every denoiser starts at its skip path
    # the self-conditioning LayerNorm starts at zero: previous latents change nothing at init
    _, z2 = model(x, t, y, m, prev_latents=torch.randn_like(z), return_latents=True)
    torch.testing.assert_close(z2, z)
    assert model.patch_embed.weight.abs().max() <= (6 / (model.patch_embed.weight.shape[0] + 48)) ** 0.5  # xavier
    assert model.latents.abs().max() <= 0.04 and model.latents.std() == pytest.approx(0.02, rel=0.2)


def test_padded_text_tokens_are_ignored(tiny):
    x, t, y, m = _inputs(TINY)
    y2 = y.clone()
    y2[0, ~m[0]] = 100.0  # garbage in the padded slots of caption 0
    torch.testing.assert_close(tiny(x, t, y2, m), tiny(x, t, y, m))
    assert not torch.allclose(tiny(x, t, y2, torch.ones_like(m)), tiny(x, t, y, m))  # unmasked, it matters


def test_fully_padded_caption_is_finite_and_batch_independent(tiny):
    x, t, y, m = _inputs(TINY, B=3)
    m[1] = False  # a dropped caption: time token and registers still give the latents keys to attend to
    out = tiny(x, t, y, m)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[2:], tiny(x[2:], t[2:], y[2:], m[2:]))  # no leakage across the batch


def test_noise_cond_and_text_matter(tiny):
    x, t, y, m = _inputs(TINY)
    ref = tiny(x, t, y, m)
    assert not torch.allclose(tiny(x, t + 0.3, y, m), ref)
    assert not torch.allclose(tiny(x, t, y.flip(0), m.flip(0))[0], ref[0])
    torch.testing.assert_close(tiny(x, t[0], y, m)[0], ref[0])  # scalar noise_cond broadcasts


def test_keep_mask_returns_kept_token_patches(tiny):
    x, t, y, m = _inputs(TINY)
    N = (TINY.input_size // TINY.patch_size) ** 2
    full = tiny(x, t, y, m)
    out = tiny(x, t, y, m, keep_mask=torch.ones(2, N, dtype=torch.bool))
    torch.testing.assert_close(out, patchify(full, TINY.patch_size))
    keep = torch.zeros(2, N, dtype=torch.bool)
    keep[:, ::2] = True
    assert tiny(x, t, y, m, keep_mask=keep).shape == (2, N // 2, TINY.patch_size**2 * TINY.in_channels)


def test_bad_inputs_raise_clear_errors(tiny):
    x, t, y, m = _inputs(TINY)
    with pytest.raises(ValueError, match=r"inputs \[B, 3, 16, 16\]"):
        tiny(x[:, :, :8], t, y, m)
    with pytest.raises(ValueError, match="prev_latents must be"):
        tiny(x, t, y, m, prev_latents=torch.zeros(2, 3, 4))
    with pytest.raises(NotImplementedError, match="crop_tokens"):
        tiny(x, t, y, m, crop_tokens=torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="self_cond_rate"):
        from_dict(type(TINY), {"self_cond_rate": 1.5})


def test_every_parameter_gets_a_gradient(tiny):
    x, t, y, m = _inputs(TINY)
    tiny.train()
    out = backbone.for_loss(tiny, torch.Generator().manual_seed(0))(x, t, y, m)
    out.square().mean().backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_save_and_reload_round_trip(tiny, tmp_path):
    save_pretrained(tiny, tmp_path / "m")
    again = from_pretrained(tmp_path / "m")
    assert again.config == TINY
    x, t, y, m = _inputs(TINY)
    torch.testing.assert_close(again(x, t, y, m), tiny(x, t, y, m), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Latent self-conditioning: the training path and the sampling path


class Spy(torch.nn.Module):
    """A self-conditioning backbone that records what each call received; its latents are x's mean + a counter."""

    def __init__(self, rate):
        super().__init__()
        self.self_cond_rate, self.calls, self.w = rate, [], torch.nn.Parameter(torch.ones(()))

    def forward(self, x, noise_cond, tokens, mask, *, prev_latents=None, return_latents=False):
        self.calls.append({"prev": prev_latents, "grad": torch.is_grad_enabled()})
        latents = x.mean((1, 2, 3))[:, None, None].expand(-1, 2, 3) * self.w + len(self.calls)
        out = x * self.w + (0 if prev_latents is None else prev_latents.mean((1, 2))[:, None, None, None])
        return (out, latents) if return_latents else out


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_self_cond_training_path_keeps_detached_latents_with_probability_rate(rate):
    net, B = Spy(rate), 256
    x = torch.randn(B, 1, 2, 2)
    net.calls.clear()
    out = backbone.for_loss(net, torch.Generator().manual_seed(7))(x, torch.zeros(B), None, None)
    if rate == 0:  # no self-conditioning: the network itself, one pass
        assert len(net.calls) == 1 and net.calls[0]["prev"] is None
        return
    first, second = net.calls
    assert first["prev"] is None and not first["grad"]  # the first pass runs without building a graph
    keep = torch.rand(B, generator=torch.Generator().manual_seed(7)) < rate  # the decision comes from the generator
    expected = (x.mean((1, 2, 3))[:, None, None].expand(-1, 2, 3) + 1) * keep[:, None, None]
    torch.testing.assert_close(second["prev"], expected)  # kept rows: first-pass latents; dropped rows: zeros
    assert not second["prev"].requires_grad and out.requires_grad
    assert 0.4 < keep.float().mean() < 0.6 if rate == 0.5 else bool(keep.all())


def test_self_cond_sampling_path_carries_latents_between_calls():
    net = Spy(0.9)
    den = backbone.for_sampling(net)
    x = torch.randn(4, 1, 2, 2)
    den(x, torch.zeros(4), None, None)
    den(x + 1, torch.zeros(4), None, None)
    assert net.calls[0]["prev"] is None  # zeros on the first step
    torch.testing.assert_close(net.calls[1]["prev"], x.mean((1, 2, 3))[:, None, None].expand(-1, 2, 3) + 1)
    den(x[:2], torch.zeros(2), None, None)  # another batch: start afresh
    assert net.calls[2]["prev"] is None
    assert backbone.for_sampling(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear  # no self-conditioning: as is


def test_cad_i_self_cond_sampling_matches_explicit_latent_feed(tiny):
    x, t, y, m = _inputs(TINY)
    den = build_objective(ObjectiveConfig(kind="vp")).denoiser(tiny)
    x_edm, sigma = x * 3.0, torch.tensor(2.0)
    d1, d2 = den(x_edm, sigma, y, m), den(x_edm, sigma, y, m)
    assert not torch.allclose(d1, d2)  # the second call saw the first call's latents
    gamma = 1 / (1 + sigma**2)
    _, z1 = tiny(x_edm * gamma.sqrt(), gamma.expand(2), y, m, return_latents=True)
    eps2 = tiny(x_edm * gamma.sqrt(), gamma.expand(2), y, m, prev_latents=z1)
    torch.testing.assert_close(d2, x_edm - sigma * eps2)
    fresh = build_objective(ObjectiveConfig(kind="vp")).denoiser(tiny)
    torch.testing.assert_close(fresh(x_edm, sigma, y, m), d1)  # one denoiser per trajectory starts from zeros


def test_position_init_choice():
    """CAD's trunc-normal(0.02) table by default; `pos_init=sincos` starts the learned table from DiT's 2-D
    sin-cos positions (the world presets)."""
    from dataclasses import replace

    from microt2i.models.layers import sincos_pos_embed_2d

    cfg = CAD_I_CONFIGS["world-cad-tiny"]
    assert cfg.pos_init == "sincos"
    torch.manual_seed(0)
    a, b = build(replace(cfg, pos_init="trunc_normal")), build(cfg)
    assert a.data_pos.abs().max() <= 0.04 and 0.01 < a.data_pos.std() < 0.03
    grid = cfg.input_size // cfg.patch_size
    assert torch.equal(b.data_pos.detach(), sincos_pos_embed_2d(cfg.data_dim, grid)) and b.data_pos.requires_grad
