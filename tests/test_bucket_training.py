"""Aspect-ratio buckets end to end: a fabricated folder of wide, tall and square PNGs → `precompute` with
data.buckets=true (each image in its bucket, the store records its latent shape) → a few steps of a tiny DiT-I
whose every batch comes from one bucket → resume bit-exact; and the one-line refusals."""
import json

import numpy as np
import pytest
import torch
from _tiny_models import tiny_t5
from PIL import Image

from microt2i import presets
from microt2i.config import ConfigError, apply_overrides
from microt2i.data.buckets import BucketPositions, assign_bucket, resize_to_bucket, run_buckets
from microt2i.data.precompute import precompute
from microt2i.data.store import MANIFEST, StoreMismatchError, open_store, shard_info, store_key, verify_store
from microt2i.train.loop import train
from microt2i.train.state import load_latest

SIZES = {"wide": (64, 16), "tall": (16, 64), "square": (20, 20), "landscape": (40, 24)}  # PIL (W, H)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """root/<kind>/<i>.png: 6 wide (4:1), 6 tall (1:4), 6 square, 2 landscape (5:3) images of random pixels."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for kind, (w, h) in SIZES.items():
        (root / kind).mkdir()
        for i in range(2 if kind == "landscape" else 6):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / kind / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return str(tiny_t5(tmp_path_factory.mktemp("t5")))


def _cfg(photos, store, t5, *extra):
    return apply_overrides(presets.get("world-tiny"), [
        "data.source=folder", f"data.root={photos}", f"data.store_dir={store}", "data.captions=aio",
        "data.buckets=true", f"data.text_encoder={t5}", "data.text_len=8", "data.shard_size=8",
        "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1",
        "train.total_nimg=48", "train.batch_size=4", "train.micro_batch=2", "train.log_every_nimg=16",
        "train.ckpt_every_nimg=1000", "train.threads=1", "eval.every_nimg=0", *extra])


@pytest.fixture(scope="module")
def store(photos, t5, tmp_path_factory):
    cfg = _cfg(photos, tmp_path_factory.mktemp("st") / "photos", t5)
    precompute(cfg.data, buckets=run_buckets(cfg), log=lambda *_: None)
    return cfg


def test_store_records_each_images_bucket_and_pixels(store, photos):
    cfg = store
    buckets = run_buckets(cfg)  # world-tiny: 16² pixels, pixel codec, patch 4 → multiples of 4
    assert (8, 32) in buckets and (32, 8) in buckets and (16, 16) in buckets
    st = open_store(cfg.data.store_dir, store_key(cfg.data, buckets=buckets))
    assert verify_store(cfg.data.store_dir) == [] and len(st) == 20
    assert st.latent_buckets == [tuple(b) for b in buckets]  # pixel codec: latent = pixel shape
    want = {"wide": (8, 32), "tall": (32, 8), "square": (16, 16)}
    for rec, b in zip(st.records, st.bucket_of):
        kind = rec["key"].split("/")[0]
        W, H = SIZES[kind]
        expect = buckets[assign_bucket(H, W, buckets)]
        assert tuple(rec["bucket"]) == expect == st.latent_buckets[b]
        if kind in want:
            assert expect == want[kind]
    # the stored latent of each image is exactly its cover-resize + centre crop (the pixel codec is the identity)
    for i in (0, 7, 13, 19):
        rec = st.records[i]
        h, w = rec["bucket"]
        img = resize_to_bucket(Image.open(photos / rec["key"]), h, w)
        expect = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1
        got = st.batch([i])["x0"][0]
        assert got.shape == (3, h, w) and torch.allclose(got, expect, atol=1e-3)  # fp16 store
    assert "latent_buckets" in json.loads((st.dir / MANIFEST).read_text())
    assert all("bucket" in r for r in shard_info(st.dir, 0)["records"])
    with pytest.raises(ValueError, match="mixes buckets"):  # a mixed batch is refused, never padded
        st.batch([0, 19])
    # a store planned with another bucket budget is refused, naming the field
    other = _cfg(photos, cfg.data.store_dir, cfg.data.text_encoder, "data.bucket_pixels=192")
    with pytest.raises(StoreMismatchError, match="buckets"):
        open_store(cfg.data.store_dir, store_key(other.data, buckets=run_buckets(other)))


def test_every_batch_is_one_bucket_and_resume_is_bit_exact(store, tmp_path):
    cfg = store
    st = open_store(cfg.data.store_dir)
    bucket_of = st.bucket_of
    pos = BucketPositions(bucket_of, 4, seed=cfg.train.seed)
    seen = set()
    for nimg in range(0, 200, 4):
        idx = np.concatenate([pos.indices(nimg + r * 2, 2) for r in range(2)])  # the trainer's micro-batches
        assert len(set(bucket_of[idx].tolist())) == 1, nimg
        seen.add(int(bucket_of[idx[0]]))
    assert len(seen) == 3  # wide, tall and square batches; the 2 landscape images never fill a batch of 4
    with pytest.raises(ValueError, match="cross a batch"):
        pos.indices(2, 4)
    from microt2i.data.loader import make_loader  # the loader-worker path reads the same single-bucket batches

    loader = make_loader(st, pos, start=8, end=24, micro=2, workers=0, pin_memory=False)
    for p, rows in zip(loader.sampler.positions(), loader):
        x0 = st.to_batch(rows)["x0"]
        assert tuple(x0.shape[-2:]) == st.latent_buckets[bucket_of[pos.indices(p, 2)[0]]]

    shapes = []
    real = st.to_batch

    def spy(rows, *a, **k):
        out = real(rows, *a, **k)
        shapes.append(tuple(out["x0"].shape[-2:]))
        return out

    st.to_batch = spy
    log = lambda *_: None  # noqa: E731
    full = train(cfg, tmp_path / "a", store=st, progress=False, log=log)
    assert full["finished"] and full["nimg"] == 48
    assert {(8, 32), (32, 8)} <= set(shapes)  # trained on rectangular grids
    half = train(cfg, tmp_path / "b", store=st, progress=False, log=log, stop_nimg=24)
    assert not half["finished"]
    assert load_latest(tmp_path / "b")["bucket_sampler"] == {"position": 6, "seed": cfg.train.seed, "batch_size": 4,
                                                            "n": 20}
    train(cfg, tmp_path / "b", progress=False, log=log)  # resumes from the checkpoint, opening the store itself
    a, b = load_latest(tmp_path / "a"), load_latest(tmp_path / "b")
    assert a["nimg"] == b["nimg"] == 48 and a["bucket_sampler"] == b["bucket_sampler"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_cli_precompute_and_train_with_buckets(store, photos, t5, tmp_path, capsys):
    from microt2i.cli import main

    common = ["data.source=folder", f"data.root={photos}", f"data.store_dir={tmp_path / 'st'}", "data.captions=aio",
              "data.buckets=true", f"data.text_encoder={t5}", "data.text_len=8", "model.text_dim=16"]
    assert main(["precompute", "world-tiny", *common, "--no-progress"]) == 0
    st = open_store(tmp_path / "st")
    assert st.latent_buckets and len(set(st.bucket_of.tolist())) == 4
    assert main(["train", "world-tiny", "--run-dir", str(tmp_path / "run"), *common, "train.total_nimg=8",
                 "train.batch_size=4", "train.threads=1", "eval.every_nimg=0", "--no-progress"]) == 0
    assert (tmp_path / "run" / "ema" / "model.safetensors").is_file()
    # sampling at a bucket's size (DiT-I): a wide image, 32 × 8 pixels; a size off the grid is one line
    out = tmp_path / "wide"
    assert main(["sample", "--run", str(tmp_path / "run"), "--prompt", "An image of wide", "--width", "32",
                 "--height", "8", "--steps", "2", "--out-dir", str(out), "--no-progress"]) == 0
    assert Image.open(out / "0000.png").size == (32, 8)
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])["size"] == [8, 32]
    capsys.readouterr()
    assert main(["sample", "--run", str(tmp_path / "run"), "--prompt", "x", "--width", "30", "--height", "8",
                 "--out-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--width 30" in err and "multiple of 4" in err and "\n" not in err


@pytest.mark.parametrize("overrides, needle", [
    (["data.source=imagenet"], "ImageNet keeps the papers' centre crop"),
    (["data.source=world"], "the embedded world renders squares"),
    (["data.bucket_pixels=300"], "data.bucket_pixels=300 must be in \\[0, data.resolution² = 256\\]"),
    (["data.bucket_pixels=250"], "data.bucket_pixels=250 must be a positive multiple of 4² = 16"),
    (["data.val_fraction=0.1"], "does not take data.val_fraction"),
    (["augment.crop.enabled=true", "model.crop_cond=true"], "does not take augment.crop.enabled"),
])
def test_refusals_are_one_line(overrides, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle) as e:
        run_buckets(_cfg(tmp_path, tmp_path / "s", "t5", *overrides))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("preset, needle", [("world-microdit-s", "MicroDiT's patch masking"),
                                            ("world-cad-s", "CAD-I's learned data-position table")])
def test_square_only_models_are_refused(preset, needle, tmp_path):
    cfg = apply_overrides(presets.get(preset), ["data.source=folder", "data.root=x", "data.store_dir=y",
                                                "data.buckets=true"])
    with pytest.raises(ConfigError, match=needle):
        run_buckets(cfg)
    with pytest.raises(ConfigError, match="data.buckets=true trains DiT-I only"):
        train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)


@pytest.mark.parametrize("source", ["sidecar", "webdataset", "hf"])
def test_ingest_sources_write_per_bucket_shapes(source, t5, tmp_path):
    """Your-own-data sources share the decoder: each image lands in the bucket nearest its aspect ratio, its
    record names the latent shape, and its flat colour survives the resize (pixel codec)."""
    from _ingest_data import colour, mean_colour, write_hf, write_shards, write_sidecar

    if source == "sidecar":
        root, size = write_sidecar(tmp_path / "side"), (16, 16)
    elif source == "webdataset":
        write_shards(tmp_path / "wds")
        root, size = f"{tmp_path / 'wds'}/{{00000..00001}}.tar", (20, 24)
    else:
        pytest.importorskip("datasets")
        root, size = write_hf(tmp_path / "hf"), (24, 20)
    cfg = _cfg(root, tmp_path / "st", t5, f"data.source={source}", "data.captions=long")
    buckets = run_buckets(cfg)
    precompute(cfg.data, buckets=buckets, log=lambda *_: None)
    st = open_store(cfg.data.store_dir, store_key(cfg.data, buckets=buckets))
    W, H = size
    want = buckets[assign_bucket(H, W, buckets)]
    assert len(st) >= 3 and all(tuple(r["bucket"]) == want for r in st.records)
    x0 = st.batch(np.arange(len(st)))["x0"]
    assert tuple(x0.shape[-2:]) == want
    if source == "webdataset":  # sample i shows colour(i)
        idx = [int(k.rsplit("/", 1)[-1]) for k in st.keys]
        assert np.abs(mean_colour(x0.numpy()) - np.array([colour(i) for i in idx])).max() < 3.0  # JPEG


def test_the_documented_commands_run(photos, tmp_path, monkeypatch, capsys):
    """docs/data.md's bucket commands, verbatim, in a folder holding `photos/` (sidecar captions added), with short
    training settings appended: world-s, its shipped VAE and MiniLM, offline."""
    import re
    import shlex
    from pathlib import Path

    from microt2i.cli import main

    doc = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    section = doc[doc.index("## Aspect-ratio buckets"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.strip()]
    assert [c[0] for c in commands] == ["precompute", "train", "sample"]
    for kind in SIZES:
        for p in (photos / kind).glob("*.png"):
            (tmp_path / "photos").mkdir(exist_ok=True)
            (tmp_path / "photos" / f"{kind}-{p.name}").write_bytes(p.read_bytes())
            (tmp_path / "photos" / f"{kind}-{p.stem}.txt").write_text(f"a {kind} photo\n")
    monkeypatch.chdir(tmp_path)
    short = ["train.total_nimg=8", "train.batch_size=4", "train.threads=1", "train.log_every_nimg=4"]
    assert main([*commands[0], "--no-progress"]) == 0
    st = open_store("st/photos")
    assert {tuple(b) for b in st.latent_buckets} >= {(16, 4), (4, 16), (8, 8)}  # world VAE: pixels / 4
    assert main([*commands[1], *short, "--no-progress"]) == 0
    assert main([*commands[2], "--steps", "2", "--out-dir", "wide", "--no-progress"]) == 0
    w, h = (int(commands[2][commands[2].index(f"--{k}") + 1]) for k in ("width", "height"))
    assert Image.open(tmp_path / "wide" / "0000.png").size == (w, h)
