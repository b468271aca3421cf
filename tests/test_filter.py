import json

import numpy as np
import pytest
import torch.nn.functional as F
from _tiny_models import tiny_clip
from PIL import Image

from microt2i.config import DataConfig
from microt2i.data.filter import CIFAR_TEMPLATES, clip_class_scores, filter_dataset
from microt2i.world import CLASSES, detect, make_dataset


def test_templates_are_clips_eighteen():
    assert len(CIFAR_TEMPLATES) == 18 == len(set(CIFAR_TEMPLATES))
    assert "a photo of a {}." in CIFAR_TEMPLATES and "a black and white photo of the {}." in CIFAR_TEMPLATES
    assert all(t.count("{}") == 1 for t in CIFAR_TEMPLATES)


def test_world_filter_keeps_exactly_the_images_whose_class_is_detected_above_threshold(tmp_path):
    data = DataConfig(num_images=24, resolution=32)
    out = filter_dataset(data, tmp_path / "kept.jsonl", classes=list(CLASSES), threshold=0.8, log=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    images, _, scenes = make_dataset(24, resolution=32, captions="aio")
    expect = {}
    for i, (img, s) in enumerate(zip(images, scenes)):
        conf = max((d.confidence for d in detect(img) if d.cls == s.main.cls), default=0.0)
        if conf > 0.8:
            expect[f"world-0/{i:07d}"] = (s.main.cls, round(conf, 6))
    assert {r["key"]: (r["class"], r["score"]) for r in rows} == expect
    assert out["kept"] == len(expect) and out["scored"] == 24 and 0 < len(expect) < 24  # the threshold bites
    assert all(r["label"] == CLASSES.index(r["class"]) for r in rows)


def test_clip_scores_average_cosines_over_templates_and_unlabelled_images_take_their_best_class(tmp_path):
    from microt2i.encoders.clip import load_image_text_model

    folder = tiny_clip(tmp_path / "clip", kind="full")
    model = load_image_text_model(str(folder))
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    classes = ["cube", "sphere"]
    scores = clip_class_scores(imgs, classes, model, CIFAR_TEMPLATES[:3])
    img = F.normalize(model.embed_images(imgs[1:2]), dim=-1)[0]
    manual = np.mean([float(img @ F.normalize(model.embed_texts([t.format("sphere")])[0], dim=-1)[0])
                      for t in CIFAR_TEMPLATES[:3]])
    assert scores.shape == (3, 2) and abs(scores[1, 1] - manual) < 1e-5
    # an unlabelled folder: each image is scored for its best class; threshold -1 keeps all, 1 keeps none
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"")
    data = DataConfig(source="folder", root=str(tmp_path), store_dir=str(tmp_path / "unused"), resolution=32)
    out = filter_dataset(data, tmp_path / "kept.tsv", classes=classes, scorer=str(folder), threshold=-1.0,
                         templates=CIFAR_TEMPLATES[:3], log=lambda *_: None)
    lines = (tmp_path / "kept.tsv").read_text().splitlines()
    assert lines[0] == "key\tlabel\tclass\tscore" and out["kept"] == 3 and out["skipped"] == {"empty file": 1}
    best = scores.argmax(1)
    assert [int(ln.split("\t")[1]) for ln in lines[1:]] == best.tolist()
    assert filter_dataset(data, tmp_path / "none.jsonl", classes=classes, scorer=str(folder), threshold=1.0,
                          templates=CIFAR_TEMPLATES[:3], log=lambda *_: None)["kept"] == 0
    with pytest.raises(ValueError, match="class"):
        filter_dataset(data, tmp_path / "x.jsonl", classes=[])
