"""Long-run hygiene: a NaN / Inf in a batch or a gradient skips that optimizer step, is counted in
stats.jsonl and the run goes on; a streak of `train.nan_abort_streak` aborts with a clear error; resume then works."""

import json

import pytest
import torch
from test_train import fake_store, tiny_cfg

import microt2i.train.loop as loop
from microt2i.config import apply_overrides
from microt2i.data.sampler import ResumableSampler
from microt2i.train.state import load_latest

QUIET = {"progress": False, "log": lambda *_: None}


def _stats(run_dir) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "stats.jsonl").read_text().splitlines()]


def _adam_steps(run_dir) -> int:
    return int(load_latest(run_dir)["optimizer"]["state"][0]["step"])


def _finite(sd: dict) -> bool:
    return all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def train(cfg, run_dir, store, **kw):
    return loop.train(cfg, run_dir, store=store, **QUIET, **kw)


def test_nan_and_inf_samples_skip_exactly_their_steps(tmp_path):
    cfg, store = tiny_cfg(), fake_store()
    store.latents[3] = float("nan")
    store.text_tokens[5] = float("inf")
    t = cfg.train
    sampler = ResumableSampler(len(store), seed=t.seed)
    # closed form: a step is skipped iff one of its micro-batches holds sample 3 or 5
    expected = sum(bool({3, 5} & {int(i) for r in range(2) for i in sampler.indices(nimg + r * 4, 4)})
                   for nimg in range(0, t.total_nimg, t.batch_size))
    assert 0 < expected < t.total_nimg // t.batch_size
    out = train(cfg, tmp_path, store)
    assert out["finished"] and out["nan_skips"] == expected
    stats = _stats(tmp_path)
    assert stats[-1]["nan_skips"] == expected and [s["nan_skips"] for s in stats] == sorted(s["nan_skips"] for s in stats)
    assert _adam_steps(tmp_path) == t.total_nimg // t.batch_size - expected  # skipped steps never reached Adam
    assert _finite(out["net"].state_dict()) and _finite(out["ema"].state_dict())


def test_non_finite_gradients_are_skipped_and_counted(tmp_path, monkeypatch):
    cfg, store = tiny_cfg(), fake_store()
    poisoned = {3: float("inf"), 9: float("nan"), 10: float("nan")}  # backward calls (2 per step: micro-batch 4 of 8)
    calls = []

    def poison(grad):
        calls.append(1)
        return grad * poisoned.get(len(calls), 1.0)

    def build_with_hook(model_cfg):
        net = build(model_cfg)
        next(net.parameters()).register_hook(poison)
        return net

    build = loop.build
    monkeypatch.setattr(loop, "build", build_with_hook)
    out = train(cfg, tmp_path, store)
    assert len(calls) == 2 * 12 and out["nan_skips"] == 2  # calls 3 (step 2) and 9-10 (step 5)
    assert _adam_steps(tmp_path) == 12 - 2
    assert all(s["loss"] == s["loss"] for s in _stats(tmp_path))  # the losses themselves stayed finite
    assert _finite(out["net"].state_dict())


def test_streak_aborts_with_a_clear_error_and_the_run_resumes(tmp_path):
    cfg, clean = tiny_cfg("train.ckpt_every_nimg=16", "train.nan_abort_streak=3"), fake_store()
    bad = fake_store()
    bad.latents[:] = float("nan")
    train(cfg, tmp_path, clean, stop_nimg=16)
    with pytest.raises(FloatingPointError, match=r"3 consecutive non-finite steps at 32 images; lower train.lr, "
                                                 r"raise train.grad_clip .* then resume from"):
        train(cfg, tmp_path, bad)  # steps at 16, 24 (checkpoint at 32) and 32 are all non-finite
    assert load_latest(tmp_path)["nimg"] == 32 and load_latest(tmp_path)["nan_skips"] == 2
    out = train(cfg, tmp_path, clean)  # the data fixed: resume from the checkpoint at 32 images
    assert out["finished"] and out["nimg"] == 96 and out["nan_skips"] == 2
    stats = _stats(tmp_path)
    assert [s["nimg"] for s in stats] == list(range(16, 97, 16))  # one line per interval, none duplicated
    assert _finite(out["ema"].state_dict())


def test_divergence_is_never_a_success_and_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    from microt2i.cli import main
    from microt2i.train.state import list_checkpoints

    cfg, store = tiny_cfg("train.ckpt_every_nimg=16", "train.lr_schedule=constant"), fake_store()
    train(cfg, tmp_path, store, stop_nimg=16)
    good = list_checkpoints(tmp_path)[0].read_bytes()
    blown = apply_overrides(cfg, ["train.lr=1e30"])  # finite, absurd weights: every later step is non-finite
    with pytest.raises(FloatingPointError, match=r"training diverged at 96 images: the EMA network's denoised "
                                                 r"images overflow .*nothing was exported. Lower train.lr \(now "
                                                 r"1e\+30\).*resumes from training-state-000000000016.pt, the newest "
                                                 r"finite checkpoint"):
        train(blown, tmp_path, store)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["training-state-000000000016.pt"]  # never pruned
    assert list_checkpoints(tmp_path)[0].read_bytes() == good and not (tmp_path / "ema").exists()
    out = train(cfg, tmp_path, store)  # "lower the lr and resume" works
    assert out["finished"] and _finite(out["ema"].state_dict()) and (tmp_path / "ema").is_dir()


def test_nan_weights_at_the_end_fail_the_command(tmp_path, monkeypatch, capsys):
    from microt2i.cli import main

    real_update = loop.EMA.update

    def poisoned(self, model, nimg):  # the EMA goes NaN in the last step
        real_update(self, model, nimg)
        if nimg >= 128:
            next(self.model.parameters()).data.fill_(float("nan"))

    monkeypatch.setattr(loop.EMA, "update", poisoned)
    rc = main(["train", "world-tiny", "data.num_images=16", "train.threads=1", "--run-dir", str(tmp_path),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "FloatingPointError: training diverged at 128 images: NaN / Inf in 1 weight tensors (e.g. " \
                      "ema." in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ema").exists()
