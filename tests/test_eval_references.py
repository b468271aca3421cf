"""Real reference sets (eval/references.py) and `microt2i eval fid | fd | kid | prdc | clipscore --reference …` on a
tiny finished run: a fabricated ImageNet tree (train/ + val/, three classes, class folders and a flat val/ with a
labels file), a class-folder image set, an image + caption set; tiny random Inception / DINOv2 / CLIP saved locally;
`eval geneval|dpg --extend`; one clear error for each bad input."""

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from _tiny_models import tiny_causal_lm, tiny_clip, tiny_llava_next, tiny_mask2former, tiny_vilt
from microt2i import presets
from microt2i.cli import main
from microt2i.config import apply_overrides
from microt2i.eval import features, references
from microt2i.train.loop import prepare_data, train
from test_eval_inception import published_like_state_dict

SYNSETS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
PER_CLASS = 8  # val images per class: 24 in all


def tiny(*extra):
    return apply_overrides(presets.get("world-tiny"), ["train.device=cpu", "eval.steps=2", *extra])


def _img(rng, w, h, path):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """root/train/<synset>/, root/val/<synset>/ and a flat copy root_flat/val/*.JPEG + labels file."""
    root = tmp_path_factory.mktemp("imagenet")
    flat = tmp_path_factory.mktemp("imagenet_flat")
    rng = np.random.default_rng(0)
    (flat / "val").mkdir()
    labels, i = [], 0
    for syn in SYNSETS:
        (root / "train" / syn).mkdir(parents=True)
        (root / "val" / syn).mkdir(parents=True)
        for j in range(2):
            _img(rng, 20, 16, root / "train" / syn / f"{syn}_{j}.JPEG")
        for j in range(PER_CLASS):
            i += 1
            name = f"ILSVRC2012_val_{i:08d}.JPEG"
            _img(rng, 24 + j, 18, root / "val" / syn / name)
            shutil.copy(root / "val" / syn / name, flat / "val" / name)
            labels.append(f"{name} {syn}")
    (flat / "labels.txt").write_text("\n".join(labels) + "\n")
    return root, flat


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """An image + caption set (COCO-30k style): flat images, a TSV of captions, two images left uncaptioned."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(14):
        _img(rng, 30, 20, root / f"{i:012d}.jpg")
        if i < 12:
            rows.append(f"{i:012d}.jpg\ta photo of thing number {i}")
            rows.append(f"{i:012d}.jpg\ta second caption of {i}")
    caps = root.parent / "coco_captions.tsv"
    caps.write_text("\n".join(rows) + "\n")
    return root, caps


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    run_dir = tmp_path_factory.mktemp("run")
    store = prepare_data(tiny(), torch.device("cpu"), log=lambda *_: None)
    assert train(tiny(), run_dir, store=store, progress=False, log=lambda *_: None)["finished"]
    return run_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    d = tmp_path_factory.mktemp("models")
    torch.save(published_like_state_dict(), d / "pt_inception-2015-12-05-6726825d.pth")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=14, image_size=28)).save_pretrained(d / "dino")
    tiny_clip(d / "clip", kind="full")
    return {"inception": d / "pt_inception-2015-12-05-6726825d.pth", "dino": d / "dino", "clip": d / "clip"}


def imagenet_cfg(root, *extra):
    return tiny("data.source=imagenet", f"data.root={root}", f"data.store_dir={root}/store", *extra)


# --------------------------------------------------------------------------------------------- references


def test_imagenet_val_is_the_default_on_an_imagenet_run_with_aio_prompts(imagenet):
    root, _ = imagenet
    ref = references.make_reference(None, imagenet_cfg(root), n=6)
    assert ref.kind == "imagenet-val" and ref.n == 6 and ref.paper_n == 50_000
    assert ref.spec["n"] == 6 and ref.spec["of"] == 3 * PER_CLASS and ref.spec["prompts"] == "aio"
    for path, prompt in zip(ref.paths, ref.prompts):  # the prompt names the image's class
        assert path.parent.parent.name == "val" and prompt == f"An image of a {SYNSETS[path.parent.name]}"
    again = references.make_reference("val", imagenet_cfg(root), n=6)
    assert again.paths == ref.paths  # a fixed order: the same N images every time
    batches = list(ref.batches(size=4))
    assert [b.shape for b in batches] == [(4, 16, 16, 3), (2, 16, 16, 3)] and batches[0].dtype == np.uint8
    assert references.make_reference("val", imagenet_cfg(root), n=3 * PER_CLASS).spec["n"] == 3 * PER_CLASS


def test_flat_val_needs_labels_and_captions_come_from_a_caption_file(imagenet, tmp_path):
    _, flat = imagenet
    with pytest.raises(FileNotFoundError, match="--labels-file"):
        references.make_reference(f"imagenet-val:{flat}", tiny(), n=4)
    ref = references.make_reference(f"imagenet-val:{flat}", tiny(), n=5, labels_file=str(flat / "labels.txt"))
    labels = dict(line.split() for line in (flat / "labels.txt").read_text().splitlines())
    assert all(p == f"An image of a {SYNSETS[labels[path.name]]}" for path, p in zip(ref.paths, ref.prompts))
    # the run's data.labels_file serves `--reference val`
    cfg = imagenet_cfg(flat, f"data.labels_file={flat / 'labels.txt'}")
    assert references.make_reference("val", cfg, n=5).paths == ref.paths
    caps = tmp_path / "val_captions.tsv"
    caps.write_text("".join(f"{name}\ta long caption of {name}\n" for name in labels))
    long = references.make_reference(f"imagenet-val:{flat}", tiny(), n=5, labels_file=str(flat / "labels.txt"),
                                     captions=str(caps))
    assert long.prompts == [f"a long caption of {p.name}" for p in long.paths] and long.spec != ref.spec
    caps.write_text(f"{next(iter(labels))}\tonly one\n")
    with pytest.raises(ValueError, match="have no caption in"):
        references.make_reference(f"imagenet-val:{flat}", tiny(), n=5, labels_file=str(flat / "labels.txt"),
                                  captions=str(caps))


def test_folders_and_image_caption_sets(imagenet, coco):
    root, _ = imagenet
    ref = references.make_reference(f"folder:{root / 'val'}", tiny(), n=4)
    assert ref.kind == "folder" and all(p.startswith("An image of a n0") for p in ref.prompts)  # folder names
    root_c, caps = coco
    with pytest.raises(ValueError, match="outside class folders.*--captions"):
        references.make_reference(str(root_c), tiny(), n=4)
    ref = references.make_reference(f"folder:{root_c}", tiny(), n=12, captions=str(caps))
    assert ref.kind == "captioned" and ref.spec["uncaptioned"] == 2 and ref.spec["of"] == 12
    assert all(p == f"a photo of thing number {int(path.stem)}" for path, p in zip(ref.paths, ref.prompts))
    with pytest.raises(ValueError, match=r"holds 12 images, fewer than N = 30,000.*--n 12"):
        references.make_reference(f"folder:{root_c}", tiny(), captions=str(caps))  # COCO-30k's N by default
    with pytest.raises(ValueError, match=r"fewer than N = 13 .*--n 12"):
        references.make_reference(f"folder:{root_c}", tiny(), n=13, captions=str(caps))


def test_bad_references_get_one_clear_error(imagenet, tmp_path):
    root, _ = imagenet
    with pytest.raises(ValueError, match=r"holds 24 images, fewer than N = 50,000.*--n 24"):
        references.make_reference("val", imagenet_cfg(root))
    with pytest.raises(ValueError, match="data.source='world'.*imagenet-val:"):
        references.make_reference("val", tiny(), n=4)
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        references.make_reference(f"imagenet-val:{tmp_path}", tiny(), n=4)
    with pytest.raises(FileNotFoundError, match="neither a known reference nor a folder"):
        references.make_reference("coco", tiny(), n=4)
    bad = tmp_path / "bad" / "cls"
    bad.mkdir(parents=True)
    for i in range(3):
        _img(np.random.default_rng(i), 8, 8, bad / f"{i}.jpg")
    (bad / "3.jpg").write_bytes(b"")
    ref = references.make_reference(f"folder:{tmp_path / 'bad'}", tiny(), n=4)
    with pytest.raises(ValueError, match=r"3.jpg cannot be read \(empty file\)"):
        list(ref.batches())


def test_reference_features_are_cached_by_extractor_set_and_n(imagenet, tmp_path):
    root, _ = imagenet
    calls = []

    def preprocess(b):
        calls.append(len(b))
        return torch.from_numpy(b.reshape(len(b), -1)[:, :3].astype(np.float32))

    ext = features.FeatureExtractor("fake", "FD-fake", "fake:v1", 3, preprocess=preprocess, forward=lambda x: x)
    ref = references.make_reference("val", imagenet_cfg(root), n=6)
    a = ref.features(ext, tmp_path)
    assert a.shape == (6, 3) and sum(calls) == 6
    assert np.array_equal(references.make_reference("val", imagenet_cfg(root), n=6).features(ext, tmp_path), a)
    assert sum(calls) == 6  # read back, not recomputed
    references.make_reference("val", imagenet_cfg(root), n=7).features(ext, tmp_path)
    assert sum(calls) == 13  # another N: another entry
    files = sorted((tmp_path / "eval-features").glob("*.npy"))
    assert len(files) == 2 and not list((tmp_path / "eval-features").glob("*.tmp*"))


def test_chunked_sampling_equals_one_call(run):
    from microt2i.eval.runner import RunSampler

    sampler = RunSampler.from_run(run, steps=2, batch_size=1)  # chunks hold whole batches: chunk=2 stays 2
    prompts = [f"a red cube number {i}" for i in range(5)]
    whole = sampler(prompts, seed=3)
    got = []
    kept = sampler.stream(prompts, seed=3, consume=lambda images, start: got.append((start, images)), keep=3, chunk=2)
    assert [s for s, _ in got] == [0, 2, 4] and np.array_equal(np.concatenate([g for _, g in got]), whole)
    assert np.array_equal(kept, whole[:3])


# ------------------------------------------------------------------------------------------------ the CLI


def _results(run, metric):
    return json.loads((run / "eval" / metric / "results.json").read_text())


def test_eval_fid_fd_kid_prdc_clipscore_against_real_references(run, imagenet, coco, models, cache, capsys):
    root, flat = imagenet
    val = f"imagenet-val:{root}"
    assert main(["eval", "fid", str(run), "--reference", val, "--n", "6", "--weights", str(models["inception"])]) == 0
    fid = _results(run, "fid")["metrics"]
    assert fid["n"] == fid["n_real"] == fid["n_fake"] == 6 and fid["n_paper"] == 50_000 and fid["FID"] > 0
    assert fid["features"].endswith(":299:bilinear") and "ImageNet val" in fid["reference"]
    assert "[N=6]" in capsys.readouterr().out
    cached = sorted((cache / "eval-features").glob("inception-*.npy"))
    assert len(cached) == 1
    assert main(["eval", "kid", str(run), "--reference", val, "--n", "6", "--weights", str(models["inception"])]) == 0
    assert sorted((cache / "eval-features").glob("inception-*.npy")) == cached  # the reference features reused
    assert _results(run, "kid")["metrics"]["KID"] == pytest.approx(fid["KID"])
    root_c, caps = coco
    assert main(["eval", "fd", str(run), "--reference", f"folder:{root_c}", "--captions", str(caps), "--n", "10",
                 "--weights", str(models["dino"])]) == 0
    fd = _results(run, "fd")["metrics"]
    assert fd["FD-DINOv2"] > 0 and fd["n"] == 10 and fd["n_paper"] == 30_000
    assert main(["eval", "prdc", str(run), "--reference", val, "--n", "20", "--weights", str(models["dino"])]) == 0
    prdc = _results(run, "prdc")["metrics"]
    assert prdc["k"] == 3 and prdc["splits"] == 5 and prdc["n_real"] == 20 and prdc["features"].startswith("dinov2")
    assert main(["eval", "clipscore", str(run), "--reference", val, "--n", "4", "--model", str(models["clip"])]) == 0
    cs = _results(run, "clipscore")
    assert cs["metrics"]["n"] == 4 and cs["settings"]["n"] == 4 and cs["settings"]["reference"] == val


@pytest.fixture(scope="module")
def imagenet_run(run, imagenet, tmp_path_factory):
    """The tiny run with its config saying it trained on the fabricated ImageNet (the network does not care)."""
    root, _ = imagenet
    clone = tmp_path_factory.mktemp("imagenet_run") / "run"
    shutil.copytree(run, clone, ignore=shutil.ignore_patterns("eval"))
    cfg = yaml.safe_load((clone / "config.yaml").read_text())
    cfg["data"].update(source="imagenet", root=str(root), store_dir=str(clone.parent / "store"))
    (clone / "config.yaml").write_text(yaml.safe_dump(cfg))
    return clone


def test_the_run_val_is_the_default_reference_of_an_imagenet_run(imagenet_run, imagenet, models):
    root, _ = imagenet
    clone = imagenet_run
    assert main(["eval", "fid", str(clone), "--n", "5", "--weights", str(models["inception"])]) == 0
    assert _results(clone, "fid")["metrics"]["reference"] == f"ImageNet val ({root / 'val'})"


def test_eval_cli_errors_are_one_line(run, imagenet, coco, models, capsys, monkeypatch):
    root, flat = imagenet
    w = ["--weights", str(models["inception"])]
    cases = [
        (["eval", "fid", str(run), "--reference", f"imagenet-val:{root}", *w],
         "holds 24 images, fewer than N = 50,000"),  # the papers' N by default
        (["eval", "fid", str(run), "--reference", f"imagenet-val:{flat}", "--n", "4", *w], "--labels-file"),
        (["eval", "fid", str(run), "--reference", f"imagenet-val:{root}", "--n", "4"], "--weights"),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases.append((["eval", "fd", str(run), "--reference", f"imagenet-val:{root}", "--n", "4", "--weights",
                   "no-such-org/dinov2-missing"], "no-such-org/dinov2-missing"))
    for argv, want in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_geneval_and_dpg_with_the_prompt_extender(run, tmp_path):
    assert main(["eval", "geneval", str(run), "--per-tag", "1", "--images-per-prompt", "1", "--extend", "world"]) == 0
    res = _results(run, "geneval-extended")
    assert res["metrics"]["prompt_set"] == "extended (★) by world" and res["settings"]["extend"] == "world"
    rows = [json.loads(ln) for ln in (run / "eval" / "geneval-extended" / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["generation_prompt"] != r["prompt"] and len(r["generation_prompt"]) > len(r["prompt"])
                        for r in rows)  # generated from the long caption, scored against the original record
    assert not (run / "eval" / "geneval").exists() or _results(run, "geneval")["metrics"]["prompt_set"] != \
        res["metrics"]["prompt_set"]
    lm = tiny_causal_lm(tmp_path / "lm")
    assert main(["eval", "dpg", str(run), "--n", "2", "--images-per-prompt", "1", "--extend", str(lm)]) == 0
    dpg = _results(run, "dpg-extended")["metrics"]
    assert dpg["prompt_set"] == f"extended (★) by {lm}" and dpg["prompts"] == 2


# ------------------------------------------------------------------------------ docs/evaluation.md, shrunk

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
SHRINK = {"fid": ["--n", "6"], "fd": ["--n", "6"], "clipscore": ["--n", "4"], "prdc": ["--n", "20"],
          "geneval": ["--per-tag", "1", "--images-per-prompt", "1"], "dpg": ["--n", "2", "--images-per-prompt", "1"]}


def doc_commands(heading: str) -> list[str]:
    section = DOC.read_text().split(heading, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.startswith("microt2i ")]


def test_docs_real_reference_commands_run_shrunk(imagenet_run, imagenet, coco, models, tmp_path):
    from test_eval_dpg import CSV

    root, _ = imagenet
    root_c, caps = coco
    (tmp_path / "dpg_bench.csv").write_text(CSV)
    paths = {
        "runs/dit-i-256": imagenet_run, "/data/imagenet": root, "/data/coco/val2014": root_c,
        "/data/coco/captions.tsv": caps, "/data/dpg_bench.csv": tmp_path / "dpg_bench.csv",
        "/models/pt_inception-2015-12-05-6726825d.pth": models["inception"], "facebook/dinov2-large": models["dino"],
        "openai/clip-vit-large-patch14": models["clip"], "/models/mask2former-coco": tiny_mask2former(tmp_path / "m2f"),
        "/models/vqa": tiny_vilt(tmp_path / "vqa"), "Qwen/Qwen2.5-1.5B-Instruct": tiny_causal_lm(tmp_path / "lm"),
        "llava-hf/llama3-llava-next-8b-hf": tiny_llava_next(tmp_path / "llava"),
    }
    commands = doc_commands("## Real reference sets")
    assert len(commands) >= 8
    for line in commands:
        argv = shlex.split(line)[1:]
        for k in sorted(paths, key=len, reverse=True):  # longest first: /data/imagenet/val_captions.tsv
            argv = [a.replace(k, str(paths[k])) for a in argv]
        argv += SHRINK.get(argv[1], []) if argv[0] == "eval" else ["--max-new-tokens", "4", "--device", "cpu",
                                                                    "--no-progress"]
        assert main(argv) == 0, line
        if argv[0] == "caption":  # every val image got a row; a random tiny LLaVA may say nothing: fill those in
            rows = [ln.split("\t", 1) for ln in (root / "val_captions.tsv").read_text().splitlines()]
            assert sorted(k for k, _ in rows) == sorted(f"{p.parent.name}/{p.name}" for p in root.glob("val/*/*"))
            (root / "val_captions.tsv").write_text("".join(f"{k}\t{c.strip() or 'a caption'}\n" for k, c in rows))
    assert (imagenet_run / "eval" / "geneval-extended" / "results.json").is_file()
    fd = _results(imagenet_run, "fd")["metrics"]
    assert fd["n"] == 6 and fd["reference"].startswith("ImageNet val")
