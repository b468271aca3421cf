"""Tests for microt2i.models: DiT-I shapes, masks, init, counts, export round-trip, and the shared layers."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from microt2i.config import DiTIConfig
from microt2i.models import DIT_I_CONFIGS, build, count_params, from_pretrained, save_pretrained
from microt2i.models.layers import (
    Attention,
    TimestepEmbedder,
    patchify,
    sincos_pos_embed_2d,
    timestep_sinusoid,
    unpatchify,
)

TINY = DIT_I_CONFIGS["world-tiny"]

# Exact parameter counts of the presets (also stated next to each preset in models/dit_i.py)
PARAM_COUNTS = {
    "dit-i-256": 438_143_248,
    "dit-i-512": 438_143_248,
    "world-tiny": 311_024,
    "world-s": 573_380,
}


def _inputs(cfg: DiTIConfig, B: int = 2, L: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    noise_cond = torch.randn(B, generator=g) / 2
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L // 2 :] = False  # first caption half padded, second fully real
    return x, noise_cond, text, mask


def _randomize_output_layer(model):
    """Give the zero-initialised final linear some weights so the output depends on everything upstream."""
    torch.manual_seed(1)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    torch.nn.init.normal_(model.final_layer.linear.bias, std=0.02)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = build(TINY)
    _randomize_output_layer(model)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# DiT-I


@pytest.mark.parametrize("L", [1, 7, 13])
def test_output_shape_odd_text_lengths(tiny, L):
    x, t, y, m = _inputs(TINY, B=3, L=L)
    out = tiny(x, t, y, m)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_keep_mask_returns_kept_token_patches(tiny):
    x, t, y, m = _inputs(TINY, B=2)
    N = (TINY.input_size // TINY.patch_size) ** 2
    keep = torch.zeros(2, N, dtype=torch.bool)
    keep[0, ::2] = True
    keep[1, 1::2] = True
    out = tiny(x, t, y, m, keep_mask=keep)
    assert out.shape == (2, N // 2, TINY.patch_size**2 * TINY.in_channels)
    # all tokens kept == no mask, expressed in patches
    full = tiny(x, t, y, m, keep_mask=torch.ones(2, N, dtype=torch.bool))
    torch.testing.assert_close(full, patchify(tiny(x, t, y, m), TINY.patch_size))
    with pytest.raises(ValueError, match="same number"):
        keep[0, 1] = True
        tiny(x, t, y, m, keep_mask=keep)


def test_crop_tokens_need_crop_cond(tiny):  # Crop itself: tests/test_crop.py
    x, t, y, m = _inputs(TINY)
    with pytest.raises(ValueError, match="model.crop_cond=true"):
        tiny(x, t, y, m, crop_tokens=torch.zeros(2, 4))


def test_fully_padded_caption_is_finite_and_means_no_text(tiny):
    x, t, y, m = _inputs(TINY)
    m[1] = False
    out = tiny(x, t, y, m)
    assert torch.isfinite(out).all()
    # with no real token the text values are irrelevant
    torch.testing.assert_close(out[1], tiny(x, t, torch.randn_like(y), m)[1], rtol=0, atol=0)


def test_padding_mask_is_honoured(tiny):
    x, t, y, m = _inputs(TINY, L=9)
    y2 = y.clone()
    y2[~m] = 1e3 * torch.randn_like(y2[~m])  # change only padded tokens, by a lot
    torch.testing.assert_close(tiny(x, t, y, m), tiny(x, t, y2, m), rtol=1e-6, atol=1e-6)
    # ... whereas a real token does matter
    y3 = y.clone()
    y3[0, 0] += 1.0
    assert not torch.allclose(tiny(x, t, y, m)[0], tiny(x, t, y3, m)[0])


def test_scalar_noise_cond_broadcasts(tiny):
    x, _, y, m = _inputs(TINY)
    torch.testing.assert_close(tiny(x, torch.tensor(0.3), y, m), tiny(x, torch.full((2,), 0.3), y, m))


def test_wrong_input_size_raises(tiny):
    _, t, y, m = _inputs(TINY)
    with pytest.raises(ValueError, match="built for inputs"):
        tiny(torch.randn(2, 3, 32, 32), t, y, m)


def test_zero_initial_output():
    model = build(TINY)
    x, t, y, m = _inputs(TINY)
    assert torch.equal(model(x, t, y, m), torch.zeros_like(x))


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_preset_param_counts(name):
    with torch.device("meta"):
        model = build(DIT_I_CONFIGS[name])
    assert count_params(model) == PARAM_COUNTS[name]


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, t, y, m = _inputs(TINY)
    target = torch.randn_like(x)
    for step in range(2):  # step 1 makes the zero-initialised final layer non-zero
        opt.zero_grad(set_to_none=True)
        loss = (model(x, t, y, m) - target).pow(2).mean()
        loss.backward()
        if step == 0:
            opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient reaches {dead}"


def test_save_pretrained_round_trip(tmp_path, tiny):
    save_pretrained(tiny, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["family"] == "dit-i"
    from safetensors import safe_open

    with safe_open(tmp_path / "m" / "model.safetensors", "pt") as f:
        assert json.loads(f.metadata()["config"])["width"] == TINY.width
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config == TINY
    x, t, y, m = _inputs(TINY)
    assert torch.equal(tiny(x, t, y, m), loaded(x, t, y, m))


def test_from_pretrained_is_strict(tmp_path, tiny):
    save_pretrained(tiny, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["depth"] = 3  # config no longer matches the weights
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="Missing key"):
        from_pretrained(tmp_path / "m")


def test_512_preset_interpolates_positions():
    # with pos_interp_scale 2 the 512 model's 32² token grid spans the 256 model's 16² grid, twice as densely
    a, b = DIT_I_CONFIGS["dit-i-256"], DIT_I_CONFIGS["dit-i-512"]
    assert dataclasses.replace(b, input_size=a.input_size, pos_interp_scale=1.0) == a
    pe = sincos_pos_embed_2d(8, 32, interp_scale=2.0)
    torch.testing.assert_close(pe.view(32, 32, 8)[::2, ::2].reshape(256, 8), sincos_pos_embed_2d(8, 16))


# ---------------------------------------------------------------------------------------------------------------
# Layers


def test_patchify_round_trip():
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 6, 48)
    torch.testing.assert_close(tokens[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))  # row 0, column 1
    assert torch.equal(unpatchify(tokens, 4, 3, 8, 12), x)


def test_sincos_2d_closed_form():
    D, G, s = 16, 4, 2.0
    pe = sincos_pos_embed_2d(D, G, interp_scale=s)
    assert pe.shape == (G * G, D)
    q = D // 4  # frequencies per (axis, sin|cos)
    for row in range(G):
        for col in range(G):
            for k in range(q):
                w = 10_000 ** (-k / q)
                xs, ys = col / s, row / s
                expect = [math.sin(xs * w), math.cos(xs * w), math.sin(ys * w), math.cos(ys * w)]
                got = pe[row * G + col, [k, q + k, 2 * q + k, 3 * q + k]].tolist()
                assert got == pytest.approx(expect, abs=1e-6)


def test_sincos_2d_matches_diffusers():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(32, 8, interpolation_scale=2.0, base_size=8, output_type="pt")
    torch.testing.assert_close(sincos_pos_embed_2d(32, 8, interp_scale=2.0), ref.float())


def test_timestep_sinusoid_closed_form():
    t = torch.tensor([0.0, 3.0, 250.0])
    emb = timestep_sinusoid(t, 8)
    for i, ti in enumerate(t.tolist()):
        freqs = [10_000 ** (-k / 4) for k in range(4)]
        expect = [math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
        assert emb[i].tolist() == pytest.approx(expect, abs=1e-5)
    # the embedder scales noise_cond before the sinusoid
    te = TimestepEmbedder(16, scale=1000.0, freq_dim=8)
    torch.testing.assert_close(te(torch.tensor([0.25])), te.mlp(timestep_sinusoid(torch.tensor([250.0]), 8)))


@pytest.mark.parametrize("cross", [False, True])
def test_qk_norm_makes_logits_scale_invariant(cross):
    """Scaling the q and k projections by 100 changes nothing with QK-norm (RMS is scale-free), but does without."""
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    for kind, invariant in (("rms", True), ("layer", True), (None, False)):
        attn = Attention(32, 4, context_dim=32 if cross else None, qk_norm=kind)
        out = attn(x, ctx if cross else None)
        with torch.no_grad():
            if cross:
                attn.to_q.weight *= 100
                attn.to_q.bias *= 100
                attn.to_kv.weight[:32] *= 100
                attn.to_kv.bias[:32] *= 100
            else:
                attn.to_qkv.weight[:64] *= 100
                attn.to_qkv.bias[:64] *= 100
        out2 = attn(x, ctx if cross else None)
        assert torch.allclose(out, out2, atol=1e-4) == invariant, kind


def test_attention_matches_explicit_softmax_with_mask():
    torch.manual_seed(0)
    attn = Attention(16, 2, context_dim=8, qk_norm=None)
    x, ctx = torch.randn(1, 3, 16), torch.randn(1, 5, 8)
    mask = torch.tensor([[True, False, True, True, False]])
    q = attn.to_q(x).view(1, 3, 2, 8).transpose(1, 2)
    k, v = (t.transpose(1, 2) for t in attn.to_kv(ctx).view(1, 5, 2, 2, 8).unbind(2))
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    w = logits.masked_fill(~mask[:, None, None], float("-inf")).softmax(-1)
    expect = attn.proj((w @ v).transpose(1, 2).reshape(1, 3, 16))
    torch.testing.assert_close(attn(x, ctx, key_mask=mask), expect)


# ---------------------------------------------------------------------------------------------------------------
# bench: the Markdown writer (the throughput run itself is too slow for the unit tests)


def test_write_benchmarks_md_appends_rows_to_its_table(tmp_path):
    from microt2i.bench import write_benchmarks_md

    r = {"date": "2026-01-02T03:04:05", "device": "cpu", "torch": "x", "preset": "world-s", "precision": "fp32",
         "batch_size": 8, "tokens": 64, "text_len": 64, "dit_i": {"img_s": 1.0, "params": 10},
         "pixart": {"img_s": 2.0, "params": 20}, "ratio": 0.5}
    path = tmp_path / "BENCHMARKS.md"
    write_benchmarks_md(r, path)
    path.write_text(path.read_text() + "\n## Other section\n")
    write_benchmarks_md({**r, "preset": "world-tiny"}, path)
    lines = path.read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("| 2026-01-02")]
    assert len(rows) == 2 and rows[1] == rows[0] + 1 and "world-tiny" in lines[rows[1]]
    assert lines[-1] == "## Other section"
