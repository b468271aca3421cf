"""`train.val_every_nimg` + `data.val_fraction`: held-out loss at fixed σ and noise (train/validation.py)."""

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from microt2i.config import ConfigError
from microt2i.data.holdout import split_indices, train_sampler
from microt2i.data.sampler import ResumableSampler
from microt2i.diffusion.objectives import build_objective
from microt2i.train import loop
from microt2i.train.validation import LEVELS, HeldOutLoss, fixed_sigmas
from test_train import fake_store, tiny_cfg

QUIET = {"progress": False, "log": lambda *_: None}


def test_split_is_disjoint_deterministic_and_off_by_default():
    tr, va = split_indices(40, 0.1, seed=3)
    assert len(va) == 4 and not set(tr) & set(va) and sorted([*tr, *va]) == list(range(40))
    assert np.array_equal(split_indices(40, 0.1, seed=3)[1], va) and not np.array_equal(split_indices(40, 0.1, 4)[1], va)
    # no split: exactly the sampler (and so the data order) of a run without one
    cfg = tiny_cfg()
    assert np.array_equal(train_sampler(cfg, 12).indices(0, 100), ResumableSampler(12, seed=cfg.train.seed).indices(0, 100))
    s = train_sampler(tiny_cfg("data.val_fraction=0.25"), 12)
    assert set(s.indices(0, 500)) == set(split_indices(12, 0.25, 0)[0])  # every epoch: the training split only
    with pytest.raises(ConfigError, match="leaving none to train on"):
        split_indices(1, 0.5)


def test_fixed_levels_are_the_training_distributions_quantiles():
    cfg = tiny_cfg()  # EDM: ln σ ~ N(P_mean, P_std²)
    o = cfg.objective
    want = [math.exp(o.p_mean + o.p_std * NormalDist().inv_cdf(q)) for q in LEVELS]
    got = fixed_sigmas(build_objective(o)).tolist()
    assert got == pytest.approx(want, rel=0.05)
    assert torch.equal(fixed_sigmas(build_objective(o)), fixed_sigmas(build_objective(o)))


@pytest.mark.parametrize("bad, msg", [(["train.val_every_nimg=16"], "needs a held-out split: set data.val_fraction"),
                                      (["data.val_fraction=0.9"], "must be in \\[0, 0.5\\]")])
def test_bad_validation_settings_are_one_clear_error(tmp_path, bad, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        loop.train(tiny_cfg(*bad), tmp_path, store=fake_store(), **QUIET)
    assert "\n" not in str(e.value)


def test_held_out_loss_is_logged_deterministic_and_never_trained_on(tmp_path, monkeypatch, one_thread):
    store = fake_store(n=16)
    cfg = tiny_cfg("data.val_fraction=0.25", "train.val_every_nimg=32", "train.val_n=4")
    held = set(split_indices(16, 0.25, cfg.data.seed)[1].tolist())
    seen = []
    real = loop.micro_batch

    def spy(cfg_, objective, store_, cutmix, idx, *a, **k):
        seen.extend(np.asarray(idx).tolist())
        return real(cfg_, objective, store_, cutmix, idx, *a, **k)

    monkeypatch.setattr(loop, "micro_batch", spy)
    out = loop.train(cfg, tmp_path / "val", store=store, **QUIET)
    assert len(seen) == cfg.train.total_nimg and not set(seen) & held  # 96 images, none held out
    lines = [json.loads(ln) for ln in (tmp_path / "val" / "stats.jsonl").read_text().splitlines()]
    val = [ln for ln in lines if "val_loss" in ln]
    assert [ln["nimg"] for ln in val] == [32, 64, 96] and all(math.isfinite(ln["val_loss"]) for ln in val)
    assert len([k for k in val[0] if k.startswith("val_loss/sigma_")]) == len(LEVELS)
    # a function of the weights only: the same network scores the same, twice; training is untouched by it
    h = HeldOutLoss(cfg, store, build_objective(cfg.objective), torch.device("cpu"))
    a, b = h(out["net"], 96), h(out["net"], 96)
    assert a == b and a["val_loss"] == pytest.approx(np.mean([a[k] for k in a if "/sigma_" in k]))
    monkeypatch.setattr(loop, "micro_batch", real)
    plain = loop.train(tiny_cfg("data.val_fraction=0.25"), tmp_path / "plain", store=store, **QUIET)
    for (k, pa), pb in zip(plain["net"].state_dict().items(), out["net"].state_dict().values()):
        assert torch.equal(pa, pb), k
    from microt2i.report import run_report

    assert "held-out loss (fixed σ and noise)" in run_report(tmp_path / "val").read_text()
