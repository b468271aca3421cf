"""Training with image augmentation (ImageNet-T2I §2.2): CutMix gating inside the trainer's one loader (Algorithm 1),
Crop on DiT-I and MicroDiT, exact resume with both on, and the errors for setups that cannot take them."""

import math

import pytest
import torch

from microt2i import presets
from microt2i.augment.crop import box_keep_mask
from microt2i.config import ConfigError, apply_overrides
from microt2i.data.sampler import ResumableSampler
from microt2i.data.store import Store
from microt2i.augment.cutmix import paper_tau_to_sigma
from microt2i.train import loop
from microt2i.train.loop import train
from microt2i.train.state import load_latest

QUIET = {"progress": False, "log": lambda *_: None}


def tiny(*extra, family="dit-i"):
    if family == "microdit":
        return apply_overrides(presets.get("world-microdit-tiny"), [
            "model.text_dim=16", "model.width=32", "model.depth=2", "model.head_dim=16", "model.mixer_width=32",
            "model.moe=false", "train.total_nimg=64", "train.batch_size=8", "train.micro_batch=4",
            "train.log_every_nimg=16", "train.ckpt_every_nimg=1000", "train.threads=1", *extra])
    return apply_overrides(presets.get("world-tiny"), [
        "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1",
        "train.total_nimg=64", "train.batch_size=8", "train.micro_batch=4", "train.log_every_nimg=16",
        "train.ckpt_every_nimg=1000", "train.ema_decay=0.9", "train.threads=1", *extra])


def stores(n=12, times=2, res=16, L=6, D=16):
    """A base store whose image i is the constant i/100 and a CutMix store whose composite k is 10 + k."""
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, L, dtype=torch.bool)
    empty = (torch.zeros(1, L, D).half(), torch.tensor([[True] + [False] * (L - 1)]))
    base = Store(torch.arange(n).float().div(100).view(n, 1, 1, 1).expand(n, 3, res, res).clone(),
                 torch.randn(n, L, D, generator=g).half(), mask, [f"c{i}" for i in range(n)], {}, *empty)
    m = n * times
    cm = Store((10 + torch.arange(m).float()).view(m, 1, 1, 1).expand(m, 3, res, res).clone(),
               torch.randn(m, L, D, generator=g).half(), torch.ones(m, L, dtype=torch.bool),
               [f"cm{k}" for k in range(m)], {}, *empty)
    return base, cm


class Recorder:
    """The trainer's objective, recording what each micro-batch's loss received."""

    def __init__(self, obj):
        self.obj, self.calls = obj, []

    def __getattr__(self, name):
        return getattr(self.obj, name)

    def loss(self, net, x0, tokens, mask, *, sigma, **kw):
        self.calls.append((x0[:, 0, 0, 0].clone(), sigma.clone(), kw))
        return self.obj.loss(net, x0, tokens, mask, sigma=sigma, **kw)


def _record(monkeypatch):
    rec, build = [], loop.build_objective

    def recording(cfg):
        rec.append(Recorder(build(cfg)))
        return rec[-1]

    monkeypatch.setattr(loop, "build_objective", recording)
    return rec


@pytest.mark.parametrize("kind", ["edm", "vp"])
def test_cutmix_gating_in_the_trainer(tmp_path, monkeypatch, kind):
    """Swapped samples are their own source's composites, all above τ, at the rate p·P(σ > σ_τ)."""
    rec = _record(monkeypatch)
    base, cm = stores(n=64, times=2)
    cfg = tiny("augment.cutmix.enabled=true", "augment.cutmix.times=2", f"objective.kind={kind}",
               "train.total_nimg=2048", "train.batch_size=64", "train.micro_batch=64", "train.lr=0")
    train(cfg, tmp_path, store=base, cutmix_store=cm, **QUIET)
    sampler = ResumableSampler(64, seed=cfg.train.seed)
    s_tau, swapped, total = paper_tau_to_sigma(400), 0, 0
    for step, (x0, sigma, _) in enumerate(rec[0].calls):
        idx = torch.as_tensor(sampler.indices(step * 64, 64))
        is_twin = x0 >= 10
        k = (x0[is_twin] - 10).round().long()
        assert torch.equal(k // 2, idx[is_twin])  # a composite of this very source
        assert torch.allclose(x0[~is_twin], idx[~is_twin].float() / 100)
        assert bool((sigma[is_twin] > s_tau).all())
        swapped, total = swapped + int(is_twin.sum()), total + 64
    p_above = 0.6 if kind == "vp" else 1 - 0.5 * (1 + math.erf((math.log(s_tau) + 1.2) / 1.2 / math.sqrt(2)))
    expected = 0.5 * p_above
    assert abs(swapped / total - expected) < 4 * math.sqrt(expected * (1 - expected) / total), swapped / total


def test_crop_reaches_the_network(tmp_path, monkeypatch):
    rec = _record(monkeypatch)
    base, _ = stores()
    cfg = tiny("augment.crop.enabled=true", "augment.crop.p=0.5", "model.crop_cond=true", "train.total_nimg=256")
    train(cfg, tmp_path, store=base, **QUIET)
    cropped = 0
    for _, _, kw in rec[0].calls:
        boxes = kw["crop_tokens"]
        if "keep_mask" in kw:
            n = kw["keep_mask"].sum(1)
            cropped += 1
            assert (n == n[0]).all() and n[0] in (4, 9)  # a 2×2 or 3×3 crop of the 4×4 grid
            assert torch.equal(box_keep_mask(boxes, 4), kw["keep_mask"])
        else:
            assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(4, 4))
    assert 0 < cropped < len(rec[0].calls)


@pytest.mark.parametrize("family,extra", [
    ("dit-i", ["augment.cutmix.enabled=true"]),
    ("dit-i", ["augment.crop.enabled=true", "model.crop_cond=true"]),
    ("microdit", ["augment.crop.enabled=true", "augment.crop.p=1.0", "model.crop_cond=true"]),
    ("microdit", ["augment.cutmix.enabled=true", "augment.crop.enabled=true", "model.crop_cond=true",
                  "objective.kind=flow"]),
])
def test_world_model_trains_with_each_ia(tmp_path, family, extra):
    base, cm = stores()
    cfg = tiny("augment.cutmix.times=2", *extra, family=family)
    out = train(cfg, tmp_path, store=base, cutmix_store=cm, **QUIET)
    assert out["finished"] and out["nan_skips"] == 0
    assert (tmp_path / "ema" / "model.safetensors").exists()


def test_resume_is_bit_exact_with_both_ia(tmp_path):
    base, cm = stores()
    cfg = tiny("augment.cutmix.enabled=true", "augment.cutmix.times=2", "augment.cutmix.p=1.0",
               "augment.crop.enabled=true", "model.crop_cond=true", "train.total_nimg=96")
    train(cfg, tmp_path / "a", store=base, cutmix_store=cm, **QUIET)
    train(cfg, tmp_path / "b", store=base, cutmix_store=cm, stop_nimg=48, **QUIET)
    train(cfg, tmp_path / "b", store=base, cutmix_store=cm, **QUIET)
    a, b = load_latest(tmp_path / "a"), load_latest(tmp_path / "b")
    assert a["nimg"] == b["nimg"] == 96
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_ia_setup_errors(tmp_path):
    base, cm = stores()
    with pytest.raises(ConfigError, match="model.crop_cond=true"):
        train(tiny("augment.crop.enabled=true"), tmp_path / "a", store=base, **QUIET)
    with pytest.raises(ValueError, match="microt2i cutmix"):
        train(tiny("augment.cutmix.enabled=true", "augment.cutmix.times=3"), tmp_path / "b", store=base,
              cutmix_store=cm, **QUIET)


def test_world_cutmix_end_to_end(tmp_path):
    """The real path: world store + composites built with the codec and text encoder on first use, then training."""
    cfg = apply_overrides(presets.get("world-tiny"), [
        f"data.cache_dir={tmp_path / 'cache'}", "data.num_images=16", "augment.cutmix.enabled=true",
        "augment.cutmix.times=2", "augment.crop.enabled=true", "model.crop_cond=true", "train.total_nimg=32",
        "train.batch_size=16", "train.threads=1"])
    out = train(cfg, tmp_path / "run", **QUIET)
    assert out["finished"] and out["nan_skips"] == 0
    assert len(list((tmp_path / "cache" / "stores").glob("cutmix-*.safetensors"))) == 1
