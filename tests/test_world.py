"""The embedded world: deterministic scenes, renders and captions, and a detector that recovers what was drawn."""

import re

import numpy as np
import pytest

from microt2i.world import CLASSES, COLORS, aio_caption, detect, long_caption, make_dataset, render, sample_scene
from microt2i.world.render import object_box
from microt2i.world.scenes import BACKGROUNDS, MAX_ANGLE, Scene, WorldObject, position_name, relation, size_name


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def missed(scene, image, objects=None):
    """The objects with no detection of the right class and colour at IoU > 0.5."""
    dets = detect(image)
    out = []
    for obj in scene.objects if objects is None else objects:
        gt = object_box(obj, image.shape[0])
        hits = [d for d in dets if iou(d.box, gt) > 0.5]
        if not (hits and hits[0].cls == obj.cls and hits[0].color == obj.color):
            out.append((obj, [(d.cls, d.color, d.box) for d in dets]))
    return out


# --------------------------------------------------------------------------------------------------- vocabulary


def test_vocabulary():
    assert len(CLASSES) >= 12 and len(set(CLASSES)) == len(CLASSES)
    assert list(COLORS) == ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
    assert len(BACKGROUNDS) >= 5
    # no background phrase may name a palette colour or a class: captions must not invent objects or colours
    words = set(CLASSES) | set(COLORS)
    for phrases in BACKGROUNDS.values():
        for p in phrases:
            assert not words & set(re.findall(r"[a-z]+", p)), p


# ------------------------------------------------------------------------------------------------------ scenes


def test_sample_scene_determinism_and_constraints():
    assert sample_scene(5) == sample_scene(5) == sample_scene(np.random.default_rng(5))
    scenes = [sample_scene(i, max_objects=4) for i in range(300)]
    assert len(set(scenes)) == 300
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    for s in scenes:
        main = s.objects[0]
        assert size_name(main.size) in ("medium", "large") and abs(main.cx - 0.5) <= 0.12 and abs(main.cy - 0.5) <= 0.12
        for i, a in enumerate(s.objects):
            assert a.size / 2 < min(a.cx, a.cy, 1 - a.cx, 1 - a.cy) and abs(a.angle) <= MAX_ANGLE
            if i:
                assert size_name(a.size) == "small"
            for b in s.objects[i + 1 :]:  # nothing overlaps, so nothing hides the main object
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) > (a.size + b.size) / 2
    restricted = [sample_scene(i, classes=["star"], colors=["pink", "brown"], backgrounds=["sky"]) for i in range(20)]
    assert all(s.main.cls == "star" and s.main.color in ("pink", "brown") and s.background == "sky" for s in restricted)
    assert all(len(sample_scene(i, max_objects=1).objects) == 1 for i in range(20))


def test_geometry_words():
    assert position_name(0.5, 0.5) == "center" and position_name(0.1, 0.9) == "bottom left"
    assert position_name(0.8, 0.5) == "right" and position_name(0.5, 0.2) == "top"
    ref = WorldObject("star", "red", 0.5, 0.5, 0.5, 0.0)
    assert relation(WorldObject("ring", "red", 0.2, 0.1, 0.6, 0.0), ref) == "to the left of"
    assert relation(WorldObject("ring", "red", 0.2, 0.6, 0.9, 0.0), ref) == "below"
    assert [size_name(s) for s in (0.2, 0.4, 0.7)] == ["small", "medium", "large"]


# ------------------------------------------------------------------------------------------------------ render


@pytest.mark.parametrize("size", [32, 64, 256])
def test_render_sizes_and_determinism(size):
    scene = sample_scene(3)
    img = render(scene, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render(scene, size))
    assert not np.array_equal(img, render(sample_scene(4), size))


def test_render_is_antialiased_and_resolution_consistent():
    obj = WorldObject("circle", "black", 0.6, 0.5, 0.5, 0.0)
    img = render(Scene("plain", (obj,)), 64)
    grey = img[..., 0]
    assert grey[32, 32] == 25 and grey[2, 2] == 128
    assert ((grey > 30) & (grey < 120)).sum() > 20  # blended rim pixels
    # the same scene at two sizes agrees once the larger one is box-filtered down
    scene = sample_scene(11)
    big = render(scene, 128).astype(float).reshape(64, 2, 64, 2, 3).mean((1, 3))
    assert np.abs(big - render(scene, 64)).mean() < 3


# ---------------------------------------------------------------------------------------------------- captions


def test_aio_caption():
    scene = Scene("plain", (WorldObject("arrow", "red", 0.6, 0.5, 0.5, 0.0),))
    assert aio_caption(scene) == "An image of an arrow"
    assert aio_caption(Scene("plain", (WorldObject("star", "orange", 0.6, 0.5, 0.5, 0.0),))) == "An image of a star"


def test_long_captions_are_exact_and_varied():
    starts, texts = set(), set()
    for i in range(300):
        rng = np.random.default_rng([9, i])
        scene = sample_scene(rng)
        text = long_caption(scene, rng)
        main = scene.main
        assert f"{main.color} {main.cls}" in text.split(".")[0]  # the first sentence names colour and class
        assert "{" not in text and "  " not in text and text.endswith(".")
        assert re.search(r"\ban (?![aeiou])|\ba (?=[aeiou])", text) is None, text  # a/an agree
        # every class and colour word mentioned belongs to an object that is really there
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert words & set(CLASSES) == {o.cls for o in scene.objects}, text
        assert words & set(COLORS) <= {o.color for o in scene.objects}, text
        for other in scene.objects[1:]:
            assert f"{other.color} {other.cls}" in text and relation(other, main) in text.lower()
        starts.add(" ".join(text.split()[:2]))
        texts.add(text)
    assert len(texts) == 300 and len(starts) >= 15
    scene = sample_scene(1)
    assert long_caption(scene, 7) == long_caption(scene, 7) and long_caption(scene) == long_caption(scene)
    assert len({long_caption(scene, s) for s in range(20)}) > 10


def test_make_dataset_reproducible_subsets():
    images, captions, scenes = make_dataset(6, seed=3, resolution=32)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8 and len(captions) == len(scenes) == 6
    sub_images, sub_captions, sub_scenes = make_dataset(3, seed=3, resolution=32)
    assert np.array_equal(images[:3], sub_images) and captions[:3] == sub_captions and scenes[:3] == sub_scenes
    assert make_dataset(2, seed=4)[1] != captions[:2]
    # captions depend on the scene, not on the pixels
    assert make_dataset(3, seed=3, resolution=64)[1] == sub_captions
    _, aio, _ = make_dataset(3, seed=3, captions="aio")
    assert aio == [aio_caption(s) for s in sub_scenes]


# ---------------------------------------------------------------------------------------------------- detector


def test_detector_every_class_and_colour():
    """Sweep class x colour, cycling backgrounds, rotations and sizes from small to large, at 64 px."""
    rng = np.random.default_rng(0)
    backgrounds = list(BACKGROUNDS)
    failures = []
    for k, cls in enumerate(CLASSES):
        for j, color in enumerate(COLORS):
            for v in range(2):
                size = (0.2, 0.3, 0.5, 0.8)[(k + j + 2 * v) % 4]
                r = size / 2 + 0.02
                cx, cy = rng.uniform(r, 1 - r, 2)
                obj = WorldObject(cls, color, size, cx, cy, float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)))
                scene = Scene(backgrounds[(k + 3 * j + 4 * v) % len(backgrounds)], (obj,))
                failures += missed(scene, render(scene, 64))
    assert not failures


@pytest.mark.parametrize("size,n", [(64, 60), (128, 15), (256, 4)])
def test_detector_recovers_every_object(size, n):
    failures = []
    for i in range(n):
        scene = sample_scene(np.random.default_rng([size, i]), max_objects=4)
        failures += missed(scene, render(scene, size))
    assert not failures


def test_detector_main_object_at_32px():
    scenes = [s for s in (sample_scene(np.random.default_rng([32, i])) for i in range(200)) if s.main.size >= 0.55][:80]
    failures = []
    for scene in scenes:
        failures += missed(scene, render(scene, 32), objects=scene.objects[:1])
    assert not failures


def test_detector_on_degraded_samples():
    """Blurry, noisy 32 px images stand in for a diffusion model's samples: the main object is still found."""
    from scipy.ndimage import gaussian_filter

    hits, confidences = 0, []
    for i in range(60):
        rng = np.random.default_rng([33, i])
        scene = sample_scene(rng)
        noisy = gaussian_filter(render(scene, 32).astype(float), (0.8, 0.8, 0)) + 8 * rng.standard_normal((32, 32, 3))
        image = np.clip(noisy, 0, 255).astype(np.uint8)
        hits += not missed(scene, image, objects=scene.objects[:1])
        confidences += [d.confidence for d in detect(image)[:1]]
    assert hits >= 55 and np.median(confidences) > 0.3


@pytest.mark.parametrize("size", [32, 64, 256])
def test_detector_empty_backgrounds(size):
    for background in BACKGROUNDS:
        dets = detect(render(Scene(background, ()), size))
        assert all(d.confidence < 0.2 for d in dets), (background, dets)


def test_detection_fields():
    heart, ring = WorldObject("heart", "red", 0.6, 0.5, 0.5, 10.0), WorldObject("ring", "blue", 0.25, 0.15, 0.15, 0.0)
    scene = Scene("paper", (heart, ring))
    dets = detect(render(scene, 64))
    assert [d.cls for d in dets] == ["heart", "ring"] and dets[0].area > dets[1].area
    assert all(0 <= d.confidence <= 1 for d in dets) and dets[0].confidence > 0.5
    x1, y1, x2, y2 = dets[0].box
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
