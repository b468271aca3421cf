"""CutMix composites of any labelled image source (ImageNet-T2I App. D–E): an ImageNet-layout tree captioned by a
tiny LLaVA-NeXT with the CutMix prompt, the world through the same sharded engine, resume and machine shards
equal to one uninterrupted job, training reads them, and one clear error for each bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_imagenet import GOLDFISH, TENCH, make_tree
from _tiny_models import tiny_llava_next, tiny_t5
from PIL import Image

from microt2i import presets
from microt2i.augment.cutmix import (build_cutmix_shards, cutmix_dir, make_composites,
                                     open_cutmix_store, pair_caption)
from microt2i.config import CutMixConfig, DataConfig, apply_overrides
from microt2i.data.captions import read_captions, write_captions
from microt2i.data.precompute import precompute
from microt2i.data.store import MANIFEST, StoreMismatchError, open_store, verify_store
from microt2i.encoders.captioner import COMPOSITE_PROMPT, LlavaCaptioner

QUIET = lambda *_: None  # noqa: E731
OTHER = "n01484850"  # great white shark: a third class


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"t5": str(tiny_t5(d / "t5")), "llava": str(tiny_llava_next(d / "llava"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The fabricated ImageNet tree (2 classes, corrupt files the base store skips) plus a third class, and long
    captions for its readable images."""
    root = tmp_path_factory.mktemp("imagenet")
    make_tree(root, n_good=2)
    rng = np.random.default_rng(1)
    (root / "train" / OTHER).mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(root / "train" / OTHER / f"s{i}.JPEG")
    keys = sorted(p.relative_to(root / "train").as_posix() for p in (root / "train").rglob("*") if p.is_file())
    write_captions(root / "long.tsv", [(k, f"a long caption of {k}") for k in keys])
    return root


def _data(models, root, store, **kw) -> DataConfig:
    base = dict(source="imagenet", root=str(root), store_dir=str(store), resolution=16, codec="pixel",
                text_encoder=models["t5"], text_len=8, shard_size=4, caption_file=str(root / "long.tsv"))
    return DataConfig(**(base | kw))


def _files(folder: Path) -> dict[str, bytes]:
    """The store's files (shards, sidecars, plan, manifest), without the per-job caption logs."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.suffix != ".tsv"}


class _Spy:
    """A LLaVA captioner that records what it was asked, and can crash on its `fail_at`-th call."""

    def __init__(self, llava, fail_at=None):
        self.llava, self.fail_at, self.calls = llava, fail_at, []

    def caption(self, images, *, metas=None):
        self.calls.append([(m["key"], m["pattern"], tuple(m["box"])) for m in metas])
        if len(self.calls) == self.fail_at:
            raise KeyboardInterrupt("killed while captioning")
        return self.llava.caption(images, metas=metas)


@pytest.fixture(scope="module")
def llava(models):
    return LlavaCaptioner(models["llava"], max_new_tokens=6, batch_size=4, device="cpu")


def test_imagenet_composites_resume_and_shards_equal_one_job(models, tree, llava, tmp_path):
    data = _data(models, tree, tmp_path / "store")
    precompute(data, log=QUIET)
    base = open_store(data.store_dir)
    assert len(base) == 10  # readable: 2 + 2 + 2 good, grey, CMYK, PNG-named-JPEG, RGBA (2 corrupt skipped)
    cm = CutMixConfig(setting="all", times=2, seed=3)
    opts = dict(model=models["llava"], max_new_tokens=6, caption_batch_size=3, log=QUIET)

    # one uninterrupted job
    spy = _Spy(llava)
    one = build_cutmix_shards(data, cm, captioner=spy, **opts)
    assert one["manifest"] and one["done"] == [0, 1, 2, 3, 4]
    folder = cutmix_dir(data, cm)
    assert folder == Path(data.store_dir) / "cutmix-all-x2-s3" and verify_store(folder) == []
    store = open_cutmix_store(data, cm)
    assert len(store) == 2 * len(base)
    recs, classes = store.records, [k.split("/")[0] for k in base.keys]
    for k, r in enumerate(recs):  # composite k = i·times + j of base sample i; the partner is of another class
        assert r["source"] == k // 2 and r["key"] == f"{base.keys[k // 2]}#{k % 2}"
        assert classes[r["partner"]] != classes[r["source"]] and r["partner_key"] == base.keys[r["partner"]]
        assert r["label"] == base.records[r["source"]]["label"]
    assert {r["pattern"] for r in recs} <= {"1/2", "1/4", "1/9", "1/16"} and len({r["pattern"] for r in recs}) > 1
    # every composite went to LLaVA once, with its box and pattern (→ the CutMix prompt, App. D)
    asked = [c for call in spy.calls for c in call]
    assert [a[0] for a in asked] == [r["key"] for r in recs]
    assert all(a[1] == r["pattern"] and list(a[2]) == r["box"] for a, r in zip(asked, recs))
    assert all(len(call) <= 3 for call in spy.calls)
    table = read_captions(folder / "captions.tsv")
    assert all(table.get(r["key"], [""])[0] == r["caption"] for r in recs)
    assert llava._plan(llava._pil(np.zeros((16, 16, 3), np.uint8)), recs[0])[0]  # a box → the CutMix prompt
    assert COMPOSITE_PROMPT in llava.prompt_text(composite=True)
    # the pixels: the identity codec stores the composite itself, base pixels outside the box
    x0, y0, x1, y1 = recs[0]["box"]
    comp, src = store.latents[[0]][0], base.latents[[0]][0]
    outside = torch.ones_like(comp, dtype=torch.bool)
    outside[:, y0:y1, x0:x1] = False
    assert torch.equal(comp[outside], src[outside]) and not torch.equal(comp, src)

    # killed inside LLaVA captioning (2nd call), then after shard 1: each restart resumes to the same store
    data2 = _data(models, tree, tmp_path / "s2")
    precompute(data2, log=QUIET)
    with pytest.raises(KeyboardInterrupt):
        build_cutmix_shards(data2, cm, captioner=_Spy(llava, fail_at=2), **opts)
    assert len(read_captions(cutmix_dir(data2, cm) / "captions.tsv")) == 3  # the first batch only
    assert not list(cutmix_dir(data2, cm).glob("shard-*"))

    def stop(s):
        if s == 1:
            raise KeyboardInterrupt("killed after shard 1")

    with pytest.raises(KeyboardInterrupt):
        build_cutmix_shards(data2, cm, captioner=_Spy(llava), on_shard=stop, **opts)
    partial = read_captions(cutmix_dir(data2, cm) / "captions.tsv")
    assert 0 < len(partial) < len(recs)
    again = _Spy(llava)
    out = build_cutmix_shards(data2, cm, captioner=again, **opts)
    assert out["skipped_shards"] == [0, 1] and out["done"] == [2, 3, 4]
    assert not any(k in partial for call in again.calls for k, *_ in call)  # captioned rows are never redone
    assert _files(folder) == _files(cutmix_dir(data2, cm))

    # two machines (shard 1 first), then the other: the same files as one job
    data3 = _data(models, tree, tmp_path / "s3")
    precompute(data3, log=QUIET)
    first = build_cutmix_shards(data3, cm, captioner=_Spy(llava), num_shards=2, shard_index=1, **opts)
    assert first["done"] == [1, 3] and not first["manifest"]
    second = build_cutmix_shards(data3, cm, captioner=_Spy(llava), num_shards=2, shard_index=0, **opts)
    assert second["done"] == [0, 2, 4] and second["manifest"]
    assert sorted(p.name for p in cutmix_dir(data3, cm).glob("captions*.tsv")) == [
        "captions.shard00000-of-00002.tsv", "captions.shard00001-of-00002.tsv"]
    assert _files(folder) == _files(cutmix_dir(data3, cm))
    # read back by glob, the per-job caption files hold every composite's caption
    assert set(read_captions(str(cutmix_dir(data3, cm) / "captions*.tsv"))) == set(table)


def test_world_composites_through_the_sharded_engine_are_the_world_ones(models, tmp_path):
    from microt2i.world import make_dataset

    data = DataConfig(source="world", num_images=10, resolution=16, text_encoder=models["t5"], text_len=8,
                      shard_size=4, store_dir=str(tmp_path / "w"))
    precompute(data, log=QUIET)
    cm = CutMixConfig(setting="1/4", times=2)
    build_cutmix_shards(data, cm, log=QUIET)
    store = open_cutmix_store(data, cm)
    images, _, scenes = make_dataset(10, seed=0, resolution=16, max_objects=data.max_objects)
    comp, texts, meta = make_composites(images, scenes, cm)
    assert store.captions == texts  # the oracle's words, the same draws
    assert [{k: r[k] for k in ("source", "partner", "pattern", "box", "src")} for r in store.records] == meta
    assert torch.allclose(store.latents[np.arange(len(comp))],
                          torch.from_numpy(comp).permute(0, 3, 1, 2).float() / 127.5 - 1, atol=1e-2)  # fp16


def test_aio_composites_name_both_classes(models, tree, tmp_path):
    data = _data(models, tree, tmp_path / "a", captions="aio", caption_file="")
    precompute(data, log=QUIET)
    cm = CutMixConfig(setting="1/16")
    build_cutmix_shards(data, cm, model="nobody/not-needed", log=QUIET)  # AIO: no captioner model is loaded
    store = open_cutmix_store(data, cm)
    names = {TENCH: "tench", GOLDFISH: "goldfish", OTHER: "great white shark"}
    for r, c in zip(store.records, store.captions):
        a, b = names[r["key"].split("/")[0]], names[r["partner_key"].split("/")[0]]
        assert c == pair_caption([a, b]) == f"An image of a {a} and a {b}"
    assert pair_caption(["crane", "crane"]) == "An image of a crane"


def test_bad_inputs_one_clear_error_nothing_written(models, tree, tmp_path, capsys):
    from microt2i.cli import main

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(flat / f"{i}.png")
    args = ["world-tiny", "data.source=folder", f"data.root={flat}", f"data.store_dir={tmp_path / 'fs'}",
            "data.captions=aio", f"data.text_encoder={models['t5']}", "data.text_len=8"]
    assert main(["cutmix", *args]) == 1
    err = capsys.readouterr().err
    assert "outside class folders" in err and "'0.png'" in err and "<root>/<class>/<image>" in err
    assert not (tmp_path / "fs").exists()
    # one class only
    one = tmp_path / "one" / "dogs"
    one.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / "a.png")
    assert main(["cutmix", *args[:2], f"data.root={one.parent}", *args[3:]]) == 1
    assert "at least two classes" in capsys.readouterr().err
    # no classes at all: an image-caption source
    assert main(["cutmix", "world-tiny", "data.source=sidecar", f"data.root={flat}",
                 f"data.store_dir={tmp_path / 'sc'}"]) == 1
    assert "has no classes" in capsys.readouterr().err and not (tmp_path / "sc").exists()

    # the base store is not built yet
    data = _data(models, tree, tmp_path / "store")
    cli = ["world-tiny", f"data.source=imagenet", f"data.root={tree}", f"data.store_dir={data.store_dir}",
           "data.resolution=16", "data.codec=pixel", f"data.text_encoder={models['t5']}", "data.text_len=8",
           "data.shard_size=4", f"data.caption_file={data.caption_file}"]
    assert main(["cutmix", *cli, "--model", models["llava"]]) == 2
    assert "microt2i precompute" in capsys.readouterr().err
    precompute(data, log=QUIET)
    # a captioner id not in the local cache
    assert main(["cutmix", *cli, "--model", "nobody/llava-not-downloaded"]) == 2
    err = capsys.readouterr().err
    assert "LLaVA-NeXT captioner 'nobody/llava-not-downloaded'" in err and "Download it once" in err
    assert not cutmix_dir(data, CutMixConfig()).exists()

    # a composite store built with other settings: another captioner, then a rebuilt base store
    assert main(["cutmix", *cli, "augment.cutmix.setting=1/2", "--model", models["llava"],
                 "--max-new-tokens", "4"]) == 0
    folder = cutmix_dir(data, CutMixConfig(setting="1/2"))
    before = _files(folder)
    assert main(["cutmix", *cli, "augment.cutmix.setting=1/2", "--model", models["llava"],
                 "--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "max_new_tokens: 4 → 5" in err and f"delete {folder}" in err
    assert _files(folder) == before
    assert main(["cutmix", *cli, "augment.cutmix.setting=1/2", "--verify"]) == 0
    (Path(data.caption_file)).write_text((Path(data.caption_file)).read_text().replace("long caption", "caption"))
    try:  # the base store rebuilt with other captions: training refuses the old composites
        import shutil

        for p in Path(data.store_dir).glob("shard-*"):
            p.unlink()
        for name in ("plan.json", MANIFEST):
            (Path(data.store_dir) / name).unlink()
        precompute(data, log=QUIET)
        with pytest.raises(StoreMismatchError, match="base store was rebuilt"):
            open_cutmix_store(data, CutMixConfig(setting="1/2"))
        shutil.rmtree(folder)
        with pytest.raises(FileNotFoundError, match="microt2i cutmix"):
            open_cutmix_store(data, CutMixConfig(setting="1/2"))
    finally:
        (Path(data.caption_file)).write_text((Path(data.caption_file)).read_text().replace(" caption", " long caption"))


def test_training_on_imagenet_reads_the_composites(models, tree, tmp_path, monkeypatch):
    """A shrunk DiT-I (the preset's objective) with CutMix + Crop on, on the ImageNet tree: composites are read by
    the gate of Algorithm 1 (only samples above τ, drawn with p)."""
    from microt2i.data.store import ShardedStore
    from microt2i.train.loop import train

    run = apply_overrides(presets.get("dit-i-256"), [
        "data.source=imagenet", f"data.root={tree}", f"data.store_dir={tmp_path / 'store'}", "data.shard_size=4",
        "data.resolution=16", "data.codec=pixel", f"data.text_encoder={models['t5']}", "data.text_len=8",
        "data.captions=aio", "model.in_channels=3", "model.input_size=16", "model.patch_size=4", "model.text_dim=16",
        "model.width=32", "model.depth=1", "model.heads=2", "model.crop_cond=true",
        "augment.cutmix.enabled=true", "augment.cutmix.p=1.0", "augment.cutmix.tau=1",
        "augment.crop.enabled=true", "train.total_nimg=32", "train.batch_size=8", "train.micro_batch=8",
        "train.threads=1", "train.log_every_nimg=16", "train.ckpt_every_nimg=1000", "train.device=cpu",
        "eval.every_nimg=0"])
    precompute(run.data, log=QUIET)
    with pytest.raises(FileNotFoundError, match="microt2i cutmix"):  # composites not built: refused up front
        train(run, tmp_path / "r0", progress=False, log=QUIET)
    build_cutmix_shards(run.data, run.augment.cutmix, log=QUIET)
    reads = []
    real = ShardedStore.batch

    def spy(self, idx, *a, **k):
        reads.append((self.dir.name, len(np.atleast_1d(idx))))
        return real(self, idx, *a, **k)

    monkeypatch.setattr(ShardedStore, "batch", spy)
    out = train(run, tmp_path / "run", progress=False, log=QUIET)
    assert out["finished"] and out["nan_skips"] == 0
    twins = [n for name, n in reads if name.startswith("cutmix-")]
    assert twins and sum(twins) <= 32  # p = 1 and τ = 1: nearly every sample takes a composite
    assert sum(twins) >= 24


def test_docs_world_walk_through_the_cli(models, tmp_path, capsys):
    """docs/data.md "Try the whole path on the world first", CutMix lines, shrunk."""
    from microt2i.cli import main

    store = tmp_path / "stores" / "tiny"
    shrink = [f"data.text_encoder={models['t5']}", "data.text_len=8", "data.num_images=12", "data.shard_size=5",
              "model.text_dim=16"]
    assert main(["precompute", "world-tiny", f"data.store_dir={store}", *shrink]) == 0
    assert main(["cutmix", "world-tiny", f"data.store_dir={store}", "augment.cutmix.setting=1/4", *shrink,
                 "--show", "2", "--out", str(tmp_path / "prev.png")]) == 0
    out = capsys.readouterr().out
    assert "12 composites (1/4, ×1)" in out and "[1/4 of world-0/0000000, partner world-0/" in out
    assert (tmp_path / "prev.png").is_file()
    assert main(["cutmix", "world-tiny", f"data.store_dir={store}", "augment.cutmix.setting=1/4", *shrink,
                 "--verify"]) == 0
    assert main(["train", "world-tiny", f"data.store_dir={store}", "augment.cutmix.enabled=true",
                 "augment.cutmix.setting=1/4", *shrink, "train.total_nimg=16", "train.threads=1",
                 "--run-dir", str(tmp_path / "runs" / "tiny-cutmix"), "--no-progress"]) == 0
    assert "finished at 16 images" in capsys.readouterr().out
    # the unsharded world path refuses machine shards
    assert main(["cutmix", "world-tiny", "--num-shards", "2"]) == 2
    assert "data.store_dir" in capsys.readouterr().err


def test_partner_draw_is_the_r_th_index_of_another_class():
    """choose_partner without listing the other-class indices equals the listing definition, draw for draw."""
    from microt2i.augment.cutmix import choose_partner

    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 7):
        classes = rng.integers(0, n_classes, 200).astype(str)
        cache = {}
        for i in range(0, 200, 7):
            others = np.flatnonzero(classes != classes[i])
            a, b = np.random.default_rng([i, n_classes]), np.random.default_rng([i, n_classes])
            assert choose_partner(i, classes, a, cache) == others[b.integers(len(others))]


def test_cost_cutmix_bytes_match_a_written_shard(models, tmp_path, capsys):
    from microt2i.cli import main
    from microt2i.data.precompute import bytes_per_sample
    from microt2i.data.store import _header

    for extra in ({}, {"text_store": "ids", "latent_mode": "sample", "store_dtype": "float32"}):
        data = DataConfig(source="world", num_images=6, resolution=16, text_encoder=models["t5"], text_len=8,
                          shard_size=4, store_dir=str(tmp_path / f"w{len(extra)}"), **extra)
        precompute(data, log=QUIET)
        build_cutmix_shards(data, CutMixConfig(times=2), log=QUIET)
        shard = cutmix_dir(data, CutMixConfig(times=2)) / "shard-00000.safetensors"
        _, start = _header(shard)
        per = bytes_per_sample(data, (3, 16, 16), 16)
        assert shard.stat().st_size - start == 4 * sum(per.values())
    assert main(["cost", "cutmix", "dit-i-256", "data.text_len=128", "data.text_store=ids", "--rate", "12"]) == 0
    out = capsys.readouterr().out
    assert "= 17,032 B" in out and "21.8 GB" in out and "29.7 GPU-hours at 12 composites/s" in out
    assert main(["cost", "cutmix", "dit-i-256", "data.text_len=128"]) == 0
    assert "= 540,808 B" in capsys.readouterr().out  # 2·4·32·32·2 + 128·(2048·2 + 1) + 8
