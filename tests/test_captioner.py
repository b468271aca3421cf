"""Captioners: AIO template, world oracle, LLaVA-NeXT with image-token pruning (tiny random model, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microt2i.encoders.captioner import (
    COMPOSITE_PROMPT,
    Captioner,
    LlavaCaptioner,
    TemplateCaptioner,
    WorldCaptioner,
    anyres_patch_for_box,
    clean_caption,
    make_captioner,
)
from microt2i.world.render import make_dataset
from microt2i.world.scenes import aio_caption, long_caption, sample_scene

from _tiny_models import tiny_llava_next


def test_template_captioner_imagenet_and_world():
    cap = TemplateCaptioner()
    assert isinstance(cap, Captioner)
    assert cap.caption(metas=[0, "n15075141", 207]) == [
        "An image of a tench", "An image of a toilet tissue", "An image of a golden retriever"]  # fmt: skip
    assert TemplateCaptioner.for_name("Egyptian cat") == "An image of an Egyptian cat"
    scenes = [sample_scene(i) for i in range(20)]
    world = TemplateCaptioner("world")
    # the world's AIO wording, whether the label comes as a scene or as a class index
    assert world.caption(metas=scenes) == [aio_caption(s) for s in scenes]
    assert world.caption(metas=[world.classes.index(s.main.cls) for s in scenes]) == [aio_caption(s) for s in scenes]
    with pytest.raises(ValueError, match="outside 0..999"):
        cap.caption(metas=[1000])
    with pytest.raises(ValueError, match="needs metas"):
        cap.caption([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="2 images but 1 metas"):
        cap.caption([None, None], metas=[1])


def test_world_captioner_is_the_oracle():
    _, _, scenes = make_dataset(6, seed=3, resolution=16)
    assert WorldCaptioner().caption(metas=scenes) == [long_caption(s) for s in scenes]
    seeded = WorldCaptioner(seed=1).caption(metas=scenes)
    assert seeded == WorldCaptioner(seed=1).caption(metas=scenes)  # deterministic
    assert seeded != WorldCaptioner(seed=2).caption(metas=scenes)
    for s, c in zip(scenes, seeded):  # every wording names the main object's colour and class
        assert f"{s.main.color} {s.main.cls}" in c
    with pytest.raises(TypeError, match="Scenes"):
        WorldCaptioner().caption(metas=[3])
    assert make_captioner("aio", classes="world").caption(metas=scenes[:1]) == [aio_caption(scenes[0])]


def test_clean_caption():
    full = "user\n\nDescribe this image assistant\n\nThe image shows a cat.\nIt sits on a mat. The mat is"
    assert clean_caption(full, "Describe this image") == "The image shows a cat. It sits on a mat."
    assert clean_caption("assistant\n\nA red cube. Next to it, a blue") == "A red cube."
    assert clean_caption("A shop assistant stands.  He smiles!  And") == "A shop assistant stands. He smiles!"
    assert clean_caption('He said "stop." Then it') == 'He said "stop."'
    assert clean_caption("no sentence end at all") == "no sentence end at all"
    assert clean_caption("It is 3.5 m tall and") == "It is 3.5 m tall and"  # a decimal point ends no sentence
    assert clean_caption("[INST] Describe this image [/INST] A dog. Its", "Describe this image") == "A dog."


def test_anyres_patch_for_box():
    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llama3-llava-next-8b-hf
    # a typical ImageNet photo (375×500) → 672² grid of 2×2 crops (row-major); the image fills 672×504, centred
    assert anyres_patch_for_box((375, 500), [0, 0, 100, 100], pins, 336) == 0
    assert anyres_patch_for_box((375, 500), [400, 0, 500, 100], pins, 336) == 1
    assert anyres_patch_for_box((375, 500), [0, 275, 100, 375], pins, 336) == 2
    assert anyres_patch_for_box((375, 500), [200, 190, 450, 375], pins, 336) == 3  # most of the box is there
    # a 256² image → 336×672 (1×2 crops), the image centred in [168, 504): the left crop holds x < 128
    assert anyres_patch_for_box((256, 256), [0, 192, 64, 256], pins, 336) == 0
    assert anyres_patch_for_box((256, 256), [100, 0, 256, 128], pins, 336) == 1
    with pytest.raises(ValueError, match="inside the 256x256 image"):
        anyres_patch_for_box((256, 256), [0, 0, 300, 10], pins, 336)


def test_image_token_counts_at_the_real_checkpoint_geometry(tmp_path):
    """transformers' LLaVA-NeXT processor with llama3-llava-next-8b-hf's geometry (336-px crops, 14-px patches)."""
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from _tiny_models import _chat_tokenizer

    tok = _chat_tokenizer(tmp_path, extra=("<image>",))
    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    images = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                       image_grid_pinpoints=pins)  # fmt: skip
    proc = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=14, num_additional_image_tokens=1,
                              vision_feature_select_strategy="default")  # fmt: skip
    image_id = tok.convert_tokens_to_ids("<image>")
    counts = {}
    for h, w in [(256, 256), (375, 500)]:
        ids = proc(images=[np.zeros((h, w, 3), np.uint8)], text=["<image>"], return_tensors="pt")["input_ids"]
        counts[h, w] = int((ids == image_id).sum())
    # 576 whole-image tokens + the unpadded anyres map with a newline per row
    assert counts[256, 256] == 576 + 24 * (24 + 1)  # 1×2 crops, half of each is padding
    assert counts[375, 500] == 576 + 36 * (48 + 1)  # 2×2 crops, 36 unpadded rows: 2340, the paper's "around 2500"
    # after pruning (LlavaCaptioner.pruned_token_count with grid 24): 577, or 1176 with the pasted image's crop


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    folder = tiny_llava_next(tmp_path_factory.mktemp("llava"))
    return LlavaCaptioner(str(folder), max_new_tokens=8, batch_size=2, device="cpu")


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(n)]


def test_llava_prompt_assembly(llava):
    plain, composite = llava.prompt_text(), llava.prompt_text(composite=True)
    assert plain == ("<|start_header_id|>user<|end_header_id|>\n\n<image>\nDescribe this image<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip
    assert COMPOSITE_PROMPT in composite and "single scene image" in composite
    img = llava._pil(_images(1)[0])
    assert llava._plan(img, None) == (False, None)
    assert llava._plan(img, {"box": [0, 0, 32, 16], "setting": "CM1/2"}) == (True, None)  # CM1/2: prompt only
    assert llava._plan(img, {"box": [16, 16, 32, 32]}) == (True, 3)  # 1/4 of the area, bottom-right crop
    assert llava._plan(img, {"box": [0, 0, 32, 16]}) == (True, None)  # half the area: CM1/2 by size


def test_llava_image_token_counts(llava):
    # tiny model: 28-px crops of 14-px patches → 2×2 = 4 tokens per crop; a 32² image → 2×2 anyres crops
    img = _images(1)[0]
    full, pruned = llava.image_token_counts(img)
    assert full == 4 + 4 * (4 + 1)  # base + 4×4 anyres grid with a newline per row (transformers' count)
    assert pruned == 4 + 1  # base + newline: 4.8× fewer image tokens
    assert llava.image_token_counts(img, {"box": [0, 0, 16, 16]}) == (full, 4 + 2 * (2 + 1))


def _hf_packed(llava, img):
    proc = llava.processor.image_processor([img], return_tensors="pt")
    out = llava._core().get_image_features(proc["pixel_values"], proc["image_sizes"])
    return out.pooler_output[0], proc


def test_llava_pruned_features_are_slices_of_the_full_ones(llava):
    img = llava._pil(_images(1, seed=1)[0])
    with torch.no_grad():
        full, proc = _hf_packed(llava, img)
        base_only, with_patch = llava._image_features(proc["pixel_values"].expand(2, -1, -1, -1, -1),
                                                      proc["image_sizes"].expand(2, -1), [None, 3])  # fmt: skip
    g = llava.grid
    assert full.shape[0] == g * g + (2 * g) * (2 * g + 1)
    torch.testing.assert_close(base_only[:-1], full[: g * g])  # whole-image tokens, unchanged
    torch.testing.assert_close(base_only[-1], llava._core().image_newline)
    anyres = full[g * g :].view(2 * g, 2 * g + 1, -1)  # rows of the 2×2-crop map, newline last
    crop3 = anyres[g:, g : 2 * g]  # bottom-right crop
    torch.testing.assert_close(with_patch[: g * g], full[: g * g])
    torch.testing.assert_close(with_patch[g * g :].view(g, g + 1, -1)[:, :g], crop3)
    torch.testing.assert_close(with_patch[g * g :].view(g, g + 1, -1)[:, g], anyres[g:, 2 * g])  # newlines


def test_llava_unpruned_generation_matches_transformers(llava):
    img = llava._pil(_images(1, seed=2)[0])
    llava.prune = False
    try:
        ours, _ = llava.generate_ids([img], [None])
    finally:
        llava.prune = True
    inputs = llava.processor(images=[img], text=[llava.prompt_text()], return_tensors="pt")
    theirs = llava.model.generate(**inputs, max_new_tokens=8, do_sample=False,
                                  pad_token_id=llava.tokenizer.pad_token_id)  # fmt: skip
    assert torch.equal(ours[0], theirs[0, inputs["input_ids"].shape[1] :])


def test_llava_batching_and_captions(llava):
    images = _images(3, seed=3) + _images(1, size=48, seed=4)  # mixed sizes in one batch
    metas = [None, {"box": [16, 16, 32, 32]}, None, {"box": [0, 0, 48, 24], "setting": "CM1/2"}]
    pil = [llava._pil(im) for im in images]
    batched, _ = llava.generate_ids(pil, metas)
    for i in range(len(pil)):  # left padding leaves every sequence's greedy tokens unchanged
        alone, _ = llava.generate_ids([pil[i]], [metas[i]])
        assert torch.equal(batched[i, : alone.shape[1]], alone[0])
    caps = llava.caption(images, metas=metas)
    assert len(caps) == 4 and all(isinstance(c, str) for c in caps)
    for c in caps:
        assert "\n" not in c and "<|" not in c and "assistant" not in c
        assert c == "" or c.endswith((".", "!", "?")) or not any(ch in c for ch in ".!?")
    with pytest.raises(ValueError, match="uint8"):
        llava.caption([np.zeros((8, 8), np.float32)])


# ------------------------------------------------------------------------------------------------ captioning job

from microt2i.data.captions import read_captions  # noqa: E402
from microt2i.encoders.captioner import folder_source, run_caption_job, shard_path, world_source  # noqa: E402


class _FailingCaptioner(WorldCaptioner):
    """Raises on its `fail_at`-th call: a crash in the middle of a job."""

    def __init__(self, fail_at):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def caption(self, images=None, *, metas=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        return super().caption(images, metas=metas)


def _check_complete(path, keys, scenes_by_key):
    lines = path.read_text().splitlines()
    got = [line.split("\t", 1)[0] for line in lines]
    assert sorted(got) == sorted(keys)  # every key exactly once: nothing lost, nothing duplicated
    caps = read_captions(path)
    assert all(caps[k] == WorldCaptioner().caption(metas=[scenes_by_key[k]]) for k in keys)


def test_caption_job_resumes_after_a_crash(tmp_path):
    keys, load = world_source(50, seed=1, resolution=16)
    scenes = {k: load(k)[1] for k in keys}
    out = tmp_path / "caps.tsv"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_caption_job(keys, load, _FailingCaptioner(fail_at=4), out, batch_size=7, progress=False, log=lambda s: None)
    assert len(out.read_text().splitlines()) == 21  # three batches of 7 were appended before the crash
    with open(out, "a") as f:
        f.write(f"{keys[21]}\tA torn ro")  # and a torn append
    res = run_caption_job(keys, load, WorldCaptioner(), out, batch_size=7, progress=False, log=lambda s: None)
    assert res["skipped_done"] == 21 and res["captioned"] == 29
    _check_complete(out, keys, scenes)
    again = run_caption_job(keys, load, _FailingCaptioner(fail_at=1), out, progress=False, log=lambda s: None)
    assert again["captioned"] == 0 and again["skipped_done"] == 50  # finished: the captioner is never called


def test_caption_job_resumes_after_sigkill(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed.jsonl"
    script = f"""
import time
from microt2i.encoders.captioner import WorldCaptioner, run_caption_job, world_source
class Slow(WorldCaptioner):
    def caption(self, images=None, *, metas=None):
        time.sleep(0.02)
        return super().caption(images, metas=metas)
keys, load = world_source(400, seed=2, resolution=8)
run_caption_job(keys, load, Slow(), {str(out)!r}, batch_size=3, progress=False, log=lambda s: None)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.stat().st_size < 3000):
            time.sleep(0.02)
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    complete = out.read_bytes().count(b"\n")  # whole rows; a row torn by the kill is cut on resume
    assert 0 < complete < 400
    keys, load = world_source(400, seed=2, resolution=8)
    res = run_caption_job(keys, load, WorldCaptioner(), out, batch_size=50, progress=False, log=lambda s: None)
    assert res["skipped_done"] == complete and res["captioned"] == 400 - complete
    _check_complete_jsonl(out, keys, {k: load(k)[1] for k in keys})


def _check_complete_jsonl(path, keys, scenes_by_key):
    import json

    got = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert sorted(got) == sorted(keys)
    caps = read_captions(path)
    assert all(caps[k] == WorldCaptioner().caption(metas=[scenes_by_key[k]]) for k in keys)


def test_caption_job_shards_partition_the_keys(tmp_path):
    keys, load = world_source(23, seed=0, resolution=8)
    out = tmp_path / "c.tsv"
    for i in range(3):
        run_caption_job(keys, load, WorldCaptioner(), out, num_shards=3, shard_index=i, progress=False, log=print)
    assert shard_path(out, 3, 1).name == "c.shard00001-of-00003.tsv" and not out.exists()
    sizes = [len(read_captions(shard_path(out, 3, i))) for i in range(3)]
    assert sizes == [8, 8, 7]
    assert sorted(read_captions(str(tmp_path / "c.shard*.tsv"))) == sorted(keys)
    with pytest.raises(ValueError, match="--shard-index 3"):
        run_caption_job(keys, load, WorldCaptioner(), out, num_shards=3, shard_index=3)


def test_caption_job_on_a_folder_with_aio_and_a_corrupt_file(tmp_path):
    from PIL import Image

    root = tmp_path / "train"
    for synset in ("n01440764", "n01443537"):
        (root / synset).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * j, np.uint8)).save(root / synset / f"{j}.png")
    (root / "n01443537" / "bad.JPEG").write_bytes(b"not a jpeg")
    keys, load = folder_source(root)
    assert keys[0] == "n01440764/0.png" and len(keys) == 5
    logs = []
    res = run_caption_job(keys, load, TemplateCaptioner(), tmp_path / "aio.tsv", progress=False, log=logs.append)
    assert res["failed"] == ["n01443537/bad.JPEG"] and any("skipped n01443537/bad.JPEG" in s for s in logs)
    assert read_captions(tmp_path / "aio.tsv") == {
        "n01440764/0.png": ["An image of a tench"], "n01440764/1.png": ["An image of a tench"],
        "n01443537/0.png": ["An image of a goldfish"], "n01443537/1.png": ["An image of a goldfish"]}  # fmt: skip


def test_caption_cli(tmp_path, capsys):
    from microt2i.cli import main

    out = tmp_path / "w.tsv"
    assert main(["caption", "--n", "12", "--out", str(out), "--no-progress", "--resolution", "16"]) == 0
    assert main(["caption", "--n", "20", "--out", str(out), "--no-progress", "--resolution", "16"]) == 0
    assert "8 captioned, 12 already done" in capsys.readouterr().out
    _, _, scenes = make_dataset(20, seed=0, resolution=16)
    assert list(read_captions(out).values()) == [[long_caption(s)] for s in scenes]
    assert main(["caption", "--n", "4", "--out", str(tmp_path / "a.tsv"), "--captioner", "aio", "--classes", "world",
                 "--no-progress"]) == 0  # fmt: skip
    assert list(read_captions(tmp_path / "a.tsv").values())[:4] == [[aio_caption(s)] for s in scenes[:4]]
    assert main(["caption", "--num-shards", "2", "--shard-index", "5", "--out", str(out)]) == 2


# ------------------------------------------------------------------------------------------------ prompt extenders

from microt2i.encoders.extender import LMExtender, TemplateExtender, make_extender, parse_prompt  # noqa: E402


def test_parse_prompt_reads_every_geneval_template():
    from microt2i.eval.geneval import make_prompts
    from microt2i.world.scenes import CLASSES, COLORS

    records = make_prompts(CLASSES, tuple(COLORS), seed=0, n=20)
    assert {r["tag"] for r in records} == {"single_object", "two_object", "counting", "colors", "position",
                                           "color_attr"}  # fmt: skip
    for r in records:
        parsed = parse_prompt(r["prompt"], CLASSES, tuple(COLORS))
        assert (parsed["tag"], parsed["include"]) == (r["tag"], r["include"]), r["prompt"]
    with pytest.raises(ValueError, match="'a photo of a dragon' is not a GenEval-style prompt"):
        parse_prompt("a photo of a dragon", CLASSES, tuple(COLORS))
    with pytest.raises(ValueError, match="not a GenEval-style prompt"):
        parse_prompt("a photo of two star", CLASSES, tuple(COLORS))  # count and number disagree


def test_template_extender_keeps_the_prompt_facts():
    ext = make_extender("world", seed=0)
    prompts = ["a photo of two red stars", "a photo of a blue heart and a green fish",
               "a photo of a cross above a bone", "a photo of a ring"]
    out = ext.extend(prompts)
    assert out == TemplateExtender(seed=0).extend(prompts) and out != TemplateExtender(seed=1).extend(prompts)
    assert all(len(c.split()) > len(p.split()) + 5 for c, p in zip(out, prompts))  # long-caption style
    import re

    assert len(re.findall(r"(?<!the )red star", out[0])) == 2  # two objects introduced ("the red star" refers back)
    assert "blue heart" in out[1] and "green fish" in out[1]
    assert "above the" in out[2] and "cross" in out[2] and "bone" in out[2]  # the cross is described above the bone
    assert " ring" in out[3] and not any(c in out[3] for c in ("star", "heart", "fish", "cross"))


@pytest.fixture(scope="module")
def lm_extender(tmp_path_factory):
    from _tiny_models import tiny_causal_lm

    return LMExtender(str(tiny_causal_lm(tmp_path_factory.mktemp("lm"))), max_new_tokens=6, batch_size=3, device="cpu")


def test_lm_extender(lm_extender):
    text = lm_extender.prompt_text("a red cube")
    assert text.startswith("<|start_header_id|>user<|end_header_id|>\n\nRewrite this short image prompt")
    assert text.endswith("Prompt: a red cube<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    prompts = ["a red cube", "two cones on the left of a small blue sphere", "a sphere"]
    batched = lm_extender.generate_ids(prompts)
    for i, p in enumerate(prompts):  # left padding: the same greedy tokens as alone
        assert torch.equal(batched[i], lm_extender.generate_ids([p])[0])
    out = lm_extender.extend(prompts)
    assert out == lm_extender.extend(prompts) and len(out) == 3
    assert all(c and "\n" not in c and "assistant" not in c for c in out)
    with pytest.raises(ValueError, match="must contain"):
        LMExtender("unused", instruction="no placeholder")
