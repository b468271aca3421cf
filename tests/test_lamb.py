"""LAMB (train/optim.py) against its update formula, its parameter groups, and CAD's cosine `rate`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from microt2i import presets
from microt2i.config import ConfigError, apply_overrides
from microt2i.models import CAD_I_CONFIGS, build
from microt2i.train.optim import Lamb, lr_at, make_optimizer


def lamb_reference(theta, grads, *, lr, betas, eps, wd, trust):
    """You et al. 2020 Alg. 2 with Adam's bias correction, written out in numpy float64 (one tensor)."""
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        u = (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps) + wd * theta
        w_norm, u_norm = np.linalg.norm(theta), np.linalg.norm(u)
        r = w_norm / u_norm if trust and w_norm > 0 and u_norm > 0 else 1.0
        theta = theta - lr * r * u
    return theta


def test_lamb_matches_the_update_formula():
    rng = np.random.default_rng(0)
    W0, b0, z0 = rng.normal(size=(3, 4)), rng.normal(size=4), np.zeros((2, 2))
    gW, gb, gz = ([rng.normal(size=x.shape) * s for s in (1.0, 0.1, 3.0)] for x in (W0, b0, z0))
    W, b, z = (torch.tensor(x, requires_grad=True) for x in (W0, b0, z0))
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-6)
    opt = Lamb([{"params": [W, z], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "trust_ratio": False}],
               **kw)
    for step in range(3):
        for p, g in ((W, gW), (b, gb), (z, gz)):
            p.grad = torch.tensor(g[step])
        opt.step()
    np.testing.assert_allclose(W.detach().numpy(), lamb_reference(W0, gW, wd=0.1, trust=True, **kw), rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), lamb_reference(b0, gb, wd=0.0, trust=False, **kw), rtol=1e-12)
    # a zero-initialised tensor has ‖θ‖ = 0: its first step is a plain Adam step (trust ratio 1), then adapts
    np.testing.assert_allclose(z.detach().numpy(), lamb_reference(z0, gz, wd=0.1, trust=True, **kw), rtol=1e-12)
    assert opt.state[W]["step"] == 3


def test_trust_ratio_makes_the_step_scale_free():
    # With the ratio, each step moves a tensor by lr·‖θ‖ whatever the gradient's scale (You et al. §3)
    for scale in (1e-4, 1e4):
        w = torch.full((8,), 2.0, dtype=torch.float64, requires_grad=True)
        opt = Lamb([w], lr=0.05, weight_decay=0.0)
        w.grad = torch.linspace(-1, 1, 8, dtype=torch.float64) * scale
        before = w.detach().clone()
        opt.step()
        assert (w.detach() - before).norm().item() == pytest.approx(0.05 * before.norm().item(), rel=1e-9)


def test_make_optimizer_groups_for_lamb():
    cfg = presets.get("world-cad-tiny").train
    assert cfg.optimizer == "lamb"
    model = build(CAD_I_CONFIGS["world-cad-tiny"])
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, Lamb)
    by_trust = {g["trust_ratio"]: g for g in opt.param_groups}
    assert all(p.ndim >= 2 for p in by_trust[True]["params"]) and by_trust[True]["weight_decay"] == cfg.weight_decay
    assert all(p.ndim == 1 for p in by_trust[False]["params"]) and by_trust[False]["weight_decay"] == 0.0
    norm_and_bias = {id(model.data_norm.weight), id(model.out.bias), id(model.refiner[0].ls1.gamma)}
    assert norm_and_bias <= {id(p) for p in by_trust[False]["params"]}  # norms, biases, LayerScale: no decay
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())
    adamw = make_optimizer(model, apply_overrides(presets.get("world-cad-tiny"), ["train.optimizer=adamw"]).train)
    assert isinstance(adamw, torch.optim.AdamW)
    with pytest.raises(ConfigError, match="adamw, lamb"):
        apply_overrides(presets.get("world-tiny"), ["train.optimizer=sgd"])


def test_cosine_rate_is_cads_schedule():
    # CAD: lr·½(1 + cos(rate·π·progress)) after the warm-up; rate 0.7 ends at ½(1 + cos 0.7π) ≈ 0.206·lr
    cfg = apply_overrides(presets.get("world-tiny"), [
        "train.lr=1e-3", "train.warmup_nimg=100", "train.total_nimg=1100", "train.batch_size=10",
        "train.cosine_rate=0.7"]).train
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(600, cfg) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(0.35 * math.pi)))
    assert lr_at(1100, cfg) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(0.7 * math.pi)))
    assert lr_at(1100, cfg) / 1e-3 == pytest.approx(0.2061, abs=1e-4)
    floor = apply_overrides(presets.get("world-tiny"), ["train.cosine_rate=0.7", "train.min_lr_ratio=0.1"]).train
    end = 0.5 * (1 + math.cos(0.7 * math.pi))
    assert lr_at(floor.total_nimg, floor) == pytest.approx(floor.lr * (0.1 + 0.9 * end))
    assert presets.get("cad-i-256").train.cosine_rate == 0.7
    with pytest.raises(ConfigError, match="cosine_rate"):
        apply_overrides(presets.get("world-tiny"), ["train.cosine_rate=0"])
