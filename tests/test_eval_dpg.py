"""DPG-Bench scoring (`reference/evaluation.md` §2): CSV without the first-row skip, DSG zeroing, both score
definitions, tiles; the world version answered by the detector; a tiny ViLT for the transformers adapter."""

from dataclasses import replace

import numpy as np
import pytest

from microt2i.eval.dpg import (
    Question, TransformersVQA, WorldVQA, apply_dependencies, read_questions, score, split_tiles, tile_images,
    world_questions,
)  # fmt: skip
from microt2i.world import COLORS, render, sample_scene

CSV = """item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language
p1,a red truck on grass,,1,0,entity,whole,entity - whole (truck),Is there a truck?
p1,a red truck on grass,,2,1,attribute,color,"attribute - color (truck, red)",Is the truck red?
p1,a red truck on grass,,3,0,entity,whole,entity - whole (grass),Is there grass?
p1,a red truck on grass,,4,"1,3",relation,spatial,"relation - spatial (truck, grass, on)",Is the truck on the grass?
p2,two cats,,1,0,entity,whole,entity - whole (cats),Are there cats?
p2,two cats,,2,1,other,count,"other - count (cats, ==2)",Are there two cats?
"""


@pytest.fixture
def questions(tmp_path):
    (tmp_path / "dpg.csv").write_text(CSV)
    return read_questions(tmp_path / "dpg.csv")


def test_csv_is_read_whole_with_dependencies_and_categories(questions):
    prompts, qs = questions
    assert prompts == {"p1": "a red truck on grass", "p2": "two cats"}
    assert [q.proposition_id for q in qs["p1"]] == [1, 2, 3, 4]  # the first row is kept (no ELLA #61 skip)
    q4 = qs["p1"][3]
    assert q4.dependency == (1, 3) and qs["p1"][0].dependency == ()
    assert (q4.category, q4.subcategory) == ("relation", "relation-spatial")
    assert (qs["p2"][1].category, qs["p2"][1].subcategory) == ("other", "other-count")
    assert Question("x", 1, (), "global - (sunny)", "?").subcategory == "global"


def test_dependency_zeroing_runs_down_chains(questions):
    _, qs = questions
    chain = [Question("c", 1, (), "entity - whole (a)", ""), Question("c", 2, (1,), "attribute - color (a, b)", ""),
             Question("c", 3, (2,), "attribute - size (a, big)", "")]
    assert apply_dependencies(chain, {1: 0.0, 2: 1.0, 3: 1.0}) == {1: 0.0, 2: 0.0, 3: 0.0}
    assert apply_dependencies(qs["p1"], {1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0}) == {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}


def test_overall_uses_dependencies_and_categories_use_raw_answers(questions):
    _, qs = questions
    # tile 0 of p1 sees no grass (so "on the grass" is zeroed); tile 1 sees everything; p2: the count is wrong
    yes = {("p1", 0): {1, 2, 4}, ("p1", 1): {1, 2, 3, 4}, ("p2", 0): {1}, ("p2", 1): {1}}
    images = {item: [np.full((2, 2, 3), t, np.uint8) for t in range(2)] for item in qs}
    current = {}

    def answer(tile, q):
        return q.proposition_id in yes[(current[tile[0, 0, 0]], int(tile[0, 0, 0]))]

    out = {}
    for item in qs:  # score items one at a time so the answer function knows the item
        current.update({0: item, 1: item})
        out[item] = score({item: qs[item]}, {item: images[item]}, answer)
    assert out["p1"]["dpg_score"] == pytest.approx(100 * (2 / 4 + 4 / 4) / 2)
    assert out["p2"]["dpg_score"] == pytest.approx(50.0)
    both = {item: out[item]["per_item"][item] for item in qs}
    assert both == {"p1": pytest.approx(0.75), "p2": pytest.approx(0.5)}
    # raw: the relation was answered yes on both tiles although tile 0 zeroes it
    assert out["p1"]["categories"]["relation"] == 100.0 and out["p1"]["categories"]["entity-whole"] == 75.0
    assert out["p1"]["categories_last_tile"]["entity"] == 100.0
    assert out["p1"]["tiles"] == 2 and len(out["p1"]["rows"]) == 8


def test_tiles_round_trip_and_bad_tilings_fail():
    tiles = [np.full((4, 4, 3), i, np.uint8) for i in range(4)]
    grid = tile_images(tiles)
    assert grid.shape == (8, 8, 3) and all(np.array_equal(a, b) for a, b in zip(split_tiles(grid), tiles))
    with pytest.raises(ValueError, match="equal tiles"):
        split_tiles(np.zeros((9, 8, 3)), 4)


def test_bad_csv_is_one_clear_error(tmp_path):
    (tmp_path / "bad.csv").write_text("item_id,text\np1,x\n")
    with pytest.raises(ValueError, match="lacks the DPG columns"):
        read_questions(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="dpg_bench.csv"):
        read_questions(tmp_path / "missing.csv")


def test_world_questions_are_true_of_their_scene_and_false_of_a_changed_one():
    scenes = [sample_scene(np.random.default_rng(i), max_objects=3) for i in range(30)]
    qs = {f"s{i}": world_questions(s, f"s{i}") for i, s in enumerate(scenes)}
    truth = score(qs, {f"s{i}": [render(s, 64)] for i, s in enumerate(scenes)}, WorldVQA())
    assert truth["dpg_score"] == 100.0 and {"entity", "attribute", "relation"} <= set(truth["categories"])
    recoloured = [replace(s, objects=tuple(replace(o, color=next(c for c in COLORS if c != o.color))
                                           for o in s.objects)) for s in scenes]
    wrong = score(qs, {f"s{i}": [render(s, 64)] for i, s in enumerate(recoloured)}, WorldVQA())
    assert wrong["categories"]["attribute-color"] == 0.0 and wrong["categories"]["entity"] == 100.0
    assert wrong["dpg_score"] < truth["dpg_score"]


def test_transformers_vqa_plumbing_with_a_tiny_vilt(tmp_path):
    from _tiny_models import tiny_vilt

    tiny_vilt(tmp_path)
    vqa = TransformersVQA(str(tmp_path))
    image = np.zeros((32, 32, 3), np.uint8)
    q = Question("x", 1, (), "entity - whole (cube)", "is there a red cube ?")
    assert vqa.answer_text(image, q.text) in ("yes", "no")
    assert vqa(image, q) == (vqa.answer_text(image, q.text) == "yes")
