"""`microt2i eval …` on a tiny finished run, and in-training eval (lines in stats.jsonl, training RNG untouched)."""

import json

import pytest
import torch

from microt2i import presets
from microt2i.cli import main
from microt2i.config import apply_overrides
from microt2i.eval.live import LiveEval
from microt2i.train.loop import prepare_data, train

QUIET = {"progress": False, "log": lambda *_: None}


def tiny(*extra):
    return apply_overrides(presets.get("world-tiny"), ["train.device=cpu", "eval.steps=2", *extra])


@pytest.fixture(scope="module")
def store(cache):
    return prepare_data(tiny(), torch.device("cpu"), log=lambda *_: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory, store):
    run_dir = tmp_path_factory.mktemp("run")
    assert train(tiny(), run_dir, store=store, **QUIET)["finished"]
    return run_dir


def test_live_eval_returns_a_stats_line_and_restores_every_rng(tmp_path, cache):
    import random

    import numpy as np

    from microt2i.eval.live import LiveEval
    from microt2i.models import build

    cfg = tiny("eval.every_nimg=32", "eval.fd_n=0", "eval.geneval_per_tag=1")
    live = LiveEval(cfg, tmp_path, torch.device("cpu"), log=lambda *_: None)
    assert [n for n in range(16, 129, 16) if live.due(n, 16)] == [32, 64, 96, 128]
    torch.manual_seed(3)
    net = build(cfg.model)
    null = torch.zeros(1, cfg.data.text_len, cfg.model.text_dim), torch.zeros(1, cfg.data.text_len, dtype=torch.bool)
    np.random.seed(5)
    random.seed(7)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    line = live(net, 32, *null)
    assert torch.equal(torch.get_rng_state(), states[0]) and np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    assert line["nimg"] == 32 and 0 <= line["eval/geneval"] <= 1 and (tmp_path / line["eval/grid"]).is_file()
    assert "eval/FD-EffNetLite0" not in line  # fd_n=0 skips it


@pytest.mark.slow
def test_in_training_eval_logs_lines_and_leaves_training_bit_exact(tmp_path, store):
    plain = train(tiny(), tmp_path / "plain", store=store, **QUIET)
    # with in-training eval, stopped right after the first evaluation and resumed
    live = tiny("eval.every_nimg=64", "eval.fd_n=4", "eval.geneval_per_tag=1")
    assert not train(live, tmp_path / "eval", store=store, stop_nimg=64, evaluate=LiveEval, **QUIET)["finished"]
    evald = train(live, tmp_path / "eval", store=store, evaluate=LiveEval, **QUIET)
    for a, b in ((plain["net"], evald["net"]), (plain["ema"], evald["ema"])):
        for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), k
    lines = [json.loads(ln) for ln in (tmp_path / "eval" / "stats.jsonl").read_text().splitlines()]
    evals = [ln for ln in lines if "eval/geneval" in ln]
    assert [ln["nimg"] for ln in evals] == [64, 128]  # one line per evaluation, none repeated by the resume
    assert len(lines) - len(evals) == len((tmp_path / "plain" / "stats.jsonl").read_text().splitlines())
    assert {"eval/FD-EffNetLite0", "eval/fd_n", "eval/grid", "eval/geneval/single_object"} <= set(evals[0])
    assert evals[0]["eval/fd_n"] == 4 and (tmp_path / "eval" / evals[0]["eval/grid"]).is_file()


def test_eval_geneval_prints_a_per_tag_table_and_writes_the_official_layout(run, capsys):
    out = run / "eval" / "geneval"
    assert main(["eval", "geneval", str(run), "--per-tag", "2", "--images-per-prompt", "2"]) == 0
    table = capsys.readouterr().out
    for tag in ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"):
        assert tag in table
    report = json.loads((out / "results.json").read_text())
    assert report["metrics"]["detector"] == "world" and report["settings"]["seed"] == 42
    assert report["summary"]["images"] == 2 * report["summary"]["prompts"]
    assert (out / "report.html").is_file() and (out / "images" / "00000" / "samples" / "0001.png").is_file()
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == report["summary"]["images"] and (out / "evaluation_metadata.jsonl").is_file()


def test_eval_fid_prdc_and_dpg_write_json_with_n(run, capsys):
    assert main(["eval", "fid", str(run), "--n", "6"]) == 0
    fid = json.loads((run / "eval" / "fid" / "results.json").read_text())["metrics"]
    assert fid["n_real"] == fid["n_fake"] == 6 and fid["FD-EffNetLite0"] > 0 and "KID" in fid
    assert "FD-EffNetLite0" in capsys.readouterr().out
    assert main(["eval", "prdc", str(run), "--n", "6", "--k", "2", "--splits", "1"]) == 0  # reuses cached features
    prdc = json.loads((run / "eval" / "prdc" / "results.json").read_text())["metrics"]
    assert {"precision", "recall", "density", "coverage"} <= set(prdc) and prdc["k"] == 2 and prdc["n_real"] == 6
    assert main(["eval", "dpg", str(run), "--n", "2"]) == 0
    dpg = json.loads((run / "eval" / "dpg" / "results.json").read_text())["metrics"]
    assert 0 <= dpg["dpg_score"] <= 100 and dpg["prompts"] == 2 and dpg["tiles"] == 8
    assert (run / "eval" / "dpg" / "report.html").is_file()


def test_eval_clipscore_by_path_and_clear_errors(run, tmp_path, capsys):
    from _tiny_models import tiny_clip

    folder = tiny_clip(tmp_path / "clip", kind="full")
    assert main(["eval", "clipscore", str(run), "--n", "3", "--model", str(folder)]) == 0
    res = json.loads((run / "eval" / "clipscore" / "results.json").read_text())["metrics"]
    assert res["n"] == 3 and 1 <= res["truncated"] <= res["truncated_hessel"] <= 3  # long captions, 32 tokens
    capsys.readouterr()
    assert main(["eval", "clipscore", str(run), "--n", "3", "--model", "no-such/clip-model"]) == 2
    err = capsys.readouterr().err
    assert "no-such/clip-model" in err and "Traceback" not in err
    assert main(["eval", "fid", str(tmp_path)]) == 2
    assert "ema/model.safetensors" in capsys.readouterr().err
    assert main(["eval", "fid", str(run), "--features", "inception"]) == 2
    assert "inception-2015-12-05.pt" in capsys.readouterr().err
