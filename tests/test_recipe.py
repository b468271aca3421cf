"""Multi-stage recipes (train/recipe.py): Table 3 as presets, all four stages on a tiny world preset with weights,
EMA and optimizer carried as the reference carries them, position interpolation at the higher resolution, and a
recipe interrupted mid-stage resumes to the same weights."""

from __future__ import annotations

import pytest
import torch

from microt2i import presets
from microt2i.config import apply_overrides
from microt2i.models import build
from microt2i.train.loop import train
from microt2i.train.recipe import describe, run_recipe, seed_stage, stage_dirs
from microt2i.train.state import list_checkpoints, load_latest

from test_train import fake_store

QUIET = dict(progress=False, log=lambda *_: None)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_stages(*extra):
    return [apply_overrides(s, ["model.text_dim=16", "model.width=32", "model.depth=3", "model.mixer_width=16", *extra])
            for s in presets.recipe("world-microdit-tiny")]


def stores(cfg):
    return fake_store(res=cfg.data.resolution)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    stages = tiny_stages()
    return stages, root, run_recipe(stages, root, store_fn=stores, **QUIET)


# ---------------------------------------------------------------------------------------------------------------
# Table 3 as a recipe


def test_paper_recipe_is_table_3():
    stages = presets.recipe("microdit-xl-2")
    B = 2048
    assert [s.train.total_nimg // B for s in stages] == [250_000, 30_000, 50_000, 5_000]
    assert all(s.train.batch_size == B and B % s.train.micro_batch == 0 for s in stages)
    assert [s.model.mask_ratio for s in stages] == [0.75, 0.0, 0.75, 0.0]
    assert [s.data.resolution for s in stages] == [256, 256, 512, 512]
    assert [(s.model.input_size, s.model.pos_interp_scale) for s in stages] == [(32, 1.0), (32, 1.0), (64, 2.0),
                                                                                 (64, 2.0)]
    assert [s.train.lr for s in stages] == [2.4e-4, 8e-5, 8e-5, 8e-5]
    assert [s.train.lr_schedule for s in stages] == ["cosine", "constant", "constant", "constant"]
    assert [s.train.warmup_nimg // B for s in stages] == [2500, 0, 500, 0]
    assert [s.train.grad_clip for s in stages] == [0.25, 0.25, 0.5, 0.5]
    assert [s.train.ema_decay for s in stages] == [0.0, 0.0, 0.99975, 0.9975]  # 0: no EMA (a copy of the weights)
    assert [s.train.ema_start_nimg // B for s in stages] == [0, 0, 25_000, 1_000]
    assert [(s.objective.p_mean, s.objective.p_std) for s in stages] == [(-0.6, 1.2)] * 2 + [(0.0, 0.6)] * 2
    for s in stages:
        t = s.train
        assert (t.weight_decay, t.betas, t.eps, t.precision) == (0.1, (0.9, 0.999), 1e-8, "bf16")
        assert t.expert_lr_scale == 0.5  # App. B: experts at half the learning rate
        assert (s.objective.sigma_data, s.objective.cond_drop, s.objective.uncond) == (0.9, 0.1, "zero")
        assert s.model.family == "microdit" and s.model.masking == "deferred"
    # the stage-1 preset is the paper model
    assert presets.get("microdit-xl-2").model == stages[0].model
    assert len(describe(stages).splitlines()) == 5


# ---------------------------------------------------------------------------------------------------------------
# Four stages on the tiny world preset


def test_all_four_stages_finish(full_run):
    stages, root, results = full_run
    assert [r["name"] for r in results] == [s.name for s in stages] and len(stages) == 4
    assert all(r["finished"] and not r["skipped"] for r in results)
    for s, d in zip(stages, stage_dirs(stages, root)):
        assert load_latest(d)["nimg"] == s.train.total_nimg
        assert (d / "ema" / "model.safetensors").is_file()
    assert results[-1]["ema"].config == stages[-1].model  # the last stage's network at the full resolution


def test_weights_carry_over_as_the_reference_loads_them(full_run):
    stages, root, _ = full_run
    dirs = stage_dirs(stages, root)
    for i in (1, 2, 3):  # each later stage's checkpoint at 0 images is what it started from
        start = torch.load(dirs[i] / "training-state-000000000000.pt", weights_only=True)
        prev = load_latest(dirs[i - 1])
        assert start["nimg"] == 0 and start["config"]["name"] == stages[i].name
        for k, v in prev["model"].items():
            assert torch.equal(start["model"][k], v), k
        same_res = i != 2  # stage 2 → 3 doubles the resolution: weights only (reference load_weights_only)
        ema_src = prev["ema"] if same_res else prev["model"]
        assert all(torch.equal(start["ema"][k], ema_src[k]) for k in ema_src)
        if same_res:  # AdamW moments carried, hyper-parameters from the new stage
            assert start["optimizer"]["state"].keys() == prev["optimizer"]["state"].keys() != set()
            for j, st in prev["optimizer"]["state"].items():
                assert torch.equal(start["optimizer"]["state"][j]["exp_avg"], st["exp_avg"])
            assert start["optimizer"]["param_groups"][0]["lr"] == stages[i].train.lr
        else:
            assert start["optimizer"]["state"] == {}


def test_position_embedding_is_interpolated_at_the_higher_resolution(full_run):
    stages, _, results = full_run
    lo, hi = build(stages[1].model), results[-1]["ema"]
    g, D = hi.grid, hi.config.width
    assert g == 2 * lo.grid and hi.config.pos_interp_scale == 2.0
    torch.testing.assert_close(hi.pos_embed.view(g, g, D)[::2, ::2], lo.pos_embed.view(g // 2, g // 2, D))


def test_an_interrupted_recipe_resumes_to_the_same_weights(full_run, tmp_path):
    stages, root, _ = full_run
    dirs = stage_dirs(stages, tmp_path)
    run_recipe(stages[:2], tmp_path, store_fn=stores, **QUIET)  # stopped after stage 2 …
    seed_stage(stages[1], dirs[1], stages[2], dirs[2])  # … and in the middle of stage 3
    assert not train(stages[2], dirs[2], store=stores(stages[2]), stop_nimg=8, **QUIET)["finished"]
    results = run_recipe(stages, tmp_path, store_fn=stores, **QUIET)
    assert [r["skipped"] for r in results] == [True, True, False, False]
    a, b = load_latest(stage_dirs(stages, root)[-1]), load_latest(dirs[-1])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_seed_stage_refuses_an_unfinished_stage_or_a_changed_network(full_run, tmp_path):
    stages, root, _ = full_run
    dirs = stage_dirs(stages, root)
    wider = apply_overrides(stages[1], ["model.width=48"])
    with pytest.raises(ValueError, match="networks differ"):
        seed_stage(stages[0], dirs[0], wider, tmp_path / "x")
    longer = apply_overrides(stages[0], ["train.total_nimg=4096"])
    with pytest.raises(RuntimeError, match="has not finished"):
        seed_stage(longer, dirs[0], stages[1], tmp_path / "y")
    assert not list_checkpoints(tmp_path / "x") and not list_checkpoints(tmp_path / "y")


# ---------------------------------------------------------------------------------------------------------------
# CLI: `microt2i recipe --dry-run`, and the MicroDiT demo on the real embedded world


def test_recipe_cli_dry_run(capsys, tmp_path):
    from microt2i.cli import main

    assert main(["recipe", "microdit-xl-2", "--dry-run", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "microdit-xl-2-256-masked" in out and "| 512 | 0 | 10,240,000 | 2048 |" in out
    assert f"stage 4 → {tmp_path / '4-microdit-xl-2-512-unmasked'}" in out
    assert not list(tmp_path.iterdir())
    assert main(["recipe", "no-such-recipe", "--dry-run"]) == 2
    assert "valid recipes: microdit-xl-2" in capsys.readouterr().err


@pytest.mark.slow
def test_microdit_demo_trains_masked_on_the_world_and_samples_unmasked(tmp_path, monkeypatch):
    import json

    from microt2i.cli import main

    monkeypatch.setenv("MICROT2I_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["demo", "--model", "microdit", "--preset", "world-tiny", "--run-dir", str(run), "--no-progress"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    stages = presets.recipe("world-microdit-tiny")
    assert m["images_seen"] == sum(s.train.total_nimg for s in stages)
    stats = [json.loads(ln) for ln in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in stats][0] == stages[0].name and stats[-1]["nimg"] == m["images_seen"]
    for name in ("grid.png", "report.html", "ema/model.safetensors", "null_text.safetensors"):
        assert (run / name).is_file(), name
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--prompt", "a red star", "--steps", "3", "--out", str(out)]) == 0
    assert out.is_file()
