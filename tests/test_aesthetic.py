import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_models import tiny_clip

from microt2i.eval.aesthetic import AestheticPredictor, load_aesthetic_head, pick_score


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"), kind="full")  # projection_dim 8, 32 px images


def _images(n=5, size=32):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_linear_and_mlp_heads_on_normalised_clip_embeddings(clip, tmp_path):
    from microt2i.eval.features import clip as clip_extractor

    torch.manual_seed(0)
    w, b = torch.randn(1, 8), torch.randn(1)
    torch.save({"weight": w, "bias": b}, tmp_path / "linear.pth")
    images = _images()
    emb = F.normalize(torch.from_numpy(clip_extractor(str(clip))(images)).float(), dim=-1)
    got = AestheticPredictor(tmp_path / "linear.pth", str(clip))(images)
    assert np.allclose(got, (emb @ w.T + b).squeeze(-1).double().numpy(), atol=1e-5)
    # the improved predictor's layout: Linear layers at layers.0, .2, .4 (dropouts between), no activation
    mlp = {"layers.0.weight": torch.randn(6, 8), "layers.0.bias": torch.randn(6), "layers.2.weight": torch.randn(3, 6),
           "layers.2.bias": torch.randn(3), "layers.4.weight": torch.randn(1, 3), "layers.4.bias": torch.randn(1)}
    from safetensors.torch import save_file

    save_file(mlp, str(tmp_path / "mlp.safetensors"))
    want = emb
    for i in (0, 2, 4):
        want = want @ mlp[f"layers.{i}.weight"].T + mlp[f"layers.{i}.bias"]
    assert np.allclose(AestheticPredictor(tmp_path / "mlp.safetensors", str(clip))(images), want.squeeze(-1), atol=1e-5)
    assert len(load_aesthetic_head(tmp_path / "mlp.safetensors")) == 3


def test_head_errors_name_the_input(clip, tmp_path):
    torch.save({"weight": torch.randn(1, 768), "bias": torch.zeros(1)}, tmp_path / "vitl.pth")
    with pytest.raises(ValueError, match="768-d"):
        AestheticPredictor(tmp_path / "vitl.pth", str(clip))
    with pytest.raises(FileNotFoundError, match="sa_0_4_vit_l_14_linear"):
        load_aesthetic_head(tmp_path / "missing.pth")
    torch.save({"weight": torch.randn(2, 8), "bias": torch.zeros(2)}, tmp_path / "two.pth")
    with pytest.raises(ValueError, match="one output"):
        load_aesthetic_head(tmp_path / "two.pth")


def test_pickscore_equals_clip_logits_per_image(clip):
    from transformers import AutoTokenizer, CLIPModel

    from microt2i.encoders.clip import CLIP_MEAN, CLIP_STD, load_image_text_model

    images, texts = _images(3), ["a red cube", "two blue spheres", "a green cone on the left"]
    got = pick_score(images, texts, load_image_text_model(str(clip)))
    model, tok = CLIPModel.from_pretrained(clip).eval(), AutoTokenizer.from_pretrained(clip)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    t = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=x).logits_per_image
    assert np.allclose(got, logits.diag().double().numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="one prompt per image"):
        pick_score(images, texts[:2], load_image_text_model(str(clip)))


def test_cli_eval_aesthetic_and_pickscore_on_a_world_run(clip, tmp_path):
    from microt2i import presets
    from microt2i.cli import main
    from microt2i.config import apply_overrides
    from microt2i.train.loop import train

    cfg = apply_overrides(presets.get("world-tiny"), ["data.num_images=16", f"data.cache_dir={tmp_path / 'c'}",
                                                      "train.total_nimg=16", "train.threads=1"])
    train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    torch.save({"weight": torch.randn(1, 8), "bias": torch.zeros(1)}, tmp_path / "head.pth")
    (tmp_path / "parti.tsv").write_text("Prompt\tCategory\tChallenge\na red cube\tAbstract\tBasic\n"
                                        "two blue spheres\tAbstract\tBasic\na green cone\tWorld\tBasic\n")
    assert main(["eval", "aesthetic", str(tmp_path / "run"), "--head", str(tmp_path / "head.pth"), "--model",
                 str(clip), "--prompts", str(tmp_path / "parti.tsv"), "--steps", "2"]) == 0
    res = json.loads((tmp_path / "run" / "eval" / "aesthetic" / "results.json").read_text())
    assert res["metrics"]["n"] == 3 and np.isfinite(res["metrics"]["aesthetic"])
    assert main(["eval", "pickscore", str(tmp_path / "run"), "--model", str(clip), "--n", "4", "--steps", "2"]) == 0
    res = json.loads((tmp_path / "run" / "eval" / "pickscore" / "results.json").read_text())
    assert res["metrics"]["n"] == 4 and res["settings"]["steps"] == 2
    assert main(["eval", "aesthetic", str(tmp_path / "run"), "--steps", "2", "--n", "2"]) == 2  # no --head: one line
