import json

import numpy as np
import pytest

from microt2i import experiment as E
from microt2i import experiment_stats
from microt2i.config import ConfigError
from microt2i.eval import geneval
from microt2i.eval.distribution import frechet_distance

TINY = ("model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1", "data.num_images=16",
        "train.total_nimg=32", "train.batch_size=8", "train.log_every_nimg=16", "train.ckpt_every_nimg=1000",
        "train.warmup_nimg=0", "eval.every_nimg=32", "eval.geneval_per_tag=1", "eval.fd_n=0", "eval.grid_size=1")
TINY_EXP = E.Experiment(
    name="tiny", preset="world-tiny", base=TINY, question="AIO vs long on world-tiny?",
    arms=(E.Arm("aio", ("data.captions=aio",), "AIO"), E.Arm("long", (), "long")),
    claims=(E.Claim("geneval", "long", "aio", "ImageNet-T2I Table 1"), E.Claim("FD-EffNetLite0", "long", "aio", "none")),
    eval=E.EvalSpec(geneval_per_tag=1, geneval_images=2, fd_n=6, steps=2))


# ------------------------------------------------------------------------------------------------ bootstrap


def _boot(correct, tags, n_boot=4000, seed=0, tag=None):
    s, p = E.resample(correct.shape[0], tags, n_boot, np.random.default_rng(seed))
    return E.geneval_score(correct, tags, s, p, tag=tag)


def test_bootstrap_of_a_constant_is_a_point():
    correct = np.ones((2, 12, 3), bool)
    tags = ["colors"] * 6 + ["position"] * 6
    boot = _boot(correct, tags)
    assert experiment_stats._interval(boot) == (1.0, 1.0)


def test_bootstrap_of_bernoulli_prompts_matches_the_normal_closed_form():
    # One seed, one tag, N prompts with a fraction q correct: SE of the mean = sqrt(q(1−q)/N)
    n, q = 400, 0.3
    correct = np.zeros((1, n, 1), bool)
    correct[0, : int(q * n), 0] = True
    boot = _boot(correct, ["colors"] * n)
    se = np.sqrt(q * (1 - q) / n)
    assert boot.std() == pytest.approx(se, rel=0.08)
    lo, hi = experiment_stats._interval(boot)
    assert lo == pytest.approx(q - 1.96 * se, abs=0.012) and hi == pytest.approx(q + 1.96 * se, abs=0.012)


def test_bootstrap_over_seeds_has_the_binomial_closed_form():
    # Seed 0 gets nothing right, seed 1 everything: resampled seed means are 0, 0.5, 1 with probability ¼, ½, ¼
    correct = np.zeros((2, 10, 2), bool)
    correct[1] = True
    boot = _boot(correct, ["counting"] * 10, n_boot=8000)
    freq = [np.mean(boot == v) for v in (0.0, 0.5, 1.0)]
    assert freq == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert experiment_stats._interval(boot) == (0.0, 1.0)


def test_prompts_are_resampled_within_their_tag():
    tags = ["a"] * 3 + ["b"] * 5
    _, p = E.resample(2, tags, 500, np.random.default_rng(1))
    assert (p[:, :3] < 3).all() and (p[:, 3:] >= 3).all()


def test_geneval_score_equals_the_official_summary():
    rng = np.random.default_rng(0)
    records = [r for r in geneval.make_prompts(["circle", "star", "ring"], ["red", "blue"], seed=1, n=4)]
    correct = rng.random((1, len(records), 3)) < 0.5
    rows = [{"tag": r["tag"], "metadata": json.dumps(r), "correct": bool(correct[0, i, k])}
            for i, r in enumerate(records) for k in range(3)]
    tags = [r["tag"] for r in records]
    assert E.geneval_score(correct, tags)[0] == pytest.approx(geneval.summarize(rows)["overall"])
    tag = tags[0]
    assert E.geneval_score(correct, tags, tag=tag)[0] == pytest.approx(geneval.summarize(rows)["tags"][tag]["score"])


def test_fd_bootstrap_with_identity_indices_is_the_fd():
    rng = np.random.default_rng(0)
    real, fakes = rng.normal(size=(40, 6)), rng.normal(0.3, 1.0, size=(2, 30, 6))
    ident = np.arange(30)[None]
    for s in (0, 1):
        got = E.fd_resampled(real, fakes, np.array([[s]]), ident)[0]
        assert got == pytest.approx(frechet_distance(real, fakes[s]), rel=1e-6)
    idx = rng.integers(0, 30, size=(3, 30))  # resampled rows (duplicates included) = FD of the resampled set
    got = E.fd_resampled(real, fakes, np.array([[1], [0], [1]]), idx)
    assert got == pytest.approx([frechet_distance(real, fakes[s][i]) for s, i in zip((1, 0, 1), idx)], rel=1e-6)
    both = E.fd_resampled(real, fakes, np.array([[0, 1]]), ident)[0]
    assert both == pytest.approx(np.mean([frechet_distance(real, f) for f in fakes]), rel=1e-6)


def _arm(name, correct, fd=(1.0, 1.0)):
    tags = ["colors"] * (correct.shape[1] // 2) + ["position"] * (correct.shape[1] - correct.shape[1] // 2)
    res = [{"seed": s, "nimg": 64, "metrics": {"KID": fd[s]}} for s in range(correct.shape[0])]
    return E.ArmData(name, [0, 1], res, correct, tags, {"KID": np.array(fd, float)})


def test_claim_verdicts_from_paired_differences():
    good, bad = np.ones((2, 8, 2), bool), np.zeros((2, 8, 2), bool)
    claims = (E.Claim("geneval", "a", "b", "p"), E.Claim("geneval", "b", "a", "p"), E.Claim("geneval", "a", "c", "p"),
              E.Claim("KID", "a", "b", "p"), E.Claim("geneval", "a", "missing", "p"))
    s = E.summarize([_arm("a", good, (0.1, 0.2)), _arm("b", bad, (0.5, 0.6)), _arm("c", good)], claims, n_boot=300)
    verdicts = [c["verdict"] for c in s.claims]
    assert verdicts == ["held", "reversed", "no difference", "held", "not run"]
    assert s.claims[0]["delta"] == (1.0, 1.0, 1.0)
    assert s.claims[3]["delta"][0] == pytest.approx(0.4)  # lower KID is better: Δ = worse − better
    row = s.rows[0]
    assert row["geneval"] == (1.0, 1.0, 1.0) and row["KID"][0] == pytest.approx(0.15)


def test_arms_are_compared_on_their_common_seeds():
    a = np.zeros((2, 4, 1), bool)
    a[1] = True  # seed 0 wrong everywhere, seed 1 right
    b = E.ArmData("b", [1], [{"seed": 1, "nimg": 64, "metrics": {}}], np.ones((1, 4, 1), bool),
                  ["colors"] * 2 + ["position"] * 2, {})
    arm_a = _arm("a", a)
    arm_a.metrics = {}
    s = E.summarize([arm_a, b], (E.Claim("geneval", "a", "b", "p"),), n_boot=100)
    assert [r["seeds"] for r in s.rows] == [1, 1] and s.rows[0]["geneval"] == (1.0, 1.0, 1.0)
    assert s.claims[0]["verdict"] == "no difference"


def test_equal_estimates_with_a_wide_interval_are_not_called_a_direction():
    a, b = np.zeros((2, 8, 1), bool), np.zeros((2, 8, 1), bool)
    a[0, :4], b[1, 4:] = True, True  # the same number right, on different seeds and prompts
    s = E.summarize([_arm("a", a), _arm("b", b)], (E.Claim("geneval", "a", "b", "p"),), n_boot=300)
    (c,) = s.claims
    assert c["delta"][0] == 0 and c["delta"][1] < 0 < c["delta"][2]
    assert c["verdict"] == "equal estimates, not significant"


def test_markdown_table_and_section_rewrite(tmp_path):
    s = E.summarize([_arm("a", np.ones((2, 4, 1), bool)), _arm("b", np.zeros((2, 4, 1), bool))], n_boot=50)
    table = E.markdown_table(s, {"a": "first"})
    lines = table.splitlines()
    assert lines[0].startswith("| arm | images seen | GenEval | colors | position | KID")
    assert "| a (first) | 64 | 1.000 [1.000, 1.000] |" in lines[2] and lines[3].startswith("| b | 64 | 0.000")
    md = tmp_path / "E.md"
    md.write_text("# Experiments\n\nhand-written intro\n")
    E.write_section(md, "x", "one")
    E.write_section(md, "y", "other")
    E.write_section(md, "x", "two")
    text = md.read_text()
    assert "hand-written intro" in text and "\ntwo\n" in text and "\none\n" not in text
    assert text.count("<!-- experiment:x:start (generated) -->") == 1
    assert text.index("two") < text.index("other")


# ------------------------------------------------------------------------------------------------ configs


def test_budgets_keys_and_arm_selection():
    exp = E.get("captions")
    a, b = E.arm_config(exp, "aio", 0), E.arm_config(exp, "long", 1)
    assert a.data.captions == "aio" and b.train.seed == 1 and a.train.total_nimg == b.train.total_nimg
    doubled = E.arm_config(exp, "long", 0, scale=2.0)
    assert doubled.train.total_nimg == 2 * a.train.total_nimg and doubled.eval.every_nimg == 2 * a.eval.every_nimg
    # the reuse key ignores where / how fast a run goes, not what it computes
    same = E.arm_config(exp, "long", 0, extra=("train.threads=1", "data.cache_dir=/x"))
    assert E.config_hash(same, exp.eval) == E.config_hash(E.arm_config(exp, "long", 0), exp.eval)
    assert E.arm_key(same, exp.eval, "c1") != E.arm_key(same, exp.eval, "c2")
    assert E.config_hash(a, exp.eval) != E.config_hash(E.arm_config(exp, "long", 0), exp.eval)
    # captions/long and image-augmentation/ta are the same run
    ta = E.arm_config(E.get("image-augmentation"), "ta", 0)
    assert E.config_hash(ta, exp.eval) == E.config_hash(E.arm_config(exp, "long", 0), exp.eval)
    assert E.select_arms(E.get("image-augmentation"), None) == ["ta", "ta-cutmix", "ta-crop", "ta-cutmix-crop"]
    with pytest.raises(ConfigError, match="no arm 'nope'.*valid arms: aio, long"):
        E.select_arms(exp, "aio,nope")
    with pytest.raises(ConfigError, match="unknown experiment"):
        E.get("bogus")
    with pytest.raises(ConfigError, match="--scale"):
        E.scale_budget(a, 0)


def _iso_flops(exp):
    from microt2i.cost import count_train_flops

    cfgs = {arm: E.arm_config(exp, arm, 0) for arm in ("deferred", "naive", "unmasked")}
    budget = {arm: c.train.total_nimg * count_train_flops(c).train for arm, c in cfgs.items()}
    per_batch = {arm: c.train.batch_size * count_train_flops(c).train for arm, c in cfgs.items()}
    for arm in ("naive", "unmasked"):  # equal up to rounding to whole batches
        assert abs(budget[arm] - budget["deferred"]) <= per_batch[arm] / 2 + 1
    return cfgs


def test_iso_flops_budget_against_a_closed_form_cost(monkeypatch):
    from types import SimpleNamespace

    # a stand-in cost: 1 per kept token, the mixer counted on all tokens only when masking is deferred
    def cost(cfg):
        m = cfg.model
        kept = 1 - m.mask_ratio
        return SimpleNamespace(train=(1.0 if m.masking == "deferred" else kept) + 3 * kept)

    monkeypatch.setattr("microt2i.cost.count_train_flops", cost)
    monkeypatch.setattr("microt2i.experiment_defs.count_train_flops", cost)  # where the budgets are computed
    cfgs = _iso_flops(E.get("masking"))
    n = {arm: c.train.total_nimg for arm, c in cfgs.items()}
    assert n["naive"] == pytest.approx(n["deferred"] * 1.75 / 1.0, abs=16)
    assert n["unmasked"] == pytest.approx(n["deferred"] * 1.75 / 4.0, abs=16)


@pytest.mark.slow
def test_masking_arms_have_equal_counted_training_flops():
    cfgs = _iso_flops(E.get("masking"))
    assert cfgs["unmasked"].train.total_nimg < cfgs["deferred"].train.total_nimg < cfgs["naive"].train.total_nimg


# ------------------------------------------------------------------------------------------------ the runner


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("xp")
    mp = pytest.MonkeyPatch()
    mp.setitem(E.EXPERIMENTS, "tiny", TINY_EXP)
    extra = (f"data.cache_dir={root / 'cache'}", "train.threads=1")
    out = E.run_experiment("tiny", seeds=2, root=root / "runs", md_path=root / "EXPERIMENTS.md", extra=extra,
                           log=lambda *a: None)
    yield root, extra, out
    mp.undo()


def test_runner_trains_every_arm_seed_and_renders(tiny_runs):
    root, _, out = tiny_runs
    folders = sorted(p.parent.name for p in (root / "runs" / "tiny").glob("*/result.json"))
    assert [f.rsplit("-", 1)[0] for f in folders] == ["aio-s0", "aio-s1", "long-s0", "long-s1"]
    for f in (root / "runs" / "tiny").glob("*/result.json"):
        r = json.loads(f.read_text())
        assert r["nimg"] == 32 and len(r["geneval"]["correct"]) == len(r["geneval"]["tags"]) == 6
        assert all(len(c) == 2 for c in r["geneval"]["correct"]) and r["metrics"]["FD-EffNetLite0"] > 0
        assert not list(f.parent.glob("training-state-*")) and (f.parent / "ema").is_dir()
        assert np.load(f.parent / "features.npz")["fake"].shape == (6, 1280)
        ext = r["geneval_extended"]  # GenEval★: same records, prompts rewritten in the training captions' style
        assert ext["tags"] == r["geneval"]["tags"] and len(ext["prompts"]) == 6
        assert all(len(a) > len(b) for a, b in zip(ext["prompts"], r["geneval"]["prompts"]))
    s = out["summary"]
    assert [r["arm"] for r in s.rows] == ["aio", "long"] and all(r["seeds"] == 2 for r in s.rows)
    for r in s.rows:
        p, lo, hi = r["FD-EffNetLite0"]
        assert lo <= hi and np.isfinite([p, lo, hi]).all()
    md = (root / "EXPERIMENTS.md").read_text()
    assert "<!-- experiment:tiny:start (generated) -->" in md and "| aio (AIO) | 32 |" in md
    assert "Paper: ImageNet-T2I Table 1" in md and "seeds: 0, 1" in md
    assert (root / "experiments" / "tiny" / "curves.png").is_file() and out["report"].is_file()


def test_runner_reuses_finished_arms_and_renders_without_training(tiny_runs, monkeypatch):
    root, extra, first = tiny_runs
    monkeypatch.setitem(E.EXPERIMENTS, "tiny", TINY_EXP)

    def no_training(*a, **k):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr("microt2i.experiment_run.train", no_training)
    again = E.run_experiment("tiny", seeds=2, root=root / "runs", md_path=None, extra=extra, log=lambda *a: None)
    assert [r["geneval"] for r in again["summary"].rows] == [r["geneval"] for r in first["summary"].rows]
    assert all("geneval★" in r for r in again["summary"].rows)
    # an arm finished before GenEval★ existed gets only that evaluation added (the key ignores `extended`)
    f = next((root / "runs" / "tiny").glob("aio-s0-*/result.json"))
    r = json.loads(f.read_text())
    ext = r.pop("geneval_extended")
    f.write_text(json.dumps(r))
    E.run_experiment("tiny", seeds=2, root=root / "runs", md_path=None, extra=extra, log=lambda *a: None)
    assert json.loads(f.read_text())["geneval_extended"] == ext
    # another commit: not reused unless asked, then found by its config hash
    monkeypatch.setattr(E, "git_commit", lambda repo=None: ("0" * 40, False))
    with pytest.raises(FileNotFoundError, match="no finished arm"):
        E.run_experiment("tiny", seeds=2, root=root / "runs", md_path=None, extra=extra, render_only=True,
                         log=lambda *a: None)
    old = E.run_experiment("tiny", seeds=2, root=root / "runs", md_path=None, extra=extra, render_only=True,
                           any_commit=True, log=lambda *a: None)
    assert not old["missing"] and len(old["summary"].rows) == 2


def test_cli_experiment_errors_name_the_fix(capsys):
    from microt2i.cli import main

    assert main(["experiment", "bogus", "--render-only"]) == 2
    assert "unknown experiment 'bogus'; valid: captions" in capsys.readouterr().err
    assert main(["experiment", "captions", "--arms", "aio,x", "--render-only"]) == 2
    assert "no arm 'x'" in capsys.readouterr().err


def test_any_commit_matching_ignores_options_added_since(tiny_runs, tmp_path):
    import shutil

    import yaml

    root, extra, _ = tiny_runs
    src = next((root / "runs" / "tiny").glob("long-s0-*"))
    folder = tmp_path / src.name
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("ema", "eval", "*.safetensors"))
    cfg = E.arm_config(TINY_EXP, "long", 0, extra=extra)
    r = json.loads((folder / "result.json").read_text())
    r["config_hash"] = "from-another-version"
    (folder / "result.json").write_text(json.dumps(r))
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    del saved["train"]["nan_abort_streak"]  # an option the older code did not have: still the same run
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    assert E.same_run(folder, cfg, TINY_EXP.eval)
    saved["train"]["lr"] = 0.5  # a value that differs: another run
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    assert not E.same_run(folder, cfg, TINY_EXP.eval)
    saved["train"]["lr"] = cfg.train.lr
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    assert not E.same_run(folder, cfg, E.EvalSpec(geneval_per_tag=1, geneval_images=3, fd_n=6, steps=2))


def test_larger_or_modified_runs_get_their_own_section():
    assert E.section_name("captions") == "captions"
    assert E.section_name("captions", 1.0, ("train.threads=1", "train.device=cuda")) == "captions"
    assert E.section_name("captions", 2.0) == "captions@scale2"
    a, b = E.section_name("masking", 1.0, ("data.text_len=128",)), E.section_name("masking", 1.0, ("data.text_len=96",))
    assert a.startswith("masking@") and a != b and a != "masking"



# ------------------------------------------------------------------------------------------------ sweeps, summary

SWEEPS = ("cutmix-setting", "cutmix-p", "cutmix-tau")
LONG_CAPTION_EXPERIMENTS = ("captions", "image-augmentation", *SWEEPS, "masking-steps", "overfitting")


def test_cutmix_sweeps_resolve_to_the_papers_settings():
    want = {("cutmix-setting", "cm1-9"): ("1/9", 0.5, 400.0), ("cutmix-setting", "cm-all"): ("all", 0.5, 400.0),
            ("cutmix-p", "p0.75"): ("1/4", 0.75, 400.0), ("cutmix-p", "p1"): ("1/4", 1.0, 400.0),
            ("cutmix-tau", "tau300"): ("all", 0.5, 300.0), ("cutmix-tau", "tau600"): ("all", 0.5, 600.0)}
    for name in (*SWEEPS, "image-augmentation", "overfitting", "captions", "masking-steps"):
        exp = E.get(name)
        for arm in exp.arms:  # every arm's overrides apply to the preset
            cfg = E.arm_config(exp, arm.name, 0)
            cm = cfg.augment.cutmix
            if (name, arm.name) in want:
                assert cm.enabled and (cm.setting, cm.p, cm.tau) == want[name, arm.name]
        for c in exp.claims:  # claims name real arms and carry the paper's numbers
            exp.arm(c.better), exp.arm(c.worse)
            assert c.number, c
    assert [a.name for a in E.get("cutmix-setting").arms] == ["ta", "cm1-2", "cm1-4", "cm1-9", "cm1-16", "cm-all"]
    assert not E.arm_config(E.get("cutmix-p"), "p0", 0).augment.cutmix.enabled  # ρ = 0 is TA
    ia = E.arm_config(E.get("image-augmentation"), "ta-cutmix-crop", 0)
    assert ia.augment.cutmix.enabled and ia.augment.crop.enabled and ia.model.crop_cond
    # one knob per sweep around the recipe: the shared arms are the same run (reused across experiments)
    h = lambda e, a: E.config_hash(E.arm_config(E.get(e), a, 0), E.get(e).eval)  # noqa: E731
    assert h("cutmix-setting", "cm-all") == h("image-augmentation", "ta-cutmix") == h("cutmix-tau", "tau400")
    assert h("cutmix-p", "p0.5") == h("cutmix-setting", "cm1-4")
    assert h("cutmix-p", "p0") == h("cutmix-setting", "ta") == h("captions", "long")
    t9 = E.get("cutmix-setting").claims[0]
    assert (t9.better, t9.worse, t9.number) == ("cm-all", "ta", "GenEval ♦ 0.53 vs 0.51 (Δ +0.02)")
    fd = [c for c in E.get("cutmix-tau").claims if c.metric.startswith("FD")][0]
    assert fd.better == "tau600" and fd.number.startswith("FID 5.90 vs 6.99 (Δ +1.09")
    assert E.SUMMARY not in E.EXPERIMENTS  # the summary's section name is no experiment's


def test_caption_experiments_hold_the_longest_oracle_caption():
    from microt2i import presets
    from microt2i.encoders.extender import TemplateExtender
    from microt2i.encoders.text import TextEncoder
    from microt2i.eval.runner import world_geneval_records
    from microt2i.world.render import make_dataset

    enc = TextEncoder("minilm", max_length=96, log=None)  # also checks 96 fits MiniLM's positions
    lengths = {}
    for name in LONG_CAPTION_EXPERIMENTS:
        exp = E.get(name)
        for arm in exp.arms:
            d = E.arm_config(exp, arm.name, 0).data
            key = (d.num_images, d.seed, d.max_objects)
            if key not in lengths:  # the training captions, tokenized as the training log counts them
                _, caps, _ = make_dataset(d.num_images, seed=d.seed, resolution=8, captions="long",
                                          max_objects=d.max_objects)
                lengths[key] = max(enc.token_counts(caps))
            assert lengths[key] <= d.text_len, (name, arm.name, lengths[key], d.text_len)
    records = world_geneval_records(n=8, per_tag=8)
    extended = TemplateExtender().extend([r["prompt"] for r in records])  # GenEval★ prompts fit too
    assert max(enc.token_counts(extended)) <= E.arm_config(E.get("captions"), "long", 0).data.text_len
    # the preset's 64 tokens cut the longest world-s captions: the reason for the experiments' override
    world_s = presets.get("world-s").data
    assert lengths[(world_s.num_images, world_s.seed, world_s.max_objects)] > world_s.text_len


def test_summary_lists_every_claim_as_not_run_without_results(tmp_path, capsys):
    from microt2i.cli import main
    from microt2i.cost import count_train_flops, peak_flops

    md = tmp_path / "EXPERIMENTS.md"
    md.write_text("# Experiments\n\nintro by hand\n\n<!-- experiment:captions:start (generated) -->\nold table\n"
                  "<!-- experiment:captions:end -->\n\nnotes by hand\n")
    argv = ["experiment", "summary", "--root", str(tmp_path / "none"), "--md", str(md), "--mfu", "0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    n_claims = sum(len(e.claims) for e in E.EXPERIMENTS.values())
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and ln.split(" | ")[0][2:].isdigit()]
    assert len(rows) == n_claims and all("| not run | **not run** |" in r for r in rows)
    assert f"not run {n_claims}." in out
    for source in ("Table 1", "Table 2", "Table 9", "Table 10", "Table 11", "Fig. 3", "MicroDiT Fig. 8",
                   "MicroDiT Table 5"):
        assert any(source in r for r in rows), source
    assert "`microt2i experiment cutmix-tau --seeds 3` |" in out
    text = md.read_text()
    assert text.index("intro by hand") < text.index("experiment:summary:start") < text.index("old table")
    assert "notes by hand" in text and out.strip() in text
    assert main(argv) == 0  # re-rendered in place
    assert md.read_text().count("<!-- experiment:summary:start (generated) -->") == 1
    # the GPU route's estimate: FLOPs per image × images × seeds ÷ (MFU × H100 peak)
    route = E.gpu_route(E.get("captions"), scale=16, seeds=3, mfu=0.5)
    cfg = E.arm_config(E.get("captions"), "long", 0, 16)
    assert route["images"] == 2 * 3 * cfg.train.total_nimg == 2 * 3 * 16 * 8192
    assert route["h100_hours"] == pytest.approx(route["images"] * count_train_flops(cfg).train
                                                / (0.5 * peak_flops("H100")) / 3600)
    assert f"| `captions` | `microt2i experiment captions train.device=cuda --scale 16 --seeds 3` | 2 × 3 | " \
           f"{route['images']:,} |" in out
    assert main([*argv, "--mfu", "2"]) == 2 and "mfu in (0, 1]" in capsys.readouterr().err


def _fabricate(root, exp, arm, seed, commit, correct, correct_ext, fd):
    cfg = E.arm_config(exp, arm, seed)
    folder = E.arm_dir(root, exp, arm, seed, E.arm_key(cfg, exp.eval, commit))
    folder.mkdir(parents=True)
    tags = ["single_object", "two_object", "colors", "position"] * 2
    ge = lambda ok: {"tags": tags, "correct": [[ok] * 2 for _ in tags]}  # noqa: E731
    (folder / "result.json").write_text(json.dumps({"seed": seed, "nimg": cfg.train.total_nimg, "commit": commit,
                                                    "geneval": ge(correct), "geneval_extended": ge(correct_ext),
                                                    "metrics": {"FD-EffNetLite0": fd}}))


def test_summary_verdicts_from_fabricated_results(tmp_path):
    exp = E.get("captions")
    for s in range(3):  # long: right on original prompts, wrong on extended ones, lower FD
        _fabricate(tmp_path, exp, "long", s, "c0", True, False, 10.0 + s)
        _fabricate(tmp_path, exp, "aio", s, "c0", False, True, 20.0 + s)
    out = E.render_summary(root=tmp_path, md_path=None, commit="c0", experiments=[exp, E.get("cutmix-p")],
                           gpu_scale=0, n_boot=200, n_boot_fd=50)
    by = {(r["experiment"], r["claim"].metric): r for r in out["rows"]}
    assert by["captions", "geneval"]["verdict"] == "held" and by["captions", "geneval"]["delta"] == (1.0, 1.0, 1.0)
    assert by["captions", "geneval★"]["verdict"] == "reversed"
    assert by["captions", "FD-EffNetLite0"]["verdict"] == "held"
    assert by["captions", "FD-EffNetLite0"]["delta"][0] == pytest.approx(10.0)
    assert all(r["verdict"] == "not run" for r in out["rows"] if r["experiment"] == "cutmix-p")
    assert "| 1.000 vs 0.000, Δ +1.000 [+1.000, +1.000], 3 seeds | **held** |" in out["text"]
    assert "| 11.00 vs 21.00, Δ +10.00 [" in out["text"] and "**reversed**" in out["text"]
    assert "Verdicts: held 3, not significant 0, reversed 1, not run 7." in out["text"]
    assert not out["routes"]
    # fewer seeds finished: the cells say how many
    two = E.render_summary(root=tmp_path, md_path=None, commit="c0", experiments=[exp], seeds=2, gpu_scale=0,
                           n_boot=100, n_boot_fd=20)
    assert all(r["seeds"] == 2 for r in two["rows"]) and "2 seeds" in two["text"]
