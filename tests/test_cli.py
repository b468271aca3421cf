"""End to end on the CI preset: demo → files → sample from the run; CLI errors are one clear line."""

import json

import pytest
from PIL import Image

from microt2i.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("MICROT2I_CACHE", str(root / "cache"))
    assert main(["demo", "--preset", "world-tiny", "--run-dir", str(root / "run"), "--no-progress"]) == 0
    yield root / "run"
    mp.undo()


def test_demo_writes_every_artifact(demo_run):
    for name in ("grid.png", "loss.png", "report.html", "config.yaml", "metrics.json", "stats.jsonl",
                 "ema/model.safetensors", "ema/config.json", "null_text.safetensors"):
        assert (demo_run / name).is_file(), name
    m = json.loads((demo_run / "metrics.json").read_text())
    assert 0.0 <= m["hit_rate"] <= 1.0 and m["chance_hit_rate"] < 0.02
    assert m["images_seen"] == 128
    html = (demo_run / "report.html").read_text()
    assert "grid.png" in html and "loss.png" in html and "hit_rate" in html
    w, h = Image.open(demo_run / "grid.png").size
    assert w == h and w >= 64


def test_sample_from_a_finished_run(demo_run, tmp_path):
    out = tmp_path / "s.png"
    assert main(["sample", str(demo_run), "--prompt", "A red star on a grey background.", "--prompt", "a blue ring",
                 "--steps", "3", "--out", str(out), "--upscale", "1"]) == 0
    assert Image.open(out).size[0] > 2 * 16


def test_train_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "world-s", "train.lr=5e-4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0005" in out and "family: dit-i" in out


def test_cli_errors_are_one_clear_line(capsys, tmp_path):
    assert main(["train", "world-s", "train.lrr=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.lrr" in err and "Valid keys" in err and "Traceback" not in err
    assert main(["sample", str(tmp_path)]) == 2
    assert "ema/model.safetensors" in capsys.readouterr().err
    assert main(["train", "no-such-preset", "--dry-run"]) == 2
    assert "valid presets" in capsys.readouterr().err
