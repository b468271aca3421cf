import math

import pytest
import torch

from microt2i import presets
from microt2i.config import apply_overrides
from microt2i.data.store import Store
from microt2i.train.ema import EMA
from microt2i.train.loop import train
from microt2i.train.optim import lr_at
from microt2i.train.state import list_checkpoints, load_latest, save_checkpoint


def tiny_cfg(*extra):
    return apply_overrides(presets.get("world-tiny"), [
        "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1",
        "train.total_nimg=96", "train.batch_size=8", "train.micro_batch=4", "train.log_every_nimg=16",
        "train.ckpt_every_nimg=1000", "train.ema_decay=0.9", "train.warmup_nimg=16", *extra])


def fake_store(n=12, res=16, L=6, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, L, dtype=torch.bool)
    mask[:, 4:] = False
    return Store(torch.rand(n, 3, res, res, generator=g) * 2 - 1, torch.randn(n, L, D, generator=g).half(), mask,
                 [f"caption {i}" for i in range(n)], {}, torch.randn(1, L, D, generator=g).half(),
                 torch.tensor([[True] + [False] * (L - 1)]))


def _state(run_dir):
    p = load_latest(run_dir)
    return p["model"], p["ema"], p["optimizer"], p["nimg"]


def test_resume_is_bit_exact(tmp_path):
    cfg, store = tiny_cfg(), fake_store()
    full = train(cfg, tmp_path / "a", store=store, progress=False, log=lambda *_: None)
    assert full["finished"] and full["nimg"] == 96
    half = train(cfg, tmp_path / "b", store=store, progress=False, log=lambda *_: None, stop_nimg=48)
    assert not half["finished"] and half["nimg"] == 48
    train(cfg, tmp_path / "b", store=store, progress=False, log=lambda *_: None)
    (ma, ea, oa, na), (mb, eb, ob, nb) = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert na == nb == 96
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
        assert torch.equal(ea[k], eb[k]), k
    for i, s in oa["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][i][k]))
    # the stats log of the resumed run has one line per report, none duplicated
    a_lines = (tmp_path / "a" / "stats.jsonl").read_text().splitlines()
    b_lines = (tmp_path / "b" / "stats.jsonl").read_text().splitlines()
    assert len(a_lines) == len(b_lines) == 96 // 16
    assert (tmp_path / "b" / "ema" / "model.safetensors").exists()


def test_resume_refuses_a_different_model(tmp_path):
    store = fake_store()
    train(tiny_cfg(), tmp_path, store=store, progress=False, log=lambda *_: None, stop_nimg=16)
    with pytest.raises(ValueError, match="different `model` config"):
        train(tiny_cfg("model.width=64"), tmp_path, store=store, progress=False, log=lambda *_: None)


def test_tiny_model_overfits_a_few_images(tmp_path):
    """Four images with distinct captions: after training, sampling each caption reproduces its image."""
    from _memorise import memorisation_errors, ramp_images

    store = fake_store(n=4, res=8, seed=1)
    store.latents = ramp_images()
    cfg = tiny_cfg("data.resolution=8", "model.input_size=8", "model.patch_size=2", "model.width=64", "model.depth=2",
                   "model.heads=4", "train.total_nimg=4800", "train.batch_size=16", "train.micro_batch=0",
                   "train.lr=3e-3", "train.warmup_nimg=160", "train.ema_decay=0.95", "objective.cond_drop=0.0",
                   "train.log_every_nimg=480", "eval.steps=12", "eval.cfg_scale=1.0")
    out = train(cfg, tmp_path, store=store, progress=False, log=lambda *_: None)
    import json
    losses = [json.loads(x)["loss"] for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.25 * losses[0]
    err = memorisation_errors(out["ema"], cfg, store, "zero")
    assert (err.argmin(1) == range(4)).all(), err
    assert err.diagonal().max() < 25, err


def test_lr_schedule_closed_form():
    cfg = apply_overrides(presets.get("world-tiny"), ["train.lr=1e-3", "train.warmup_nimg=100", "train.total_nimg=1100",
                                                      "train.batch_size=10", "train.min_lr_ratio=0.1"])
    t = cfg.train
    assert lr_at(0, t) == pytest.approx(1e-3 * 10 / 110)
    assert lr_at(100, t) == pytest.approx(1e-3)
    assert lr_at(600, t) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lr_at(1100, t) == pytest.approx(1e-4)
    const = apply_overrides(cfg, ["train.lr_schedule=constant"]).train
    assert lr_at(900, const) == 1e-3


def test_ema_update_closed_form():
    a = torch.nn.Linear(2, 2)
    ema = EMA(a, decay=0.9, start_nimg=10)
    with torch.no_grad():
        a.weight.fill_(1.0)
    ema.update(a, nimg=5)  # before start: copy
    assert torch.equal(ema.model.weight, a.weight)
    with torch.no_grad():
        a.weight.fill_(2.0)
    ema.update(a, nimg=20)
    assert torch.allclose(ema.model.weight, torch.full((2, 2), 0.9 * 1.0 + 0.1 * 2.0))


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for n in (10, 20, 30):
        save_checkpoint(tmp_path, n, {"nimg": n, "w": torch.ones(2) * n}, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["training-state-000000000020.pt", "training-state-000000000030.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "training-state-000000000040.pt").write_bytes(b"torn")  # unreadable newest falls back
    assert load_latest(tmp_path)["nimg"] == 30
