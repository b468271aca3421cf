"""The real path of docs/data.md through the CLI, as a researcher runs it on ImageNet, shrunk:
caption (tiny LLaVA-NeXT, two jobs) → precompute (+ --verify) → cutmix (composites captioned by the tiny LLaVA with
the CutMix prompt, two jobs, + --verify) → train the DiT-I preset's architecture shrunk, with its objective, CutMix
and Crop on → sample. Evaluation against the val reference is appended by the evaluation work."""

import json
from pathlib import Path

import numpy as np
import pytest
from _tiny_models import tiny_causal_lm, tiny_clip, tiny_llava_next, tiny_mask2former, tiny_t5, tiny_vae
from PIL import Image

from microt2i.cli import main

SYNSETS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark


def _tree(root: Path) -> Path:
    """ImageNet's layout: train/<synset>/*.JPEG and val/<synset>/*.JPEG, three classes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c, syn in enumerate(SYNSETS):
            (root / split / syn).mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(60 + 70 * c, 40, (24 + 4 * i, 28, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / syn / f"{syn}_{i}.JPEG", quality=90)
    return root


def wordy(folder: Path) -> Path:
    """The tiny random LLaVA, told never to emit a special token, so every caption has words (the real model's
    captions are never empty; a random one often ends at once)."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(folder)
    gen = GenerationConfig.from_pretrained(folder)
    gen.suppress_tokens = sorted(set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in
                                                             ("<|start_header_id|>", "<|end_header_id|>")})
    gen.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    models = {"llava": wordy(tiny_llava_next(d / "llava")), "t5": tiny_t5(d / "t5"), "vae": tiny_vae(d / "vae")}
    return d, _tree(d / "imagenet"), models


def test_caption_precompute_cutmix_train_sample(chain, capsys):
    d, root, m = chain
    # 2. captions: one job per GPU (here: two jobs), read back by glob
    for i in (0, 1):
        assert main(["caption", "--source", str(root / "train"), "--captioner", "llava", "--model", str(m["llava"]),
                     "--max-new-tokens", "8", "--num-shards", "2", "--shard-index", str(i),
                     "--out", str(d / "captions.tsv"), "--no-progress"]) == 0
    D = ["data.source=imagenet", f"data.root={root}", f"data.store_dir={d / 'in256'}",
         f"data.caption_file={d / 'captions.shard*-of-00002.tsv'}"]
    shrink = [f"data.codec={m['vae']}", f"data.text_encoder={m['t5']}", "data.text_len=8", "data.resolution=16",
              "data.shard_size=4", "model.in_channels=4", "model.input_size=8", "model.patch_size=2",
              "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2"]
    # 3. precompute + verify
    assert main(["precompute", "dit-i-256", *D, *shrink]) == 0
    assert main(["precompute", "dit-i-256", *D, *shrink, "--verify"]) == 0
    # 4. CutMix composites: CM-all, LLaVA with the CutMix prompt, one job per GPU (two here), verify
    cm = ["augment.cutmix.setting=all"]
    for i in (1, 0):
        assert main(["cutmix", "dit-i-256", *D, *shrink, *cm, "--model", str(m["llava"]), "--max-new-tokens", "8",
                     "--num-shards", "2", "--shard-index", str(i), "--show", "2", "--workers", str(i)]) == 0
    out = capsys.readouterr().out
    assert "9 composites (all, ×1)" in out and "store complete: 9 samples" in out
    assert main(["cutmix", "dit-i-256", *D, *shrink, *cm, "--verify"]) == 0
    folder = d / "in256" / "cutmix-all-x1-s0"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == 9 and manifest["content"]["captioner"] == f"llava:{m['llava']}"
    # 5. train the DiT-I preset shrunk (its objective), TA + CutMix CM-all + Crop
    ia = ["augment.cutmix.enabled=true", "augment.crop.enabled=true", "model.crop_cond=true"]
    small = ["train.total_nimg=16", "train.batch_size=8", "train.micro_batch=8", "train.threads=1",
             "train.log_every_nimg=8", "train.ckpt_every_nimg=1000", "train.device=cpu", "eval.every_nimg=0",
             "eval.steps=2"]
    run = d / "runs" / "dit-i"
    assert main(["train", "dit-i-256", *D, *shrink, *cm, *ia, *small, "--run-dir", str(run), "--no-progress"]) == 0
    assert "finished at 16 images" in capsys.readouterr().out
    # 6. sample from the run
    assert main(["sample", "--run", str(run), "--prompt", "An image of a tench", "--n", "2", "--steps", "2",
                 "--out", str(d / "grid.png"), "--no-progress"]) == 0
    assert (d / "grid.png").is_file() and len(list((d / "grid").glob("*.png"))) == 2
    # 7. evaluate against the run's ImageNet val (the default reference of an ImageNet run), shrunk N
    import torch
    from test_eval_inception import published_like_state_dict
    from transformers import Dinov2Config, Dinov2Model

    torch.save(published_like_state_dict(), d / "pt_inception-2015-12-05-6726825d.pth")
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=14, image_size=28)).save_pretrained(d / "dino")
    clip = tiny_clip(d / "clip", kind="full")
    n = ["--n", "6", "--steps", "2"]
    assert main(["eval", "fid", str(run), *n, "--weights", str(d / "pt_inception-2015-12-05-6726825d.pth")]) == 0
    assert main(["eval", "fd", str(run), *n, "--weights", str(d / "dino")]) == 0
    assert main(["eval", "prdc", str(run), *n, "--weights", str(d / "dino"), "--k", "2", "--splits", "1"]) == 0
    assert main(["eval", "clipscore", str(run), "--n", "4", "--steps", "2", "--model", str(clip)]) == 0
    for metric in ("fid", "fd", "prdc", "clipscore"):
        res = json.loads((run / "eval" / metric / "results.json").read_text())
        assert res["metrics"], metric
    # 8. GenEval★: prompts through an LM extender, a (tiny) COCO detector and CLIP colours
    assert main(["eval", "geneval", str(run), "--per-tag", "1", "--images-per-prompt", "1", "--steps", "2",
                 "--extend", str(tiny_causal_lm(d / "lm")), "--detector", str(tiny_mask2former(d / "m2f")), "--color-model",
                 str(clip)]) == 0
    assert json.loads((run / "eval" / "geneval-extended" / "results.json").read_text())["metrics"]["prompt_set"] \
        .startswith("extended")
