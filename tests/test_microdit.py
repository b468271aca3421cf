"""MicroDiT (models/microdit.py): paper parameter counts, layer-wise widths, masking strategies, masked EDM loss,
deferred vs naive masking, init, export round trip, masked training (exact resume, halved expert LR, overfit +
unmasked sampling)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from microt2i import presets
from microt2i.config import ConfigError, DiTIConfig, MicroDiTConfig, apply_overrides
from microt2i.diffusion.edm import EDMObjective, EDMPrecond, edm_coefficients
from microt2i.models import MICRODIT_CONFIGS, build, count_params, from_pretrained, sample_keep_mask, save_pretrained
from microt2i.models.layers import keep_tokens, patchify
from microt2i.models.microdit import (
    backbone_specs,
    block_keep_mask,
    mixer_specs,
    num_kept,
    random_keep_mask,
    swiglu_hidden,
)
from microt2i.models.moe import ExpertChoiceMoE
from microt2i.train.loop import train
from microt2i.train.state import load_latest

from _memorise import memorisation_errors, ramp_images
from test_train import fake_store

# 16×16 pixels, p = 2 → 64 tokens; a 2-block mixer narrower than the backbone; MoE in mixer block 1, backbone block 1
TINY = MicroDiTConfig(in_channels=3, input_size=16, text_dim=16, width=64, depth=4, head_dim=16, mixer_depth=2,
                      mixer_width=32, multiple_of=16, num_experts=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(cfg: MicroDiTConfig, B: int = 2, L: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    noise_cond = torch.randn(B, generator=g) / 2
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L // 2:] = False
    return x, noise_cond, text, mask


def _randomize_zero_inits(model, seed=1):
    """Give the zero-initialised tensors (adaLN, final layer, refiner outputs) weights, so every path carries signal."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.2)
    return model


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return _randomize_zero_inits(build(TINY)).eval()


def _moe_blocks(model):
    return ([i for i, b in enumerate(model.blocks) if isinstance(b.ffn, ExpertChoiceMoE)],
            [i for i, b in enumerate(model.mixer) if isinstance(b.ffn, ExpertChoiceMoE)])


# ---------------------------------------------------------------------------------------------------------------
# Paper presets: parameter counts (meta device) and layer-wise scaling


@pytest.mark.parametrize("name,paper,exact,moe", [
    ("microdit-xl-2", 1165.4e6, 1_165_442_320, (13, 3)),  # MicroDiT: 1.16B; micro_diffusion's models/dit.py: 1,165.4M, 13 + 3 MoE blocks
    ("microdit-tiny-2", 200.7e6, 200_692_752, (7, 2)),  # micro_diffusion's models/dit.py: 200.7M, 7 + 2 MoE blocks
])
def test_paper_param_counts(name, paper, exact, moe):
    with torch.device("meta"):
        model = build(presets.get(name).model)
    n = count_params(model)
    assert n == exact
    assert abs(n / paper - 1) < 0.01
    assert tuple(map(len, _moe_blocks(model))) == moe


@pytest.mark.parametrize("name,exact,moe", [("world-microdit-s", 9_767_692, (3, 0)),
                                            ("world-microdit-tiny", 516_428, (1, 0))])
def test_world_preset_param_counts(name, exact, moe):
    model = build(MICRODIT_CONFIGS[name])
    assert count_params(model) == exact and tuple(map(len, _moe_blocks(model))) == moe


def test_xl_parts_and_dense_variant():
    cfg = MICRODIT_CONFIGS["microdit-xl-2"]
    with torch.device("meta"):
        xl, dense = build(cfg), build(dataclasses.replace(cfg, moe=False))
    part = {k: sum(p.numel() for n, p in xl.named_parameters() if n.startswith(k)) for k in ("mixer", "blocks")}
    # micro_diffusion's models/dit.py: mixer (incl. its width maps) 186.4M, backbone 958.2M
    assert abs(part["mixer"] / 186.4e6 - 1) < 0.001 and abs(part["blocks"] / 958.2e6 - 1) < 0.001
    assert count_params(dense) == 639_980_816 and abs(count_params(dense) / 640.0e6 - 1) < 0.01
    assert _moe_blocks(dense) == ([], [])


def test_layerwise_scaling_widths_xl():
    cfg = MICRODIT_CONFIGS["microdit-xl-2"]
    specs = backbone_specs(cfg)
    # micro_diffusion's models/dit.py: block 0 has 8 heads (qkv 512), FFN 512; block 27 has 16 heads (qkv 1024), FFN 4096 → SwiGLU 2816
    assert (specs[0].attn_width, specs[0].heads, specs[0].mlp_hidden) == (512, 8, 512)
    assert (specs[27].attn_width, specs[27].heads, specs[27].mlp_hidden) == (1024, 16, 4096)
    assert swiglu_hidden(4096, 256) == 2816 and swiglu_hidden(512, 256) == 512
    # block 1: qkv ×(0.5 + 0.5/27) → ⌊530.96⌋ = 530 → 640 (multiple of 2·64); FFN ×(0.5 + 3.5/27) → 644 → expert 768
    assert (specs[1].attn_width, specs[1].heads, specs[1].mlp_hidden) == (640, 10, 644)
    assert all(s.attn_width % 128 == 0 for s in specs)
    assert [s.attn_width for s in specs] == sorted(s.attn_width for s in specs)
    assert [i for i, s in enumerate(specs) if s.moe] == list(range(1, 27, 2))  # every 2nd block, never the last
    assert [i for i, s in enumerate(mixer_specs(cfg)) if s.moe] == [1, 3, 5]
    assert all(s.attn_width == 768 and s.heads == 12 for s in mixer_specs(cfg))
    for i in (0, 13, 27):
        assert specs[i].out_std == pytest.approx(0.02 / (2 * (i + 1)) ** 0.5)  # depth-scaled init
    with torch.device("meta"):
        m = build(cfg)
    assert m.blocks[0].attn.to_qkv.weight.shape == (3 * 512, 1024)
    assert m.blocks[0].cross_attn.to_q.weight.shape == (1024, 1024)  # cross-attention keeps the full width
    assert m.blocks[27].ffn.fc2.weight.shape == (1024, 2816)
    assert m.blocks[1].ffn.w1.shape == (8, 1024, 768) and m.blocks[1].ffn.w2.shape == (8, 768, 1024)


# ---------------------------------------------------------------------------------------------------------------
# Masking strategies


def test_random_keep_mask_counts_and_determinism():
    def draw(seed, B=4):
        return random_keep_mask(B, 256, 0.75, generator=torch.Generator().manual_seed(seed))

    a = draw(3)
    assert a.dtype == torch.bool and a.shape == (4, 256) and (a.sum(1) == 64).all()
    assert torch.equal(a, draw(3)) and not torch.equal(a, draw(4)) and not torch.equal(a[0], a[1])
    freq = draw(5, B=4000).float().mean(0)  # every position kept with probability 1/4
    assert (freq - 0.25).abs().max() < 0.04
    assert num_kept(256, 0.75) == 64 and num_kept(256, 0.5) == 128 and num_kept(4, 0.9) == 1


def test_block_keep_mask_keeps_whole_blocks():
    keep = block_keep_mask(3, 16, 0.75, 2, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (3, 256) and (keep.sum(1) == 64).all()  # 16 of 64 blocks of 2×2
    blocks = keep.view(3, 8, 2, 8, 2)
    assert torch.equal(blocks.all(dim=(2, 4)), blocks.any(dim=(2, 4)))  # each block all kept or all dropped


def test_square_keep_mask_is_one_contiguous_square():
    keep = block_keep_mask(6, 16, 0.75, 0, generator=torch.Generator().manual_seed(0)).view(6, 16, 16)
    for k in keep:
        rows, cols = k.any(1).nonzero().flatten(), k.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == 8 and rows[-1] - rows[0] == 7 and cols[-1] - cols[0] == 7
        assert k.sum() == 64  # the full 8×8 square (Fig. 9d "square": 25 % of a 16×16 grid)


def test_sample_keep_mask_follows_the_config():
    g = torch.Generator().manual_seed(0)
    assert sample_keep_mask(dataclasses.replace(TINY, mask_ratio=0.0), 2, generator=g) is None
    assert sample_keep_mask(DiTIConfig(), 2, generator=g) is None  # models that do not mask
    keep = sample_keep_mask(dataclasses.replace(TINY, masking="block", mask_block=2), 5, generator=g)
    assert keep.shape == (5, 64) and (keep.sum(1) == 16).all()
    assert torch.equal(keep.view(5, 4, 2, 4, 2).all(dim=(2, 4)), keep.view(5, 4, 2, 4, 2).any(dim=(2, 4)))


# ---------------------------------------------------------------------------------------------------------------
# The network


def test_zero_init_output_is_exactly_zero_and_denoiser_is_the_skip():
    torch.manual_seed(0)
    model = build(TINY)
    x, t, y, m = _inputs(TINY)
    assert torch.equal(model(x, t, y, m), torch.zeros_like(x))
    sigma = torch.tensor([0.5, 3.0])
    c_skip = edm_coefficients(sigma, 0.9)[0]
    torch.testing.assert_close(EDMPrecond(model, 0.9)(x, sigma, y, m), c_skip.view(-1, 1, 1, 1) * x)


def test_all_kept_equals_unmasked(tiny):
    x, t, y, m = _inputs(TINY)
    full = patchify(tiny(x, t, y, m), TINY.patch_size)
    for masking in ("deferred", "naive"):
        tiny.config = dataclasses.replace(TINY, masking=masking)
        torch.testing.assert_close(tiny(x, t, y, m, keep_mask=torch.ones(2, 64, dtype=torch.bool)), full)


def test_deferred_masking_sees_dropped_patches_naive_does_not(tiny):
    """The patch-mixer runs before the mask (deferred): kept tokens carry information from the dropped ones. Naive
    masking drops them first, so the output cannot depend on them at all."""
    x, t, y, m = _inputs(TINY)
    keep = random_keep_mask(2, 64, 0.75, generator=torch.Generator().manual_seed(0))
    dropped = (~keep[0]).nonzero()[0].item()  # a dropped token of sample 0: change its pixels only
    r, c = divmod(dropped, 8)
    x2 = x.clone()
    x2[0, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 3.0
    out, out2 = tiny(x, t, y, m, keep_mask=keep), tiny(x2, t, y, m, keep_mask=keep)
    assert out.shape == (2, 16, 12)  # [B, N_keep, p²C]
    assert (out[0] - out2[0]).abs().max() > 1e-4  # fp32 noise is ~1e-7
    torch.testing.assert_close(out[1], out2[1])  # the other sample is untouched
    tiny.config = dataclasses.replace(TINY, masking="naive")
    assert torch.equal(tiny(x, t, y, m, keep_mask=keep), tiny(x2, t, y, m, keep_mask=keep))


def test_text_padding_is_ignored(tiny):
    x, t, y, m = _inputs(TINY)
    y2 = y.clone()
    y2[~m] = torch.randn_like(y2[~m]) * 10  # padded caption tokens: attention keys and the pooled mean skip them
    torch.testing.assert_close(tiny(x, t, y, m), tiny(x, t, y2, m))


def test_bad_keep_mask_is_one_clear_error(tiny):
    x, t, y, m = _inputs(TINY)
    bad = torch.zeros(2, 64, dtype=torch.bool)
    bad[0, :3], bad[1, :5] = True, True
    with pytest.raises(ValueError, match="same number of kept tokens"):
        tiny(x, t, y, m, keep_mask=bad)
    with pytest.raises(ValueError, match="MicroDiT built for inputs"):
        tiny(x[:, :, :8, :8], t, y, m)


def test_position_interpolation_at_double_resolution():
    torch.manual_seed(0)
    lo = build(TINY)
    hi = build(dataclasses.replace(TINY, input_size=32, pos_interp_scale=2.0))
    D = TINY.width
    # at 2× resolution with interp scale 2, token (2i, 2j) sits where token (i, j) sat (PixArt-α / MicroDiT)
    torch.testing.assert_close(hi.pos_embed.view(16, 16, D)[::2, ::2], lo.pos_embed.view(8, 8, D))
    assert set(lo.state_dict()) == set(hi.state_dict())  # positions are not weights: they carry over for free


def test_save_pretrained_round_trip(tiny, tmp_path):
    save_pretrained(tiny, tmp_path / "m")
    back = from_pretrained(tmp_path / "m")
    assert back.config == tiny.config
    assert json.loads((tmp_path / "m" / "config.json").read_text())["family"] == "microdit"
    x, t, y, m = _inputs(TINY)
    assert torch.equal(back(x, t, y, m), tiny(x, t, y, m))


@pytest.mark.parametrize("override,match", [
    ("model.mask_ratio=1.0", "model.mask_ratio"),
    ("model.masking=random", "model.masking"),
    ("model.width=100", "model.width"),
    ("model.masking=block", None),  # 8×8 grid with 2×2 blocks: fine
])
def test_config_validation(override, match):
    base = presets.get("world-microdit-tiny")
    if match is None:
        apply_overrides(base, [override])
        with pytest.raises(ConfigError, match="model.mask_block=3"):
            apply_overrides(base, [override, "model.mask_block=3"])
        return
    with pytest.raises(ConfigError, match=match):
        apply_overrides(base, [override])


# ---------------------------------------------------------------------------------------------------------------
# Masked EDM loss


def test_masked_loss_is_the_mean_over_kept_patches(tiny):
    x0, _, y, m = _inputs(TINY, B=3)
    keep = random_keep_mask(3, 64, 0.75, generator=torch.Generator().manual_seed(1))
    obj = EDMObjective(sigma_data=0.9, p_mean=-0.6, p_std=1.2)
    loss = obj.loss(tiny, x0, y, m, generator=torch.Generator().manual_seed(7), keep_mask=keep)
    # the same draws by hand: σ, then the noise over the whole image
    g = torch.Generator().manual_seed(7)
    sigma = (torch.randn(3, generator=g) * 1.2 - 0.6).exp()
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, 0.9)
    F_kept = tiny(c_in.view(-1, 1, 1, 1) * x, c_noise, y, m, keep_mask=keep)  # [B, 16, 12]
    D = c_skip.view(-1, 1, 1) * keep_tokens(patchify(x, 2), keep) + c_out.view(-1, 1, 1) * F_kept
    target = keep_tokens(patchify(x0, 2), keep)
    weight = (sigma**2 + 0.81) / (sigma * 0.9) ** 2
    torch.testing.assert_close(loss, weight * (D - target).square().mean(dim=(1, 2)))


def test_all_kept_loss_equals_unmasked_loss(tiny):
    x0, _, y, m = _inputs(TINY)
    obj = EDMObjective(sigma_data=0.9)
    masked = obj.loss(tiny, x0, y, m, generator=torch.Generator().manual_seed(3),
                      keep_mask=torch.ones(2, 64, dtype=torch.bool))
    torch.testing.assert_close(masked, obj.loss(tiny, x0, y, m, generator=torch.Generator().manual_seed(3)))


# ---------------------------------------------------------------------------------------------------------------
# Masked training


def tiny_run(*extra):
    return apply_overrides(presets.get("world-microdit-tiny"), [
        "model.text_dim=16", "model.width=32", "model.depth=3", "model.head_dim=16", "model.mixer_width=16",
        "train.total_nimg=48", "train.batch_size=8", "train.micro_batch=4", "train.log_every_nimg=16",
        "train.ckpt_every_nimg=1000", "train.warmup_nimg=0", *extra])


def test_masked_training_resume_is_bit_exact(tmp_path):
    cfg, store = tiny_run(), fake_store()
    assert cfg.model.mask_ratio == 0.75
    quiet = dict(store=store, progress=False, log=lambda *_: None)
    assert train(cfg, tmp_path / "a", **quiet)["finished"]
    assert not train(cfg, tmp_path / "b", stop_nimg=24, **quiet)["finished"]
    train(cfg, tmp_path / "b", **quiet)
    a, b = load_latest(tmp_path / "a"), load_latest(tmp_path / "b")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k]))


def test_expert_learning_rate_is_halved_in_training(tmp_path):
    """The trainer must apply the experts' lr_scale (the reference's halving never fires). Three AdamW steps: the
    zero-initialised gates open after step 2, so experts and the dense SwiGLU FFN of block 0 get their first non-zero
    gradient in step 3, and (with ε ≈ 0) Adam's first non-zero update has the same size for every weight whatever its
    gradient: lr·c with c = (1−β1)/(1−β1³) / √((1−β2)/(1−β2³))."""
    lr, (b1, b2) = 1e-3, (0.9, 0.999)
    c = (1 - b1) / (1 - b1**3) / ((1 - b2) / (1 - b2**3)) ** 0.5
    cfg = tiny_run("train.total_nimg=24", "train.micro_batch=0", "train.weight_decay=0.0", "train.grad_clip=0",
                   f"train.lr={lr}", "train.lr_schedule=constant", "train.eps=1e-30")
    torch.manual_seed(cfg.train.seed)
    before = build(cfg.model)  # the trainer builds its network right after the same seeding
    out = train(cfg, tmp_path, store=fake_store(), progress=False, log=lambda *_: None)
    after = out["net"]
    step = {k: (after.state_dict()[k] - v).abs().max().item() for k, v in before.state_dict().items()}
    expert_step = max(v for k, v in step.items() if k.endswith(("ffn.w1", "ffn.w2")))
    dense_step = max(step["blocks.0.ffn.fc1.weight"], step["blocks.0.ffn.fc2.weight"])
    assert dense_step == pytest.approx(lr * c, rel=1e-4)
    assert expert_step == pytest.approx(lr / 2 * c, rel=1e-4)
    groups = load_latest(tmp_path)["optimizer"]["param_groups"]
    assert [g.get("lr_scale", 1.0) * lr for g in groups] == [g["lr"] for g in groups] == [lr, lr, lr / 2]


@pytest.mark.slow
def test_masked_model_overfits_and_samples_unmasked(tmp_path):
    """Four images with distinct captions, trained with 75 % of the patches masked; sampling *unmasked* with the
    same weights reproduces each caption's image."""
    store = fake_store(n=4, res=8, seed=1)
    store.latents = ramp_images()
    cfg = tiny_run("data.resolution=8", "model.input_size=8", "model.width=64", "model.depth=2",
                   "model.mixer_width=32", "model.mask_ratio=0.75", "train.total_nimg=4800", "train.batch_size=16",
                   "train.micro_batch=0", "train.lr=3e-3", "train.warmup_nimg=160", "train.ema_decay=0.95",
                   "train.weight_decay=0.0", "objective.cond_drop=0.0", "objective.p_mean=-1.0",
                   "train.log_every_nimg=480", "eval.steps=12", "eval.cfg_scale=1.0")
    out = train(cfg, tmp_path, store=store, progress=False, log=lambda *_: None)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.25 * losses[0]
    err = memorisation_errors(out["ema"], cfg, store, "zero")
    assert (err.argmin(1) == range(4)).all(), err
    assert err.diagonal().max() < 25, err


# ---------------------------------------------------------------------------------------------------------------
# Cost: FLOPs per image (deterministic, unlike wall-clock on a shared CPU) and the benchmark's Markdown section


def test_masking_cuts_training_flops_per_image_by_2_5x_on_the_world_preset():
    from microt2i.bench import train_flops_per_image

    cfg = presets.get("world-microdit-s").model
    x0, _, y, m = _inputs(cfg, B=2)
    flops = {}
    for ratio in (0.0, 0.75):
        vcfg = dataclasses.replace(cfg, mask_ratio=ratio)
        torch.manual_seed(0)
        net = build(vcfg)
        g = torch.Generator().manual_seed(0)
        keep = sample_keep_mask(vcfg, 2, generator=g)
        kw = {} if keep is None else {"keep_mask": keep}
        flops[ratio] = train_flops_per_image(
            lambda: EDMObjective().loss(net, x0, y, m, generator=g, **kw).mean().backward(), 2)
    assert flops[0.0] / flops[0.75] >= 2.5  # the mixer and the caption path are the unmasked remainder


def test_write_microdit_md_appends_a_section_without_touching_others(tmp_path):
    from microt2i.bench import write_benchmarks_md, write_microdit_md

    v = {"img_s": 2.0, "params": 10, "train_flops_per_img": 3e9, "kept_tokens": 64}
    r = {"date": "2026-11-24T01:02:03", "device": "cpu (1 threads)", "torch": "x", "preset": "world-microdit-s",
         "precision": "fp32", "batch_size": 16, "tokens": 256, "moe-unmasked": {**v, "kept_tokens": 256},
         "moe-masked": {**v, "img_s": 6.0}, "dense-unmasked": {**v, "kept_tokens": 256}, "dense-masked": v}
    path = tmp_path / "BENCHMARKS.md"
    dit = {"date": "2026-01-02T03:04:05", "device": "cpu", "torch": "x", "preset": "world-s", "precision": "fp32",
           "batch_size": 8, "tokens": 64, "text_len": 64, "dit_i": {"img_s": 1.0, "params": 10},
           "pixart": {"img_s": 2.0, "params": 20}, "ratio": 0.5}
    write_benchmarks_md(dit, path)
    before = path.read_text()
    write_microdit_md(r, path)
    write_benchmarks_md(dit, path)  # the other section still gets its rows in its own table
    write_microdit_md(r, path)
    text = path.read_text()
    assert text.count("## MicroDiT variants (`microt2i bench microdit`)") == 1 and text.count("## Training throughput") == 1
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.startswith("| 2026-11-24")]
    assert len(rows) == 8 and "| moe-masked | 64 of 256 |" in rows[1] and "| 3.00× |" in rows[1]
    assert before.splitlines()[-1] in lines and lines.index(rows[0]) > lines.index("## MicroDiT variants (`microt2i bench microdit`)")
    assert sum(ln.startswith("| 2026-01-02") for ln in lines) == 2


def test_bench_microdit_measures_every_variant_side_by_side(tmp_path):
    from microt2i.bench import bench_microdit, write_microdit_md

    r = bench_microdit(TINY, batch_size=2, steps=1, warmup=0, repeats=1, text_len=4, device="cpu", name="tiny")
    moe_um, moe_m, dense_um, dense_m = (r[k] for k in ("moe-unmasked", "moe-masked", "dense-unmasked", "dense-masked"))
    assert (moe_um["kept_tokens"], moe_m["kept_tokens"]) == (64, 16)
    assert moe_m["train_flops_per_img"] < moe_um["train_flops_per_img"] / 2
    assert moe_um["params"] == moe_m["params"] > dense_um["params"] == dense_m["params"]
    assert r["moe_masked_speedup"] > 0 and r["moe_vs_dense_masked"] > 0 and moe_m["mfu"] is None  # no GPU peak
    one = bench_microdit(TINY, batch_size=2, steps=1, warmup=0, repeats=1, text_len=4, device="cpu",
                         variants=("moe-masked",))
    assert "moe-unmasked" not in one and "moe_masked_speedup" not in one
    write_microdit_md(one, tmp_path / "B.md")
    assert "| moe-masked | 16 of 64 |" in (tmp_path / "B.md").read_text()
    with pytest.raises(ValueError, match="subset"):
        bench_microdit(TINY, variants=("moe",))
