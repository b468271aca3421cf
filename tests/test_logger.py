"""train/logger.py: JSONL always, resume truncation, TensorBoard / W&B mirrors (fake modules: neither package is
installed here), asking for a missing one is an error, and the training loop wires it."""

import json
import sys
import types

import numpy as np
import pytest

from microt2i.config import ConfigError
from microt2i.eval.pages import save_grid
from microt2i.train.logger import RunLogger, StatsLog


class FakeWriter:
    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.images, self.closed = log_dir, [], [], False

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def add_image(self, key, img, step, dataformats):
        self.images.append((key, img.shape, step, dataformats))

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tb(monkeypatch):
    writers = []
    mod = types.ModuleType("torch.utils.tensorboard")
    mod.SummaryWriter = lambda log_dir: writers.append(FakeWriter(log_dir)) or writers[-1]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", mod)
    return writers


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def define_metric(self, *a, **k):
            pass

        def log(self, payload):
            calls["log"].append(payload)

        def finish(self):
            calls["finish"] += 1

    mod = types.ModuleType("wandb")
    mod.util = types.SimpleNamespace(generate_id=lambda: f"id{len(calls['init'])}")
    mod.init = lambda **kw: calls["init"].append(kw) or Run()
    mod.Image = lambda path, caption: ("image", path, caption)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return calls


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_statslog_resume_truncates_to_checkpoint(tmp_path):
    path = tmp_path / "stats.jsonl"
    log = StatsLog(path, 0)
    for nimg in (16, 32, 48, 64):
        log.append({"nimg": nimg, "loss": 1.0 / nimg})
    StatsLog(path, 32)  # resuming from the 32-image checkpoint drops the reports after it
    assert [s["nimg"] for s in _lines(path)] == [16, 32]


def test_missing_backends_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        RunLogger(tmp_path, 0, tensorboard=True)
    with pytest.raises(ConfigError, match="pip install wandb"):
        RunLogger(tmp_path, 0, wandb="proj")
    RunLogger(tmp_path, 0).append({"nimg": 8, "loss": 0.5})  # JSONL alone needs nothing
    assert _lines(tmp_path / "stats.jsonl") == [{"nimg": 8, "loss": 0.5}]


def test_mirrors_scalars_and_eval_grids(tmp_path, fake_tb, fake_wandb):
    save_grid(np.zeros((4, 8, 8, 3), np.uint8), tmp_path / "eval" / "grid-000000000064.png", nrow=2, upscale=1)
    log = RunLogger(tmp_path, 0, tensorboard=True, wandb="proj", config={"name": "x"})
    log.append({"nimg": 32, "step": 2, "loss": 0.25, "lr": 1e-3, "note": "text is not a scalar"})
    log.append({"nimg": 64, "eval/geneval": 0.5, "eval/grid": "eval/grid-000000000064.png"})
    log.close()
    tb = fake_tb[0]
    assert tb.log_dir == str(tmp_path / "tensorboard") and tb.closed
    assert sorted(tb.scalars) == [("eval/geneval", 0.5, 64), ("loss", 0.25, 32), ("lr", 1e-3, 32)]
    assert tb.images == [("eval/grid", (2 + 2 * 10, 2 + 2 * 10, 3), 64, "HWC")]
    init = fake_wandb["init"][0]
    assert init["project"] == "proj" and init["resume"] == "allow" and init["config"] == {"name": "x"}
    assert fake_wandb["log"][0] == {"loss": 0.25, "lr": 1e-3, "nimg": 32}
    assert fake_wandb["log"][1]["eval/grid"][0] == "image" and fake_wandb["finish"] == 1
    assert [s["nimg"] for s in _lines(tmp_path / "stats.jsonl")] == [32, 64]
    RunLogger(tmp_path, 64, wandb="proj")  # a resumed run continues the same W&B run
    assert fake_wandb["init"][1]["id"] == init["id"] == (tmp_path / "wandb_id.txt").read_text().strip()


def test_training_loop_logs_every_report_to_tensorboard(tmp_path, fake_tb):
    from test_train import fake_store, tiny_cfg

    from microt2i.train.loop import train

    cfg = tiny_cfg("train.total_nimg=64", "train.tensorboard=true", "train.threads=1")
    train(cfg, tmp_path, store=fake_store(), progress=False, log=lambda *a: None)
    losses = [(s["nimg"], s["loss"]) for s in _lines(tmp_path / "stats.jsonl")]
    assert [(v, step) for k, v, step in fake_tb[0].scalars if k == "loss"] == [(loss, n) for n, loss in losses]
    assert len(losses) == 64 // 16 and fake_tb[0].closed
