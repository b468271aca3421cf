"""`eval.prompts`: the in-training / final sample grid's prompts on any data source (data/prompts.py, eval/live.py)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from microt2i import presets
from microt2i.config import ConfigError, apply_overrides
from microt2i.data.prompts import caption_prompts, grid_nrow, grid_prompts, read_prompts_spec
from microt2i.world.grid import grid_prompts as world_grid


def tiny(*extra):
    return apply_overrides(presets.get("world-tiny"), ["train.device=cpu", "eval.steps=2", *extra])


def test_prompts_come_from_a_file_a_jsonl_file_or_a_list(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red cube\n\n  two blue spheres  \n")
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps({"prompt": p}) for p in ["x one", "x two"]))
    assert read_prompts_spec(str(txt)) == ["a red cube", "two blue spheres"]
    assert read_prompts_spec(str(jl)) == ["x one", "x two"]
    # the config key takes a path or a list (YAML list or dotted override)
    assert tiny(f"eval.prompts={txt}").eval.prompts == str(txt)
    cfg = tiny("eval.prompts=[a red cube, a green cone]")
    assert cfg.eval.prompts == ("a red cube", "a green cone")
    assert grid_prompts(cfg) == (["a red cube", "a green cone"], "eval.prompts")


@pytest.mark.parametrize("spec, msg", [("missing.txt", "no such prompts file"), ("empty", "holds no prompts"),
                                       (["a", " "], "must list non-empty prompts")])
def test_bad_prompts_are_one_clear_error(tmp_path, spec, msg):
    if spec == "empty":
        spec = str(tmp_path / "empty.txt")
        (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ConfigError, match=msg) as e:
        read_prompts_spec(spec if isinstance(spec, str) else spec)
    assert "\n" not in str(e.value) and "eval.prompts" in str(e.value)


def test_default_prompts_world_grid_or_the_datas_own_captions():
    cfg = tiny()
    assert grid_prompts(cfg) == ([s["prompt"] for s in world_grid(cfg.eval.grid_size ** 2, cfg.eval.seed)], "world")
    caps = [f"an image of a class {i // 3}" for i in range(30)]  # 10 classes, 3 images each
    cfg = tiny("data.source=folder", "eval.grid_size=2")
    prompts, where = grid_prompts(cfg, caps)
    assert where == "captions" and len(prompts) == 4 == len(set(prompts)) and set(prompts) <= set(caps)
    assert prompts[0] == caps[0] and prompts != caps[:4]  # spread over the data set, not its first rows
    # with a held-out split the grid shows held-out captions only (never trained on)
    from microt2i.data.holdout import split_indices

    cfg = tiny("data.source=folder", "eval.grid_size=2", "data.val_fraction=0.2")
    held = {caps[i] for i in split_indices(30, 0.2, cfg.data.seed)[1]}
    assert set(grid_prompts(cfg, caps)[0]) <= held
    assert caption_prompts(["", "a", "a", "b"], 4) == ["a", "b"] and grid_nrow(3, 4) == 2 and grid_nrow(16, 4) == 4


def _null(cfg):
    return torch.zeros(1, cfg.data.text_len, cfg.model.text_dim), torch.zeros(1, cfg.data.text_len, dtype=torch.bool)


def test_live_eval_samples_the_given_prompts_and_skips_world_scores_off_world(tmp_path, cache, one_thread):
    from microt2i.eval.live import LiveEval
    from microt2i.models import build

    prompts = ["a red cube", "two blue spheres", "a green cone"]
    cfg = tiny("data.source=imagenet", f"eval.prompts={json.dumps(prompts)}", "eval.every_nimg=32",
               "eval.geneval_per_tag=1", "eval.fd_n=4", "eval.class_n=2")
    logs = []
    live = LiveEval(cfg, tmp_path, torch.device("cpu"), log=logs.append)
    torch.manual_seed(0)
    line = live(build(cfg.model), 32, *_null(cfg))
    assert live._parts["grid"] == prompts
    assert not any(k.startswith(("eval/geneval", "eval/FD", "eval/class")) for k in line)
    assert any("skipped" in m for m in logs)
    grid = np.asarray(Image.open(tmp_path / line["eval/grid"]))
    res, up, pad = cfg.data.resolution, max(1, 128 // cfg.data.resolution), 2
    assert grid.shape[:2] == (up * (2 * (res + pad) + pad),) * 2  # 3 prompts → 2 per row, 2 rows
    # a missing prompts file fails when the trainer builds the evaluator, before any training step
    with pytest.raises(ConfigError, match="no such prompts file"):
        LiveEval(tiny(f"eval.prompts={tmp_path / 'nope.txt'}"), tmp_path, torch.device("cpu"))


def test_live_eval_on_world_data_keeps_geneval_with_own_prompts(tmp_path, cache, one_thread):
    from microt2i.eval.live import LiveEval
    from microt2i.models import build

    f = tmp_path / "prompts.txt"
    f.write_text("a red cube\n")
    cfg = tiny(f"eval.prompts={f}", "eval.every_nimg=32", "eval.geneval_per_tag=1", "eval.fd_n=0")
    live = LiveEval(cfg, tmp_path, torch.device("cpu"), log=lambda *_: None)
    torch.manual_seed(0)
    line = live(build(cfg.model), 32, *_null(cfg))
    assert live._parts["grid"] == ["a red cube"] and 0 <= line["eval/geneval"] <= 1
