import json

import numpy as np
import pytest

from microt2i.eval.preference import (WorldJudge, bootstrap_interval, compare, read_prompts, win_rates,
                                      wilson_interval)


def test_wilson_interval_published_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # Wilson 1927 / Newcombe 1998
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_order_is_shuffled_and_a_position_biased_judge_is_exposed():
    n = 400
    rows = compare([f"p{i}" for i in range(n)], [0] * n, [1] * n, lambda p, a, b, m: "A", seed=3)
    assert [r["winner"] for r in rows] == ["A" if r["a_first"] else "B" for r in rows]
    out = win_rates(rows)
    assert out["first_shown_won"] == 1.0 and abs(out["win_rate_a"] - 0.5) < 0.08
    assert out["win_rate_a"] + out["win_rate_b"] + out["tie_rate"] == pytest.approx(1.0)
    assert out["win_rate_a_lo"] < out["win_rate_a"] < out["win_rate_a_hi"]
    # a judge that sees the content: always the image 1 (model B), whatever the order
    rows = compare([f"p{i}" for i in range(n)], [0] * n, [1] * n, lambda p, a, b, m: "A" if a == 1 else "B", seed=3)
    out = win_rates(rows)
    assert out["wins_b"] == n and out["score_a"] == 0.0 and out["first_shown_won"] == pytest.approx(
        np.mean([not r["a_first"] for r in rows]))
    with pytest.raises(ValueError, match="A, B or tie"):
        compare(["p"], [0], [1], lambda *a: "left")


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    v = np.r_[np.ones(30), np.zeros(10), np.full(10, 0.5)]
    lo, hi = bootstrap_interval(v, seed=1)
    assert lo < v.mean() < hi and 0 <= lo and hi <= 1
    assert bootstrap_interval(v, seed=1) == (lo, hi)
    half = 1.96 * v.std() / np.sqrt(len(v))  # ≈ the normal-approximation interval at this size
    assert abs((hi - lo) / 2 - half) < 0.03


def test_world_judge_prefers_the_true_render_and_ties_identical_images():
    from microt2i.world import make_dataset

    images, captions, scenes = make_dataset(24, seed=11, resolution=64)
    blank = np.full_like(images, 128)
    rows = compare(captions, images, blank, WorldJudge(), seed=0, metas=scenes,
                   categories=[f"{len(s.objects)}" for s in scenes])
    out = win_rates(rows)
    assert out["win_rate_a"] >= 0.9 and out["wins_b"] == 0
    assert any(k.startswith("category/") for k in out)
    same = win_rates(compare(captions, images, images, WorldJudge(), metas=scenes))
    assert same["tie_rate"] == 1.0 and same["score_a"] == 0.5
    with pytest.raises(ValueError, match="world scene"):
        WorldJudge()("p", images[0], images[1], None)


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.tsv").write_text("Prompt\tCategory\nA cat\tAnimals\nA car\tVehicles\n")
    (tmp_path / "d.csv").write_text('Prompts,Category\n"A red, round ball",Colors\n')
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert read_prompts(tmp_path / "p.tsv") == (["A cat", "A car"], ["Animals", "Vehicles"])
    assert read_prompts(tmp_path / "d.csv") == (["A red, round ball"], ["Colors"])
    assert read_prompts(tmp_path / "p.txt") == (["one", "two"], ["", ""])
    with pytest.raises(FileNotFoundError, match="PartiPrompts"):
        read_prompts(tmp_path / "nope.tsv")


def test_transformers_judge_plumbing_with_a_tiny_vlm(tmp_path, monkeypatch):
    import _tiny_models

    from microt2i.eval.preference import VERDICTS, TransformersJudge

    monkeypatch.setattr(_tiny_models, "CHAT_WORDS", (*_tiny_models.CHAT_WORDS, "b", "none", "image", "prompt"))
    folder = _tiny_models.tiny_llava_next(tmp_path / "vlm")
    judge = TransformersJudge(str(folder), device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    p = judge.probabilities("a red cube", images[0], images[1])
    assert set(p) == set(VERDICTS) and sum(p.values()) == pytest.approx(1.0)
    assert judge("a red cube", images[0], images[1]) == max(p, key=p.get)  # deterministic: one forward pass
    assert judge.probabilities("a red cube", images[0], images[1]) == pytest.approx(p)
    monkeypatch.setattr(_tiny_models, "CHAT_WORDS", ("x",))  # no b / none: cannot tell the answers apart
    with pytest.raises(ValueError, match="same tokens"):
        TransformersJudge(str(_tiny_models.tiny_llava_next(tmp_path / "vlm2")), device="cpu")


def test_cli_preference_on_world_runs(tmp_path):
    """Done-when: the preference harness reports win rates on the world (run A vs run B)."""
    from microt2i import presets
    from microt2i.cli import main
    from microt2i.config import apply_overrides
    from microt2i.train.loop import train

    base = ["data.num_images=16", f"data.cache_dir={tmp_path / 'c'}", "train.threads=1"]
    for name, nimg in (("a", 32), ("b", 16)):
        train(apply_overrides(presets.get("world-tiny"), [*base, f"train.total_nimg={nimg}"]), tmp_path / name,
              progress=False, log=lambda *_: None)
    args = ["eval", "preference", str(tmp_path / "a"), "--n", "6", "--steps", "2"]
    assert main([*args, "--against", str(tmp_path / "a"), "--out", str(tmp_path / "self")]) == 0
    same = json.loads((tmp_path / "self" / "results.json").read_text())["metrics"]
    assert same["tie_rate"] == 1.0 and same["n"] == 6  # same weights, same seeds: identical images
    assert main([*args, "--against", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "a" / "eval" / "preference" / "results.json").read_text())["metrics"]
    assert m["wins_a"] + m["wins_b"] + m["ties"] == 6 and m["judge"] == "world"
    assert 0 <= m["score_a_lo"] <= m["score_a"] <= m["score_a_hi"] <= 1
    assert main(["eval", "preference", str(tmp_path / "a"), "--n", "2", "--steps", "2"]) == 2  # no --against
