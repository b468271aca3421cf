"""The training step never reads a tensor back to the host (issue: a GPU must not wait for the CPU every step).

`torch.cuda.set_sync_debug_mode` only exists on CUDA, so on a CPU we count what would be a sync there:
- every scalar read of a tensor (`.item()`, `float(t)`, `int(t)`, `bool(t)`, `if t:`, also those made inside torch)
  is the op `aten._local_scalar_dense`, seen by a `TorchDispatchMode`;
- `.tolist()`, `.cpu()`, `.numpy()` and `__array__` do not dispatch to it on a CPU tensor, so those methods are patched
  to count their calls (torch 2.13 lets `torch.Tensor`'s Python methods be replaced).
Two runs differ only in their number of steps (logging and checkpointing only at the end): set-up, the final
statistics line and the checkpoint's health checks read tensors alike in both, so any difference is per step.
"""

import collections
import traceback

import torch
from test_train import fake_store, tiny_cfg
from torch.utils._python_dispatch import TorchDispatchMode

import microt2i.train.loop as loop

_METHODS = ("tolist", "cpu", "numpy", "__array__")


class _CountHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    def hit(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "microt2i" in f.filename]
        where = f"{frames[-1].filename.rsplit('microt2i/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
        self.sites[f"{what} at {where}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.hit("scalar read")
        return func(*args, **(kwargs or {}))


def _host_reads(tmp_path, monkeypatch, nimg: int, *overrides) -> collections.Counter:
    counter = _CountHostReads()
    for name in _METHODS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            counter.hit(f".{_name}()")
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    cfg = tiny_cfg(f"train.total_nimg={nimg}", "train.log_every_nimg=100000", "train.ckpt_every_nimg=100000",
                   *overrides)
    with counter:
        out = loop.train(cfg, tmp_path / str(nimg), store=fake_store(), progress=False, log=lambda *_: None)
    monkeypatch.undo()
    assert out["finished"] and out["step"] == nimg // 8
    return counter.sites


def test_the_training_step_reads_nothing_back_to_the_host(tmp_path, monkeypatch):
    few, many = _host_reads(tmp_path, monkeypatch, 16), _host_reads(tmp_path, monkeypatch, 64)  # 2 vs 8 steps
    assert sum(few.values()) > 0  # the counter sees the end-of-run reads (stats line, health checks)
    per_step = {k: many[k] - few.get(k, 0) for k in many if many[k] != few.get(k, 0)}
    assert per_step == {}, f"host syncs per step (over 6 extra steps): {per_step}"


def test_a_host_read_in_the_step_is_caught(tmp_path, monkeypatch):
    """The counter is not blind: one `.item()` per step (the old NaN guard's `if torch.isfinite(norm):`) shows up 6×."""
    real_step = loop.NanGuard.step

    def step_with_item(self, grad_norm, nimg):
        grad_norm.item()
        real_step(self, grad_norm, nimg)

    monkeypatch.setattr(loop.NanGuard, "step", step_with_item)
    few = _host_reads(tmp_path, monkeypatch, 16)
    monkeypatch.setattr(loop.NanGuard, "step", step_with_item)
    many = _host_reads(tmp_path, monkeypatch, 64)
    extra = {k: many[k] - few.get(k, 0) for k in many if many[k] != few.get(k, 0)}
    assert list(extra.values()) == [6] and all(k.startswith("scalar read at train/loop.py") for k in extra)
