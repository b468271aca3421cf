import json

import numpy as np
import pytest
import torch

from microt2i import presets
from microt2i.config import ConfigError, apply_overrides
from microt2i.models import build, save_pretrained
from microt2i.train.finetune import init_run, interpolate_positions
from microt2i.world.grid import world_background_share
from microt2i.train.loop import train
from microt2i.train.optim import lr_at
from microt2i.train.state import load_latest

QUIET = dict(progress=False, log=lambda *_: None)


def _tiny(tmp_path, *extra):
    return apply_overrides(presets.get("world-tiny"), [
        "data.num_images=32", f"data.cache_dir={tmp_path / 'cache'}", "train.threads=1", "train.total_nimg=48",
        "train.log_every_nimg=16", "train.ckpt_every_nimg=1000", "eval.every_nimg=0", *extra])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished world-tiny run (weights, EMA, AdamW moments) to fine-tune from."""
    tmp = tmp_path_factory.mktemp("src")
    train(_tiny(tmp, "train.ema_decay=0.5"), tmp / "run", **QUIET)
    return tmp


def test_weights_init_new_schedule_and_frozen_parts(source, tmp_path):
    src = load_latest(source / "run")
    cfg = _tiny(source, f"train.init={source / 'run'}", "train.lr=3e-4", "train.warmup_nimg=32",
                "train.freeze=[t_embedder, blocks.0.]")
    assert init_run(cfg, tmp_path / "ft") == "weights"
    seed = load_latest(tmp_path / "ft")
    assert seed["nimg"] == 0 and seed["optimizer"]["state"] == {}
    assert all(torch.equal(seed["model"][k], v) and torch.equal(seed["ema"][k], v) for k, v in src["ema"].items())
    out = train(cfg, tmp_path / "ft", **QUIET)
    after = out["net"].state_dict()
    for k, v in src["ema"].items():  # frozen parts keep the source's weights, the rest trained
        frozen = k.startswith(("t_embedder", "blocks.0."))
        assert torch.equal(after[k], v) == frozen, k
    stats = [json.loads(ln) for ln in (tmp_path / "ft" / "stats.jsonl").read_text().splitlines()]
    assert stats[0]["lr"] == pytest.approx(lr_at(0, cfg.train)) == pytest.approx(3e-4 * 16 / 48)  # schedule from 0
    assert init_run(cfg, tmp_path / "ft") is None  # a run with checkpoints resumes; the init is not read again
    info = json.loads((tmp_path / "ft" / "init.json").read_text())
    assert info["mode"] == "weights" and info["kind"] == "run"


def test_state_mode_moves_moments_by_parameter_name(source, tmp_path):
    src = load_latest(source / "run")
    cfg = _tiny(source, f"train.init={source / 'run'}", "train.init_mode=state", "train.freeze=[x_embedder]")
    init_run(cfg, tmp_path / "ft")
    seed = load_latest(tmp_path / "ft")
    from microt2i.train.finetune import _meta_net, _optimizer_names

    src_names = _optimizer_names(_meta_net(cfg.model), cfg.train)
    new_names = _optimizer_names(_meta_net(cfg.model, cfg.train.freeze), cfg.train)
    assert len(new_names) == len(src_names) - 2  # x_embedder weight + bias are not optimised
    for i, name in enumerate(new_names):
        j = src_names.index(name)
        assert torch.equal(seed["optimizer"]["state"][i]["exp_avg"], src["optimizer"]["state"][j]["exp_avg"])
    assert all(torch.equal(seed["model"][k], v) for k, v in src["model"].items())  # raw weights, not the EMA
    assert seed["optimizer"]["param_groups"][0]["lr"] == cfg.train.lr
    assert train(cfg, tmp_path / "ft", **QUIET)["finished"]


def test_interpolate_positions_closed_forms():
    g, d = 4, 3
    ys, xs = torch.meshgrid(torch.arange(g) + 0.5, torch.arange(g) + 0.5, indexing="ij")
    table = torch.stack([xs, ys, torch.full_like(xs, 2.0)], -1).reshape(g * g, d)
    assert torch.allclose(interpolate_positions(table, g * g), table)
    up = interpolate_positions(table, 64).reshape(8, 8, d)
    assert torch.allclose(up[..., 2], torch.full((8, 8), 2.0))  # constants stay constant
    centres = (torch.arange(8) + 0.5) / 2  # the new pixel centres on the old grid's scale
    inner = slice(2, 6)  # away from the clamped border the ramp is kept (to Keys' a = −0.75 overshoot) and monotone
    assert torch.allclose(up[inner, inner, 0], centres[None, inner].expand(4, 4), atol=0.1)
    assert (up[:, 1:, 0] > up[:, :-1, 0]).all() and torch.allclose(up[..., 1], up[..., 0].T)
    with pytest.raises(ValueError, match="square"):
        interpolate_positions(torch.zeros(10, 2), 16)


def test_resolution_change_interpolates_cad_positions_and_refuses_mismatches(tmp_path):
    small = presets.get("world-cad-tiny")
    net = build(small.model)
    save_pretrained(net, tmp_path / "export")
    big = apply_overrides(small, ["model.input_size=32", "data.resolution=32", f"train.init={tmp_path / 'export'}"])
    init_run(big, tmp_path / "ft", log=lambda *_: None)
    seed = load_latest(tmp_path / "ft")
    grid = small.model.input_size // small.model.patch_size
    want = interpolate_positions(net.state_dict()["data_pos"], 4 * grid * grid)
    assert torch.equal(seed["model"]["data_pos"], want)
    assert json.loads((tmp_path / "ft" / "init.json").read_text())["interpolated"] == ["data_pos"]
    bigger = build(big.model)
    bigger.load_state_dict(seed["model"])  # every other weight fits as is
    with pytest.raises(ConfigError, match="init_mode=state"):
        init_run(apply_overrides(big, ["train.init_mode=state"]), tmp_path / "ft2")
    with pytest.raises(ConfigError, match="cad-i"):
        init_run(apply_overrides(presets.get("world-tiny"), [f"train.init={tmp_path / 'export'}"]), tmp_path / "ft3")
    with pytest.raises(ValueError, match="architectures differ"):
        init_run(apply_overrides(small, ["model.latent_dim=96", f"train.init={tmp_path / 'export'}"]), tmp_path / "ft4")
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        init_run(apply_overrides(small, [f"train.init={tmp_path}"]), tmp_path / "ft5")
    with pytest.raises(ConfigError, match="top-level modules"):
        train(apply_overrides(presets.get("world-tiny"), ["train.freeze=[nope]", f"data.cache_dir={tmp_path}"]),
              tmp_path / "ft6", **QUIET)


def test_world_style_finetune_moves_samples_to_the_subset(tmp_path):
    """The fine-tune story at tiny scale, through the CLI: pre-train on the world, fine-tune on its slate-background
    subset (an ingested sidecar folder), and held-out prompts of other backgrounds come out on slate."""
    from microt2i.cli import main

    pre = _tiny(tmp_path, "data.num_images=256", "train.total_nimg=1536", "train.log_every_nimg=512")
    train(pre, tmp_path / "pre", **QUIET)
    assert main(["ingest", "world", "--out", str(tmp_path / "slate"), "--backgrounds", "slate", "--n", "64",
                 "--resolution", "16", "--seed", "3"]) == 0
    common = ["world-tiny", "data.source=sidecar", f"data.root={tmp_path / 'slate'}",
              f"data.store_dir={tmp_path / 'store'}"]
    assert main(["precompute", *common]) == 0
    assert main(["train", *common, "train.total_nimg=768", "train.threads=1", "train.ckpt_every_nimg=10000",
                 "train.log_every_nimg=256", "--init", str(tmp_path / "pre"), "--run-dir", str(tmp_path / "ft"),
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert (tmp_path / "ft" / "finetune_before.png").is_file() and (tmp_path / "ft" / "finetune_after.png").is_file()
    page = (tmp_path / "ft" / "run_report.html").read_text()
    assert "Fine-tuning: before / after" in page and page.count("data:image/png;base64,") >= 2
    assert report["prompts"] == "held-out world captions"
    before, after = report["before"]["shares"]["slate"], report["after"]["shares"]["slate"]
    assert after >= before + 0.3 and after >= 0.6, report
    assert report["after"]["luminance"] < report["before"]["luminance"] - 15  # slate is the darkest background


def test_world_background_share_on_renders():
    from microt2i.world import make_dataset

    images, _, scenes = make_dataset(40, seed=1, resolution=16)
    got = world_background_share(images, ("slate",))
    assert got["share"] == pytest.approx(np.mean([s.background == "slate" for s in scenes]))
    assert sum(got["shares"].values()) == pytest.approx(1.0)
