"""Convergence accelerators: REPA (Yu et al. 2024), TREAD token routing (Krause et al. 2025), Muon (Jordan et al.
2024) — their formulas, the gradient paths, exact routing shares and token order, resume, and the bad inputs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from microt2i import presets
from microt2i.config import ConfigError, DiTIConfig, MicroDiTConfig, TrainConfig, apply_overrides
from microt2i.diffusion.repa import RepaCapture, repa_loss
from microt2i.encoders.hub import MissingModelError
from microt2i.encoders.teacher import load_teacher
from microt2i.models import build, sample_route_mask
from microt2i.models.layers import (apply_rope, keep_tokens, restore_tokens, rope_angles, rope_rotation,
                                    run_blocks)
from microt2i.train import loop
from microt2i.train.loop import train
from microt2i.train.optim import MuonAdamW, make_optimizer, muon_params
from microt2i.train.state import load_latest

from test_ia_training import QUIET, stores, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def _dit(**kw):
    return build(DiTIConfig(in_channels=3, input_size=8, text_dim=16, patch_size=2, width=32, depth=4, heads=2,
                            refiner_depth=1, **kw))


def _inputs(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, 8, 8, generator=g), torch.rand(B, generator=g), torch.randn(B, 5, 16, generator=g),
            torch.ones(B, 5, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------- REPA


def test_repa_loss_is_negative_mean_cosine():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 7, 5, generator=g, dtype=torch.float64), torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    want = [-np.mean([float(a[i, t] @ b[i, t] / (a[i, t].norm() * b[i, t].norm())) for t in range(7)]) for i in range(2)]
    assert torch.allclose(repa_loss(a, b).double(), torch.tensor(want), atol=1e-6)
    assert torch.allclose(repa_loss(a, 3 * a), torch.full((2,), -1.0), atol=1e-6)  # scale-free, −1 when aligned


def test_repa_projector_shapes_and_gradient_reaches_only_blocks_up_to_the_aligned_one():
    net = _dit(repa_depth=2, repa_dim=24, repa_hidden=40)
    cap = RepaCapture(net, 2)
    x, t, y, m = _inputs()
    net(x, t, y, m)
    assert cap.tokens.shape == (3, 16, 32)  # block 2's output: [B, N, D]
    target = torch.randn(3, 16, 24)
    assert net.repa_head(cap.tokens).shape == (3, 16, 24)
    cap.loss(target, torch.ones(3)).mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    moved = lambda prefix: any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix))
    assert moved("repa_head.") and moved("blocks.0.") and moved("blocks.1.") and moved("x_embedder.")
    assert not moved("blocks.2.") and not moved("blocks.3.") and not moved("final_layer.")


def test_repa_invalid_rows_contribute_nothing():
    net = _dit(repa_depth=1, repa_dim=8, repa_hidden=16)
    cap = RepaCapture(net, 1)
    net(*_inputs())
    out = cap.loss(torch.randn(3, 16, 8), torch.tensor([1.0, 0.0, 1.0]))
    assert out[1] == 0 and out[0] != 0


def test_repa_trains_and_logs_alignment(tmp_path, monkeypatch):
    base, _ = stores()
    feats = torch.randn(len(base), 16, 8).half()  # teacher features of the 12 samples on the 4×4 token grid
    monkeypatch.setattr(loop, "prepare_teacher", lambda cfg, store, device, log=print: feats)
    cfg = tiny("objective.repa_weight=0.5", "model.repa_depth=1", "model.repa_dim=8", "model.repa_hidden=16")
    out = train(cfg, tmp_path, store=base, **QUIET)
    assert out["finished"]
    stats = [__import__("json").loads(s) for s in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert all(-1 <= s["repa_cos"] <= 1 for s in stats if "repa_cos" in s) and any("repa_cos" in s for s in stats)


def test_repa_setup_errors(tmp_path):
    base, _ = stores()
    with pytest.raises(ConfigError, match="model.repa_depth"):
        train(tiny("objective.repa_weight=0.5"), tmp_path / "a", store=base, **QUIET)
    with pytest.raises(ConfigError, match="past the network"):
        tiny("model.repa_depth=5", "model.repa_dim=8")
    with pytest.raises(ConfigError, match="repa_dim"):
        tiny("model.repa_depth=1")
    with pytest.raises(ConfigError, match="repa_weight"):
        tiny("objective.repa_weight=-1")


def test_repa_teacher_not_in_local_cache_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(MissingModelError, match="REPA teacher"):
        load_teacher("facebook/dinov2-base")
    with pytest.raises(MissingModelError, match="does not exist"):
        load_teacher(str(tmp_path / "no-such-folder"))


def test_dinov2_teacher_patch_tokens_on_the_token_grid(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=4, image_size=16)).save_pretrained(tmp_path / "dino")
    teacher = load_teacher(str(tmp_path / "dino"))
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    f = teacher(images, 4)
    assert f.shape == (3, 16, 16) and f.dtype == torch.float16 and teacher.dim == 16
    assert torch.equal(teacher(images[1:2], 4), f[1:2])  # per image, batch-independent


def test_effnet_teacher_features_are_the_mbconv_map(tmp_path):
    teacher = load_teacher("effnet-lite0")
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    f = teacher(images, 2)  # 64 px input → stride-32 map of 2 × 2
    assert f.shape == (2, 4, 320) and teacher.dim == 320 and torch.isfinite(f.float()).all()


# --------------------------------------------------------------------------------------------------------- TREAD


@pytest.mark.parametrize("ratio,n", [(0.5, 16), (0.25, 64), (0.75, 10)])
def test_route_mask_routes_exactly_the_configured_share(ratio, n):
    cfg = DiTIConfig(depth=4, route_ratio=ratio, route_start=1, route_end=3)
    mask = sample_route_mask(cfg, 5, n, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (5, n) and (mask.sum(1) == int(n * (1 - ratio))).all()
    assert len({tuple(r.tolist()) for r in mask}) > 1  # positions differ between samples
    assert sample_route_mask(DiTIConfig(depth=4), 5, n) is None


def test_routed_tokens_skip_the_span_and_token_order_is_restored():
    blocks = [lambda h, k=k: h + 10 ** k for k in range(4)]  # block k adds 10^k
    h = torch.arange(2 * 6, dtype=torch.float64).view(2, 6, 1)
    route = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    out = run_blocks(blocks, h, lambda b, x, _: b(x), route, route_start=1, route_end=3)
    # all tokens: blocks 0 and 3 (+1 + 1000); routed tokens also blocks 1, 2 (+10 + 100)
    want = h + 1001 + 110 * route[..., None]
    assert torch.equal(out, want)
    x = torch.randn(2, 6, 3)
    assert torch.equal(restore_tokens(torch.zeros_like(x), keep_tokens(x, route), route), x * route[..., None])


def test_routing_every_token_is_the_unrouted_network():
    net = _dit(route_ratio=0.5, route_start=1, route_end=3)
    x, t, y, m = _inputs()
    full = net(x, t, y, m)
    assert torch.allclose(net(x, t, y, m, route_mask=torch.ones(3, 16, dtype=torch.bool)), full, atol=1e-6)
    routed = net(x, t, y, m, route_mask=sample_route_mask(net.config, 3, 16, generator=torch.Generator().manual_seed(0)))
    assert routed.shape == full.shape


def test_routing_composes_with_microdit_deferred_masking():
    cfg = MicroDiTConfig(in_channels=3, input_size=8, text_dim=16, patch_size=2, width=32, depth=4, head_dim=16,
                         mixer_depth=1, mixer_width=32, multiple_of=16, moe=False, mask_ratio=0.5,
                         route_ratio=0.5, route_start=1, route_end=3)
    net = build(cfg)
    x, t, y, m = _inputs()
    g = torch.Generator().manual_seed(0)
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[:, ::2] = True  # 8 of 16 patches kept
    route = sample_route_mask(cfg, 3, 8, generator=g)  # a share of the kept tokens take the routed span
    assert net(x, t, y, m, keep_mask=keep, route_mask=route).shape == (3, 8, 12)


@pytest.mark.parametrize("extra,match", [
    (["model.route_ratio=1.5"], r"\(0, 1\)"),
    (["model.route_ratio=-0.2"], r"\(0, 1\)"),
    (["model.route_ratio=0.5", "model.route_end=7"], "start < end"),
    (["model.route_ratio=0.5", "model.route_start=2", "model.route_end=2"], "start < end"),
])
def test_bad_routing_settings_are_one_clear_error(extra, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(presets.get("world-s"), extra)


def test_tread_and_repa_resume_bit_exactly(tmp_path, monkeypatch):
    base, _ = stores()
    feats = torch.randn(len(base), 16, 8).half()
    monkeypatch.setattr(loop, "prepare_teacher", lambda cfg, store, device, log=print: feats)
    cfg = tiny("model.depth=3", "model.route_ratio=0.5", "model.route_start=1", "model.route_end=3",
               "objective.repa_weight=0.5", "model.repa_depth=1", "model.repa_dim=8", "model.repa_hidden=16",
               "train.optimizer=muon", "train.total_nimg=48")
    train(cfg, tmp_path / "a", store=base, **QUIET)
    train(cfg, tmp_path / "b", store=base, stop_nimg=24, **QUIET)
    train(cfg, tmp_path / "b", store=base, **QUIET)
    a, b = load_latest(tmp_path / "a"), load_latest(tmp_path / "b")
    assert a["nimg"] == b["nimg"] == 48
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# ---------------------------------------------------------------------------------------------------------- Muon


def _newton_schulz64(g: torch.Tensor, steps=5, coeffs=(3.4445, -4.775, 2.0315), eps=1e-7) -> torch.Tensor:
    """Muon's quintic Newton–Schulz orthogonalisation (Jordan et al. 2024), transcribed in float64."""
    a, b, c = coeffs
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(float(x.norm()), eps)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def test_muon_update_matches_a_float64_transcription():
    torch.manual_seed(0)
    W = torch.nn.Linear(24, 40, bias=False)  # [40, 24]: a tall matrix
    lr, wd, mu = 0.02, 0.1, 0.95
    opt = MuonAdamW([{"params": [W.weight], "weight_decay": wd, "muon": True}], lr=lr, betas=(0.9, 0.999), eps=1e-8,
                    momentum=mu)
    buf = torch.zeros(40, 24, dtype=torch.float64)
    for step in range(3):
        g = torch.randn(40, 24)
        W.weight.grad = g.clone()
        before = W.weight.detach().double().clone()
        opt.step()
        buf = mu * buf + g.double()  # momentum buffer, then Nesterov: g + μ·buf (torch's lerp form is a multiple)
        update = _newton_schulz64(g.double() + mu * buf)
        want = before * (1 - lr * wd) - lr * 0.2 * math.sqrt(40) * update  # RMS matched to AdamW: 0.2·√max(A, B)
        delta, want_delta = W.weight.detach().double() - before, want - before
        err = (delta - want_delta).norm() / want_delta.norm()
        assert err < 0.02, (step, float(err))  # Newton–Schulz runs in bfloat16 inside torch
        sv = torch.linalg.svdvals(update)  # an orthogonalised update: singular values near 1 (US'V^T, S' ≈ 0.5 … 1.5)
        assert 0.3 < float(sv.min()) and float(sv.max()) < 1.6


def test_muon_takes_hidden_matrices_and_adamw_the_rest(tmp_path):
    net = build(presets.get("world-tiny").model)
    hidden = muon_params(net)
    names = {n for n, p in net.named_parameters() if id(p) in hidden}
    assert names and all(n.startswith(("blocks.", "text_refiner.")) and n.endswith(".weight") for n in names)
    assert "x_embedder.weight" not in names and "final_layer.linear.weight" not in names
    opt = make_optimizer(net, TrainConfig(optimizer="muon", weight_decay=0.01))
    sd = opt.state_dict()
    assert {g["muon"] for g in sd["param_groups"]} == {True, False}
    covered = sum(len(g["params"]) for g in opt.param_groups)
    assert covered == sum(1 for p in net.parameters() if p.requires_grad)


def test_muon_refuses_fsdp():
    with pytest.raises(ConfigError, match="muon"):
        TrainConfig(optimizer="muon", parallel="fsdp")


# ------------------------------------------------------------------------------------------ time-to-quality table


def test_time_to_quality_reads_first_crossings_and_flops_speedups(tmp_path):
    import json
    from types import SimpleNamespace

    from microt2i.experiment import first_reach, time_to_quality, ttq_markdown

    assert first_reach([(200, 0.9), (100, 0.4)], 0.5) == 200 and first_reach([(100, 0.4)], 0.5) is None
    curves = {"base": [[(1000, 0.2), (2000, 0.6), (3000, 0.85)], [(1000, 0.3), (2000, 0.4), (3000, 0.7)]],
              "fast": [[(1000, 0.55), (2000, 0.81)], [(1000, 0.6), (2000, 0.9)]]}
    folders, data = {}, []
    for arm, runs in curves.items():
        folders[arm] = []
        for s, run in enumerate(runs):
            f = tmp_path / f"{arm}-{s}"
            f.mkdir()
            (f / "stats.jsonl").write_text("".join(json.dumps({"nimg": n, "eval/class_accuracy": v}) + "\n"
                                                   for n, v in run))
            folders[arm].append(f)
        flops = 3e9 if arm == "base" else 2e9
        data.append(SimpleNamespace(name=arm, results=[{"train_flops_per_image": flops}]))
    rows = time_to_quality(data, folders)
    base, fast = rows
    assert base[0.5]["images"] == 2500 and base[0.5]["seeds"] == [2000, 3000]  # the median of the two seeds
    assert base[0.8]["seeds"] == [3000, None] and base[0.8]["images"] == float("inf")
    assert fast[0.5]["images"] == 1000 and fast[0.5]["speedup"] == pytest.approx(base[0.5]["flops"] / 2e12)
    assert fast[0.8]["speedup"] is None  # the baseline never reached it on both seeds: no ratio
    # the first arm's final accuracy (mean of 0.85 and 0.7) as a threshold: base counts its full budget (3000 per
    # seed), fast reaches 0.775 at 2000 on both seeds → (3000 × 3e9) / (2000 × 2e9) = 2.25×
    assert base["first"]["threshold"] == pytest.approx(0.775) and base["first"]["seeds"] == [3000, 3000]
    assert fast["first"]["seeds"] == [2000, 2000] and fast["first"]["speedup"] == pytest.approx(2.25)
    md = ttq_markdown(rows, {})
    assert "not reached" in md and "to base's final (0.775)" in md


def test_repa_teacher_features_of_a_sharded_imagenet_store(tmp_path):
    """The real path: a fabricated ImageNet tree (with unreadable files precompute skipped) → a sharded store → a
    tiny DINOv2's patch features, row i = store sample i; then read back from the store folder, not recomputed."""
    from _fake_imagenet import make_tree
    from transformers import Dinov2Config, Dinov2Model

    from microt2i.data.precompute import precompute
    from microt2i.data.store import open_store
    from microt2i.world.pixels import tensor_to_images
    from microt2i.data.teacher import teacher_features

    make_tree(tmp_path / "in")
    data = apply_overrides(presets.get("world-tiny"), [
        "data.source=imagenet", f"data.root={tmp_path / 'in'}", f"data.store_dir={tmp_path / 'store'}",
        "data.captions=aio", "data.codec=pixel", "data.resolution=16", "data.text_len=8", "data.shard_size=4",
        "data.store_dtype=float32"]).data
    precompute(data, log=lambda *_: None)
    store = open_store(data.store_dir)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=4, image_size=16)).save_pretrained(tmp_path / "dino")
    teacher = load_teacher(str(tmp_path / "dino"))
    logs = []
    feats = teacher_features(data, store, 2, teacher, log=logs.append)
    assert feats.shape == (len(store), 4, 16) and len(store) > 4  # several shards
    images = tensor_to_images(store.batch(np.arange(len(store)))["x0"])  # the pixel codec stores the images
    assert torch.allclose(feats.float(), teacher(images, 2).float(), atol=2e-2)
    assert (tmp_path / "store" / f"repa-{teacher.key}-g2.safetensors").is_file()
    logs.clear()
    assert torch.equal(teacher_features(data, store, 2, teacher, log=logs.append), feats) and not logs


# --------------------------------------------------------------------------------------------------------- RoPE


def test_rope_logits_depend_only_on_the_offset_between_tokens():
    grid, dh = 4, 8
    ang = rope_angles(grid, dh)  # [16, 4]
    assert ang.shape == (16, 4)
    q0, k0 = torch.randn(dh, dtype=torch.float64), torch.randn(dh, dtype=torch.float64)
    rot = rope_rotation(ang[None].double())
    q = apply_rope(q0.expand(1, 16, 1, dh), rot)[0, :, 0]  # the same query at every position
    k = apply_rope(k0.expand(1, 16, 1, dh), rot)[0, :, 0]
    logits = q @ k.T  # [16, 16]
    rc = [(n // grid, n % grid) for n in range(16)]
    by_offset = {}
    for i in range(16):
        for j in range(16):
            by_offset.setdefault((rc[j][0] - rc[i][0], rc[j][1] - rc[i][1]), []).append(float(logits[i, j]))
    assert all(max(v) - min(v) < 1e-5 for v in by_offset.values())  # a function of the offset only
    assert torch.allclose(logits.diagonal(), (q0 @ k0).expand(16))  # offset 0: the plain dot product
    assert len({round(v[0], 6) for v in by_offset.values()}) > 20  # and it does depend on the offset
    # norms are kept: a rotation per channel pair
    assert torch.allclose(q.norm(dim=1), q0.norm().expand(16))


def test_rope_follows_routed_and_masked_tokens():
    net = _dit(rope=True, route_ratio=0.5, route_start=1, route_end=3)
    x, t, y, m = _inputs()
    full = net(x, t, y, m)
    assert torch.allclose(net(x, t, y, m, route_mask=torch.ones(3, 16, dtype=torch.bool)), full, atol=1e-6)
    # without RoPE the same weights give another function: the rotation reaches the output
    plain = _dit(route_ratio=0.5, route_start=1, route_end=3)
    plain.load_state_dict(net.state_dict())
    for mod in (net, plain):
        torch.nn.init.normal_(mod.final_layer.linear.weight)
    assert not torch.allclose(net(x, t, y, m), plain(x, t, y, m), atol=1e-4)
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[:, ::2] = True
    assert net(x, t, y, m, keep_mask=keep).shape == (3, 8, 12)


@pytest.mark.parametrize("extra,match", [
    (["model.rope=true", "model.width=120", "model.heads=4"], "divisible by 4"),
])
def test_bad_rope_settings_are_one_clear_error(extra, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(presets.get("world-s"), extra)
    with pytest.raises(ConfigError, match="DiT-I only"):
        MicroDiTConfig(rope=True)
    with pytest.raises(ConfigError, match="DiT-I only"):
        MicroDiTConfig(mix_ffn=True)


# --------------------------------------------------------------------------------------------------------- Mix-FFN


def test_mix_ffn_is_a_depthwise_conv_over_the_token_grid_with_missing_tokens_as_zeros():
    from microt2i.models.layers import MixFFN, TokenLayout

    torch.manual_seed(0)
    ffn = MixFFN(4, 6).double()
    B, R, C = 2, 3, 4
    x = torch.randn(B, R * C, 4, dtype=torch.float64)
    ids = torch.arange(R * C).expand(B, -1)
    out = ffn(x, TokenLayout(ids, R, C))
    # reference: the conv written out with explicit neighbours on the zero-padded grid
    h = ffn.fc1(x).view(B, R, C, 6)
    pad = F.pad(h.permute(0, 3, 1, 2), (1, 1, 1, 1))  # [B, 6, R+2, C+2]
    w = ffn.dw.weight[:, 0]  # [6, 3, 3]
    conv = sum(pad[:, :, i:i + R, j:j + C] * w[:, i, j][None, :, None, None] for i in range(3) for j in range(3))
    conv = conv + ffn.dw.bias[None, :, None, None]
    want = ffn.fc2(F.gelu(conv.flatten(2).transpose(1, 2), approximate="tanh"))
    assert torch.allclose(out, want, atol=1e-10)
    # a kept subset: the same as zeroing the dropped tokens' fc1 outputs on the full grid, then keeping
    keep = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0]] * B, dtype=torch.bool)
    sub = ffn(keep_tokens(x, keep), TokenLayout(ids, R, C).keep(keep))
    h_full = ffn.fc1(x) * keep[..., None]
    grid = ffn.dw(h_full.transpose(1, 2).reshape(B, 6, R, C)).flatten(2).transpose(1, 2)
    assert torch.allclose(sub, keep_tokens(ffn.fc2(F.gelu(grid, approximate="tanh")), keep), atol=1e-10)


def test_mix_ffn_dit_runs_masked_and_routed():
    net = _dit(mix_ffn=True, rope=True, route_ratio=0.5, route_start=1, route_end=3)
    x, t, y, m = _inputs()
    full = net(x, t, y, m)
    assert torch.allclose(net(x, t, y, m, route_mask=torch.ones(3, 16, dtype=torch.bool)), full, atol=1e-6)
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[:, 1::2] = True
    route = sample_route_mask(net.config, 3, 8, generator=torch.Generator().manual_seed(0))
    assert net(x, t, y, m, keep_mask=keep, route_mask=route).shape == (3, 8, 12)


def test_text_film_starts_as_a_no_op_and_then_carries_the_caption():
    net = _dit(text_film=True)
    torch.nn.init.normal_(net.final_layer.linear.weight)
    plain = _dit()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("y_pool.")})
    x, t, y, m = _inputs()
    assert torch.allclose(net(x, t, y, m), plain(x, t, y, m), atol=1e-6)  # zero-initialised output layer
    torch.nn.init.normal_(net.y_pool.fc2.weight)
    out = net(x, t, y, m)
    assert not torch.allclose(out, plain(x, t, y, m), atol=1e-4)
    # the pooled caption honours the mask: padded tokens do not change it
    y2 = y.clone()
    m2 = m.clone()
    m2[:, -1] = False
    y2[:, -1] = 100.0
    y3 = y.clone()
    y3[:, -1] = -100.0
    assert torch.allclose(net(x, t, y2, m2), net(x, t, y3, m2), atol=1e-5)
    with pytest.raises(ConfigError, match="DiT-I only"):
        MicroDiTConfig(text_film=True)
