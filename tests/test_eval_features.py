"""Feature extractors, CLIPScore and the transformers GenEval detector: the offline EfficientNet for real, the
hub-model adapters with tiny random models saved to tmp folders (plumbing only)."""

import json

import numpy as np
import pytest
import torch

from _tiny_models import tiny_clip
from microt2i.encoders.hub import MissingModelError
from microt2i.eval import features
from microt2i.encoders.clip import load_image_text_model
from microt2i.eval.clipscore import HESSEL_PREFIX, clip_score
from microt2i.eval.detectors import ClipColorClassifier, TransformersDetector
from microt2i.eval.distribution import frechet_distance
from microt2i.eval.geneval import GENEVAL_COLORS, GenEvalObject, evaluate_images
from microt2i.world import make_dataset


@pytest.fixture(scope="module")
def world_images():
    return make_dataset(24, seed=5, resolution=32)[0]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"), kind="full")


def test_clean_resize_is_float_bicubic_without_requantisation():
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :, :2] = 255
    out = features.resize_clean(img, 9)
    assert out.shape == (1, 3, 9, 9) and out.dtype == torch.float32
    assert not torch.equal(out, out.round())  # bicubic ringing kept as float, not rounded to uint8
    assert out[0, 0, 4, 0] > 250 and out[0, 0, 4, -1] < 5


def test_effnet_lite0_loads_the_shipped_imagenet_weights(world_images):
    from sklearn.datasets import load_sample_images

    ext = features.get_extractor("effnet-lite0")
    assert ext.metric_name == "FD-EffNetLite0" and ext.dim == 1280 and "57934424" in ext.key
    # through our loading and preprocessing, the ImageNet head still recognises scikit-learn's sample photos:
    # the flower as a daisy (985), the Chinese temple as a palace (698)
    photos = [np.ascontiguousarray(im[:, (im.shape[1] - im.shape[0]) // 2:][:, :im.shape[0]])
              for im in load_sample_images().images]
    with torch.inference_mode():
        logits = ext.module(ext.preprocess(np.stack(photos)))
    assert logits.argmax(1).tolist() == [698, 985]
    small = features.effnet_lite0(resolution=96)  # a cheaper input size for the rest (another cache key)
    assert small.key != ext.key
    f = small(world_images[:10])
    assert f.shape == (10, 1280) and f.dtype == np.float64 and np.array_equal(f, small(world_images[:10]))
    noise = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    mean_gap = lambda g: float(((f.mean(0) - g.mean(0)) ** 2).sum())  # noqa: E731  (N=10: FD is mostly bias)
    world_gap, noise_gap = mean_gap(small(world_images[10:20])), mean_gap(small(noise))
    assert world_gap < 0.5 * noise_gap, (world_gap, noise_gap)
    assert frechet_distance(f, f) == pytest.approx(0, abs=1e-6)


def test_inception_needs_a_local_torchscript_file_and_uses_its_layers(tmp_path, world_images):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        features.get_extractor("inception")

    class Net(torch.nn.Module):  # the layout of the FID TorchScript: a `layers` module after the resize
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, 2048, 1))

        def forward(self, x):
            return self.layers(x)

    torch.manual_seed(0)
    net = Net()
    torch.jit.script(net).save(str(tmp_path / "inception.pt"))
    ext = features.get_extractor("inception", weights=str(tmp_path / "inception.pt"))
    assert ext.metric_name == "FID" and ext.dim == 2048
    with pytest.raises(ValueError, match="--resize clean"):  # clean-fid's file goes with clean-fid's resize
        features.get_extractor("inception", weights=str(tmp_path / "inception.pt"), resize="bilinear")
    got = ext(world_images[:3])
    with torch.inference_mode():
        want = net.layers((features.resize_clean(world_images[:3], 299) - 128) / 128).reshape(3, -1).double()
    assert np.allclose(got, want.numpy(), atol=1e-5)


def test_dinov2_and_clip_extractors_load_by_path(tmp_path, clip_folder, world_images):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=14, image_size=28)).save_pretrained(tmp_path / "dino")
    dino = features.dinov2(str(tmp_path / "dino"), resolution=56)
    assert dino.metric_name == "FD-DINOv2" and dino(world_images[:4]).shape == (4, 16)
    clip = features.get_extractor("clip", weights=str(clip_folder))
    f = clip(world_images[:4])
    assert clip.metric_name == "FD-CLIP" and f.shape == (4, 8) and np.isfinite(f).all()
    with pytest.raises(MissingModelError, match="does not exist"):
        features.get_extractor("dinov2", weights=str(tmp_path / "nowhere" / "x"))
    with pytest.raises(ValueError, match="effnet-lite0, inception, dinov2, clip"):
        features.get_extractor("vgg")


def test_reference_features_are_cached_under_a_key(tmp_path):
    calls = []
    ext = features.FeatureExtractor("fake", "FD-fake", "fake:v1", 3, preprocess=lambda b: torch.from_numpy(
        b.reshape(len(b), -1)[:, :3].astype(np.float32)), forward=lambda x: x)
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)

    def make():
        calls.append(1)
        return images

    a = features.cached_features(ext, {"seed": 1, "n": 2}, make, tmp_path)
    b = features.cached_features(ext, {"seed": 1, "n": 2}, make, tmp_path)
    assert np.array_equal(a, b) and len(calls) == 1
    features.cached_features(ext, {"seed": 2, "n": 2}, make, tmp_path)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="uint8"):
        ext(images.astype(np.float32))


def test_clipscore_conventions_and_truncation(clip_folder, world_images):
    model = load_image_text_model(str(clip_folder))
    texts = ["a red cube", "two blue spheres on the left", " ".join(["red cube"] * 40)]  # the last one > 32 tokens
    out = clip_score(world_images[:3], texts, model)
    img = torch.nn.functional.normalize(model.embed_images(world_images[:3]), dim=-1)
    txt = torch.nn.functional.normalize(model.embed_texts(texts)[0], dim=-1)
    hes = torch.nn.functional.normalize(model.embed_texts([HESSEL_PREFIX + t for t in texts])[0], dim=-1)
    assert out["clipscore"] == pytest.approx(max(100 * float((img * txt).sum(-1).mean()), 0), abs=1e-4)
    assert out["clipscore_hessel"] == pytest.approx(float((2.5 * (img * hes).sum(-1).clamp(min=0)).mean()), abs=1e-5)
    assert out["truncated"] == 1 and out["n"] == 3 and out["max_tokens"] == 32
    with pytest.raises(ValueError, match="one text per image"):
        clip_score(world_images[:2], texts, model)


class _ColourByMean:
    """A stand-in dual encoder: an image embeds as its mean RGB, a text as the RGB of the colour word in it."""

    rgb = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "grey": (0.6, 0.6, 0.6)}

    def embed_images(self, images):
        return torch.tensor(images.reshape(len(images), -1, 3).mean(1) / 255, dtype=torch.float32)

    def embed_texts(self, texts):
        return torch.tensor([next(v for k, v in self.rgb.items() if f" {k}" in t) for t in texts],
                            dtype=torch.float32), [False] * len(texts)


def test_clip_colour_composites_the_mask_over_grey_and_crops_the_box():
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :] = (0, 0, 255)  # a blue background around ...
    image[5:10, 5:10] = (255, 0, 0)  # ... a red object
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    classify = ClipColorClassifier(_ColourByMean(), colors=("red", "green", "blue"))
    assert classify(image, GenEvalObject("cat", (5, 5, 10, 10), 0.9, mask=mask)) == "red"
    # without the mask the crop around it is mostly background
    assert classify(image, GenEvalObject("cat", (0, 0, 20, 20), 0.9)) == "blue"


def test_transformers_detector_plumbing_with_a_tiny_mask2former(tmp_path, clip_folder):
    from _tiny_models import tiny_mask2former

    tiny_mask2former(tmp_path)
    det = TransformersDetector(str(tmp_path), color_model=str(clip_folder))
    assert det.classes == ("person", "cat", "computer mouse", "tv") and det.thresholds.counting_threshold == 0.9
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    objs = det.detect(image)
    assert objs and all(o.cls in det.classes and o.mask.shape == (32, 32) and 0 <= o.score <= 1 for o in objs)
    assert all(0 <= o.box[0] < o.box[2] <= 32 and 0 <= o.box[1] < o.box[3] <= 32 for o in objs)
    assert det.color(image, objs[0]) in GENEVAL_COLORS
    record = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a red cat"}
    (row,) = evaluate_images([record], [[image]], det)
    assert isinstance(row["correct"], bool) and json.loads(row["metadata"]) == record
