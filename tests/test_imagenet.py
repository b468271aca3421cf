import numpy as np
import pytest
from _fake_imagenet import GOLDFISH, TENCH, make_tree
from PIL import Image

from microt2i.data.imagenet import (UnreadableImage, list_folder, list_imagenet, load_image, resize_center_crop,
                                    try_load)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, make_tree(root)


def test_train_listing_keys_labels_and_names(tree):
    root, expect = tree
    items = list_imagenet(root, "train")
    assert len(items) == expect["train_images"]  # notes.txt is not listed
    assert [it.key for it in items] == sorted(it.key for it in items)
    classes = {(it.key.split("/")[0], it.label, it.name) for it in items}
    assert classes == {(TENCH, 0, "tench"), (GOLDFISH, 1, "goldfish")}


def test_every_mode_decodes_to_rgb_and_bad_files_report_a_reason(tree):
    root, expect = tree
    reasons = {}
    for it in list_imagenet(root, "train"):
        img, reason = try_load((str(it.path), 16))
        if reason is None:
            assert img.shape == (16, 16, 3) and img.dtype == np.uint8
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    assert reasons == expect["skipped"]
    grey = load_image(root / "train" / TENCH / f"{TENCH}_grey.JPEG", 16)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    with pytest.raises(UnreadableImage, match="empty"):
        load_image(root / "train" / TENCH / f"{TENCH}_empty.JPEG", 16)


def test_val_flat_with_labels_file_and_kaggle_csv(tree, tmp_path):
    root, _ = tree
    items = list_imagenet(root, "val", root / "val_labels.txt")
    assert [it.label for it in items] == [0, 1, 0]
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{s} 1 2 3 4 {s} 5 6 7 8\n" for i, s in enumerate([GOLDFISH, GOLDFISH, TENCH])))
    assert [it.label for it in list_imagenet(root, "val", csv)] == [1, 1, 0]
    with pytest.raises(FileNotFoundError, match="labels_file"):
        list_imagenet(root, "val")
    partial = tmp_path / "partial.txt"
    partial.write_text(f"ILSVRC2012_val_00000001.JPEG {TENCH}\n")
    with pytest.raises(ValueError, match="no label"):
        list_imagenet(root, "val", partial)
    with pytest.raises(FileNotFoundError, match="no test/ folder"):
        list_imagenet(root, "test")


def test_resize_short_side_then_centre_crop():
    # short side already at the target: no resampling, the crop is the exact centre window
    a = np.random.default_rng(0).integers(0, 256, (8, 20, 3), dtype=np.uint8)
    out = np.asarray(resize_center_crop(Image.fromarray(a), 8))
    assert np.array_equal(out, a[:, 6:14])
    # portrait: the crop is vertical
    out = np.asarray(resize_center_crop(Image.fromarray(a.transpose(1, 0, 2)), 8))
    assert np.array_equal(out, a.transpose(1, 0, 2)[6:14])
    # antialiased: a 1-px checkerboard shrunk 4× is flat grey, not aliased black/white
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    small = np.asarray(resize_center_crop(Image.fromarray(board).convert("RGB"), 16)).astype(float)
    assert abs(small.mean() - 127.5) < 3 and small.std() < 3


def test_folder_listing(tmp_path):
    (tmp_path / "cats").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "cats" / "a.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "b.jpg")
    items = list_folder(tmp_path)
    assert [(it.key, it.name, it.label) for it in items] == [("b.jpg", "", -1), ("cats/a.png", "cats", -1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_folder(tmp_path / "empty")
