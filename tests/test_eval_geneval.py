"""GenEval: the official prompt generator, the scoring rules of `reference/evaluation.md` §1.3, the world oracle."""

import collections
import json
from dataclasses import replace

import numpy as np
import pytest

from microt2i.eval.detectors import WORLD_THRESHOLDS, WorldDetector
from microt2i.eval.geneval import (
    COCO_CLASSES, GENEVAL_COLORS, TAGS, GenEvalObject, Thresholds, evaluate_images, filter_detections, make_prompts,
    read_layout, read_metadata, relative_position, score_image, summarize, write_layout, write_prompts,
)  # fmt: skip
from microt2i.world import CLASSES, COLORS, render
from microt2i.world.compose import world_scene

# ------------------------------------------------------------------------------------------ the prompt generator


@pytest.fixture(scope="module")
def official():
    return make_prompts(COCO_CLASSES, GENEVAL_COLORS, seed=43)


def test_official_suite_has_the_published_counts(official):
    assert len(official) == 553
    assert collections.Counter(r["tag"] for r in official) == {
        "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100}
    counts = collections.Counter(r["include"][0]["count"] for r in official if r["tag"] == "counting")
    assert counts == {2: 26, 3: 28, 4: 26}
    relations = collections.Counter(r["include"][1]["position"][0] for r in official if r["tag"] == "position")
    assert relations == {"right of": 27, "above": 26, "below": 28, "left of": 19}
    # tags come in the official order, each block contiguous
    assert [r["tag"] for r in official] == sorted((r["tag"] for r in official), key=[
        "single_object", "two_object", "counting", "colors", "position", "color_attr"].index)


def test_official_suite_matches_published_records(official):
    # records of the shipped evaluation_metadata.jsonl, as quoted publicly (first line of each tag, and a few
    # prompts cited with their 0-based index)
    lines = {
        0: '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}',
        179: '{"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", '
             '"count": 3}], "prompt": "a photo of two clocks"}',
        353: '{"tag": "position", "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, '
             '"position": ["right of", 0]}], "prompt": "a photo of a dog right of a teddy bear"}',
    }
    for i, line in lines.items():
        assert json.dumps(official[i]) == line
    prompts = {1: "a photo of a cow", 2: "a photo of a bicycle", 80: "a photo of a bench and a sports ball",
               81: "a photo of a toothbrush and a snowboard", 82: "a photo of a toaster and an oven",
               184: "a photo of two bears", 240: "a photo of three pizzas", 259: "a photo of a blue fire hydrant",
               400: "a photo of a bird left of a couch", 453: "a photo of a purple wine glass and a black apple",
               504: "a photo of a yellow pizza and a green oven", 544: "a photo of an orange cow and a purple sandwich"}
    for i, prompt in prompts.items():
        assert official[i]["prompt"] == prompt, i
    assert official[259]["include"] == [{"class": "fire hydrant", "count": 1, "color": "blue"}]


def test_generator_text_rules(official):
    assert not any(c["class"] == "person" for r in official if r["tag"] in ("colors", "color_attr")
                   for c in r["include"])
    prompts = {r["prompt"] for r in official}
    assert "a photo of an elephant" in prompts and "a photo of an orange" in prompts  # article by first letter
    counting = [r for r in official if r["tag"] == "counting"]
    for r in counting:  # exclude n+1 of the same class; plural "es" after s
        (inc,), (exc,) = r["include"], r["exclude"]
        assert exc == {"class": inc["class"], "count": inc["count"] + 1}
        word = ("es" if inc["class"].endswith("s") else "s")
        assert r["prompt"].endswith(inc["class"] + word)
    assert len({json.dumps(r, sort_keys=True) for r in official}) == len(official)
    for r in official:
        if r["tag"] == "color_attr":
            a, b = r["include"]
            assert a["class"] != b["class"] and a["color"] != b["color"]


def test_generator_works_for_the_world_and_is_deterministic(tmp_path):
    world = make_prompts(CLASSES, list(COLORS), seed=43)
    assert world == make_prompts(CLASSES, list(COLORS), seed=43) != make_prompts(CLASSES, list(COLORS), seed=1)
    tags = collections.Counter(r["tag"] for r in world)
    assert tags["single_object"] == len(CLASSES) and set(tags) == set(TAGS)
    assert {c["class"] for r in world for c in r["include"]} <= set(CLASSES)
    write_prompts(world, tmp_path)
    assert read_metadata(tmp_path / "evaluation_metadata.jsonl") == world
    assert (tmp_path / "generation_prompts.txt").read_text().splitlines()[0] == world[0]["prompt"]
    with pytest.raises(ValueError, match=">= 2 classes"):
        make_prompts(["circle"], list(COLORS))


# ------------------------------------------------------------------------------------------------ the rules


def test_relative_position_on_hand_made_boxes():
    b = (40, 40, 60, 60)
    assert relative_position((40, 40, 60, 60), b) == set()  # concentric
    assert relative_position((45, 45, 55, 55), b) == set()  # concentric, smaller
    assert relative_position((0, 40, 20, 60), b) == {"left of"}
    assert relative_position((80, 40, 100, 60), b) == {"right of"}
    assert relative_position((40, 0, 60, 20), b) == {"above"}  # y grows downwards
    assert relative_position((40, 80, 60, 100), b) == {"below"}
    assert relative_position((0, 0, 20, 20), b) == {"left of", "above"}  # diagonal: two relations
    assert relative_position((80, 80, 100, 100), b) == {"right of", "below"}
    # dead zone τ·(w_A + w_B) = 0.1·40 = 4 px: an offset of 3 px is no relation, of 10 px is one
    assert relative_position((37, 40, 57, 60), b) == set()
    assert relative_position((30, 40, 50, 60), b) == {"left of"}
    assert relative_position((30, 40, 50, 60), b, threshold=0.3) == set()  # 0.3·40 = 12 > 10
    # normalised by the original offset: 45° minus the dead zone falls below 0.5 on both axes
    assert relative_position((20, 20, 40, 40), b) == {"left of", "above"}
    assert relative_position((25, 10, 45, 30), b) == {"above"}


def _obj(cls, x, score=0.95, color="red", size=10):
    return GenEvalObject(cls, (x, 10, x + size, 10 + size), score, color)


def _score(record, objects, thr=Thresholds()):
    return score_image(record, filter_detections(objects, record["tag"], thr))


def test_counting_means_exactly_n_above_the_counting_threshold():
    rec = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}],
           "prompt": "a photo of three cats"}
    three = [_obj("cat", 30 * i) for i in range(3)]
    assert _score(rec, three) == (True, "")
    ok, reason = _score(rec, three + [_obj("cat", 100)])
    assert not ok and reason == "exclude: expected cat<4, found 4"
    ok, reason = _score(rec, three[:2])
    assert not ok and reason.startswith("count: expected cat>=3, found 2")
    # 0.9 for counting prompts: a 0.85 cat does not count, so a fourth one of 0.85 does not break "exactly 3"
    assert _score(rec, three + [_obj("cat", 100, score=0.85)]) == (True, "")
    assert not _score(rec, three[:2] + [_obj("cat", 100, score=0.85)])[0]
    # but the same 0.85 detection counts for every other tag (threshold 0.3), and extras never hurt those
    single = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    assert _score(single, [_obj("cat", 0, score=0.85), _obj("cat", 40), _obj("dog", 80)]) == (True, "")
    assert not _score(single, [_obj("cat", 0, score=0.3)])[0]  # strictly above the threshold


def test_detection_filter_caps_sorts_and_optionally_suppresses():
    many = [_obj("cat", i, score=0.5 + i / 100) for i in range(20)]
    kept = filter_detections(many, "two_object")["cat"]
    assert len(kept) == 16 and [o.score for o in kept] == sorted((o.score for o in kept), reverse=True)
    dupes = [_obj("cat", 0, 0.9), _obj("cat", 1, 0.8), _obj("cat", 50, 0.7)]
    assert len(filter_detections(dupes, "counting", Thresholds(counting_threshold=0.5))["cat"]) == 3  # NMS off
    nms = filter_detections(dupes, "counting", Thresholds(counting_threshold=0.5, max_overlap=0.5))["cat"]
    assert [o.box[0] for o in nms] == [0, 50]


def test_only_the_top_count_detections_are_colour_checked():
    rec = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a photo of a red cat"}
    assert _score(rec, [_obj("cat", 0, 0.9, "red"), _obj("cat", 40, 0.8, "blue")]) == (True, "")
    ok, reason = _score(rec, [_obj("cat", 0, 0.9, "blue"), _obj("cat", 40, 0.8, "red")])
    assert not ok and reason == "color: expected red cat>=1, found blue cat"


def test_position_checks_every_pair_and_needs_its_target():
    rec = {"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1,
           "position": ["left of", 0]}], "prompt": "a photo of a cat left of a dog"}
    assert _score(rec, [_obj("cat", 0), _obj("dog", 60)]) == (True, "")
    ok, reason = _score(rec, [_obj("cat", 60), _obj("dog", 0)])
    assert not ok and reason == "position: expected cat left of target, found right of"
    ok, reason = _score(rec, [_obj("cat", 0)])
    assert not ok and reason.splitlines() == ["count: expected dog>=1, found 0", "position: no target for cat to be "
                                                                                 "left of"]
    two = {**rec, "include": [{"class": "dog", "count": 2}, rec["include"][1]]}
    assert not _score(two, [_obj("cat", 30), _obj("dog", 60), _obj("dog", 0)])[0]  # right of one of the targets


def test_summary_is_the_unweighted_mean_over_tags():
    rows = [{"tag": "single_object", "correct": c, "metadata": "a"} for c in (True, True, True, False)]
    rows += [{"tag": "counting", "correct": c, "metadata": m} for c, m in ((False, "b"), (False, "b"), (True, "c"))]
    s = summarize(rows)
    assert s["tags"]["single_object"]["score"] == 0.75 and s["tags"]["counting"]["score"] == pytest.approx(1 / 3)
    assert s["overall"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert s["images_correct"] == pytest.approx(4 / 7) and s["prompts_correct"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- the world oracle


@pytest.fixture(scope="module")
def world_records():
    return make_prompts(CLASSES, list(COLORS), seed=43)


def _evaluate(records, resolution, seed=0):
    images = [[render(world_scene(r, np.random.default_rng([seed, i])), resolution)] for i, r in enumerate(records)]
    return evaluate_images(records, images, WorldDetector())


def test_ground_truth_world_renders_score_one_on_every_tag(world_records):
    rows = _evaluate(world_records, 64)
    s = summarize(rows)
    assert set(s["tags"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert s["overall"] == 1.0, [r["reason"] for r in rows if not r["correct"]][:5]


def test_ground_truth_at_the_demo_resolution_is_nearly_perfect(world_records):
    s = summarize(_evaluate(world_records, 32))
    assert all(t["score"] >= 0.95 for t in s["tags"].values()), s["tags"]


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _corrupt(record, how):
    r = json.loads(json.dumps(record))
    inc = r["include"]
    if how == "colour":
        inc[-1]["color"] = next(c for c in COLORS if c != inc[-1]["color"])
    elif how == "one more":
        inc[0]["count"] += 1
    elif how == "one fewer":
        inc[0]["count"] -= 1
    elif how == "swap":
        inc[1]["position"][0] = _OPPOSITE[inc[1]["position"][0]]
    elif how == "drop":
        del inc[1]
    return r


@pytest.mark.parametrize("tag, how, clause", [
    ("colors", "colour", "color:"), ("color_attr", "colour", "color:"), ("counting", "one more", "exclude:"),
    ("counting", "one fewer", "count:"), ("position", "swap", "position:"), ("two_object", "drop", "count:"),
])
def test_wrong_renders_fail_the_right_clause(world_records, tag, how, clause):
    records = [r for r in world_records if r["tag"] == tag][:12]
    images = [[render(world_scene(_corrupt(r, how), np.random.default_rng(i)), 64)] for i, r in enumerate(records)]
    for row in evaluate_images(records, images, WorldDetector()):
        assert not row["correct"] and row["reason"].startswith(clause), (row["prompt"], row["reason"])


def test_the_folder_layout_round_trips(tmp_path, world_records):
    records = world_records[::60]
    images = [[render(world_scene(r, np.random.default_rng([i, k])), 32) for k in range(4)]
              for i, r in enumerate(records)]
    write_layout(tmp_path, records, images)
    assert (tmp_path / "00001" / "samples" / "0003.png").is_file()
    (tmp_path / "00001" / "samples" / "grid.png").write_bytes(b"")  # not a sample: ignored
    back, back_images, names = read_layout(tmp_path)
    assert back == records and all(len(g) == 4 for g in back_images) and names[0][0] == "00000/samples/0000.png"
    assert np.array_equal(back_images[2][1], images[2][1])
    rows = evaluate_images(back, back_images, WorldDetector(), filenames=names)
    assert [r["correct"] for r in rows] == [r["correct"] for r in evaluate_images(records, images, WorldDetector())]
    assert {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"} <= set(rows[0])
    assert json.loads(rows[0]["metadata"]) == records[0]


def test_world_scene_rejects_classes_the_world_cannot_draw(world_records):
    with pytest.raises(ValueError, match="cannot draw"):
        world_scene(make_prompts(COCO_CLASSES, GENEVAL_COLORS)[0], 0)
    assert WorldDetector().thresholds == WORLD_THRESHOLDS
    assert replace(WORLD_THRESHOLDS, threshold=0.5).counting_threshold == WORLD_THRESHOLDS.counting_threshold
