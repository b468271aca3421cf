"""The bad-input matrix: one test per row, each asserting one clear error that names the input and the
fix, or the documented recovery (README "Failure behaviour"), and that nothing half-written is left behind."""

import errno
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from _tiny_models import tiny_t5
from PIL import Image
from safetensors.torch import save
from test_train import fake_store, tiny_cfg

from microt2i import presets
from microt2i.cli import main
from microt2i.config import ConfigError, DataConfig, apply_overrides
from microt2i.data.captions import CaptionFileError, pick_caption, read_captions
from microt2i.data.imagenet import load_image, try_load
from microt2i.data.precompute import precompute
from microt2i.data.store import (StoreDamagedError, StoreMismatchError, cache_key, cache_root, load_or_build, open_store,
                                 shard_name, verify_store)
from microt2i.encoders import TextEncoder
from microt2i.train.artifacts import load_run
from microt2i.train import dist, state
from microt2i.train.loop import prepare_data, train
from microt2i.train.state import list_checkpoints, load_latest

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return str(tiny_t5(tmp_path_factory.mktemp("models") / "t5"))


def _data(t5, store_dir, **kw) -> DataConfig:
    base = dict(source="world", num_images=16, resolution=8, codec="pixel", text_encoder=t5, text_len=8,
                shard_size=8, store_dir=str(store_dir))
    return DataConfig(**(base | kw))


@pytest.fixture(scope="module")
def store_dir(t5, tmp_path_factory):
    """A finished 2-shard world store (tiny T5, pixel codec); tests damage copies of it."""
    d = tmp_path_factory.mktemp("store") / "s"
    precompute(_data(t5, d), log=lambda *_: None)
    return d


def _copy(src, tmp_path):
    return shutil.copytree(src, tmp_path / "copy")


@pytest.fixture(scope="module")
def run(t5, tmp_path_factory):
    """A finished tiny world run whose text encoder is the tiny T5 (what `microt2i sample` loads)."""
    root = tmp_path_factory.mktemp("run")
    cfg = apply_overrides(presets.get("world-tiny"), [
        f"data.text_encoder={t5}", "data.text_len=8", "data.num_images=16", f"data.cache_dir={root / 'cache'}",
        "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1",
        "train.total_nimg=16", "train.batch_size=8", "train.threads=1", "eval.steps=2"])
    train(cfg, root / "run", **QUIET)
    return root / "run"


def _rgb_bytes(fmt="JPEG", size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


# ---- images (data/imagenet.py): skipped and counted per reason, never a crash ----

def test_corrupt_image_is_skipped_as_not_an_image(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert try_load((str(p), 8)) == (None, "not an image")


def test_truncated_image_is_skipped_as_truncated(tmp_path):
    p = tmp_path / "x.jpg"
    data = _rgb_bytes(size=(64, 64))
    p.write_bytes(data[: len(data) // 3])
    assert try_load((str(p), 8)) == (None, "truncated")


def test_zero_byte_image_is_skipped_as_empty(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"")
    assert try_load((str(p), 8)) == (None, "empty file")


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 × 1000: PIL's bomb error
    img, reason = try_load((str(p), 8))
    assert img is None and "decompression-bomb" in reason and "2000 pixels" in reason


def test_cmyk_image_is_converted_to_rgb(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(p, quality=100)
    out = load_image(p, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 12  # JPEG round trip, not inverted or clipped channels


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([0, 257 * 64, 257 * 128, 65535], np.uint16)
    grey = np.repeat(np.repeat(values.reshape(2, 2), 8, 0), 8, 1)  # four flat 8×8 quadrants
    p = tmp_path / "g16.png"
    Image.fromarray(grey).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p, 16)
    assert [int(out[4, 4, 0]), int(out[4, 12, 0]), int(out[12, 4, 0]), int(out[12, 12, 0])] == [0, 64, 128, 255]


def test_folder_precompute_skips_bad_images_and_counts_them(t5, tmp_path):
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "good.jpg").write_bytes(_rgb_bytes())
    (root / "cat" / "good.png").write_bytes(_rgb_bytes("PNG"))
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "noise.jpg").write_bytes(b"\x00garbage" * 100)
    (root / "cat" / "cut.jpg").write_bytes(_rgb_bytes(size=(64, 64))[:300])
    out = precompute(_data(t5, tmp_path / "s", source="folder", root=str(root), captions="aio"), log=lambda *_: None)
    assert out["report"]["kept"] == 2
    assert out["report"]["skipped"] == {"empty file": 1, "not an image": 1, "truncated": 1}
    store = open_store(tmp_path / "s")
    assert sorted(store.keys) == ["cat/good.jpg", "cat/good.png"] and store.captions[0] == "An image of a cat"


# ---- captions (data/captions.py, encoders/text.py) ----

def test_empty_caption_is_dropped_and_the_image_has_none(tmp_path):
    f = tmp_path / "c.tsv"
    f.write_text("a.jpg\t\nb.jpg\ta red cube\n")
    assert read_captions(f) == {"b.jpg": ["a red cube"]}  # precompute skips a.jpg as "no caption"


def test_whitespace_only_caption_is_dropped(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"key": "a.jpg", "captions": ["   ", "a blue cone", "\u3000 "]}) + "\n")
    assert read_captions(f) == {"a.jpg": ["a blue cone"]}


def test_non_utf8_caption_file_names_the_line_and_the_fix(tmp_path):
    f = tmp_path / "c.tsv"
    f.write_bytes("a.jpg\tfine\n".encode() + b"b.jpg\tcaf\xe9 au lait\n")
    with pytest.raises(CaptionFileError, match=r"c\.tsv:2: not UTF-8 .*0xe9.*iconv"):
        read_captions(f)


def test_10k_token_caption_is_truncated_and_counted(t5):
    logs = []
    enc = TextEncoder(t5, max_length=8, log=logs.append)
    long, short = " ".join(["red"] * 10_000), " ".join(["red"] * 7)  # 7 words + </s> = the 8 kept tokens
    emb = enc.encode([long, short])
    assert emb.tokens.shape == (2, 8, 16) and emb.mask.all()
    assert torch.equal(emb.tokens[0], emb.tokens[1])  # exactly the first 8 tokens' states
    assert enc.truncation.truncated == 1 and enc.truncation.longest == 10_001
    assert "exceed 8 tokens and were truncated" in logs[0]


def test_caption_file_naming_no_existing_image_is_refused(t5, tmp_path):
    f = tmp_path / "c.tsv"
    f.write_text("n01440764/missing.JPEG\ta red cube\n")
    with pytest.raises(FileNotFoundError, match=r"data.caption_file=.*captions none of the 16 images.*relative to"):
        precompute(_data(t5, tmp_path / "s", caption_file=str(f)), log=lambda *_: None)
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_caption_rows_without_images_are_ignored_and_reported(t5, tmp_path):
    f = tmp_path / "c.tsv"
    f.write_text("world-0/0000000\ta red cube\nworld-0/0000001\ta blue cone\nghost.jpg\ta green sphere\n")
    logs = []
    out = precompute(_data(t5, tmp_path / "s", num_images=4, caption_file=str(f)), log=logs.append)
    assert out["report"]["kept"] == 2 and out["report"]["skipped"] == {"no caption": 2}
    assert any("1 of 3 keys name no image" in m and "2 of 4 images have no caption" in m for m in logs)


def test_duplicate_keys_are_several_captions_of_one_image(tmp_path):
    f = tmp_path / "c.tsv"
    f.write_text("a.jpg\tfirst\nb.jpg\tother\na.jpg\tsecond\n")
    caps = read_captions(f)
    assert caps["a.jpg"] == ["first", "second"]
    drawn = {pick_caption(caps["a.jpg"], 0, step, 7) for step in range(64)}
    assert drawn == {"first", "second"} and pick_caption(caps["a.jpg"], 0, 5, 7) == pick_caption(caps["a.jpg"], 0, 5, 7)


def test_absolute_caption_key_is_refused(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"key": "/etc/passwd", "caption": "x"}) + "\n")
    with pytest.raises(CaptionFileError, match=r"c\.jsonl:1: key '/etc/passwd' leaves the image folder"):
        read_captions(f)


# ---- sharded stores (data/store.py) ----

def test_shard_with_wrong_shape_is_refused_naming_it(store_dir, tmp_path):
    d = _copy(store_dir, tmp_path)
    path = d / f"{shard_name(1)}.safetensors"
    from safetensors.torch import load_file

    t = load_file(str(path))
    t["latents"] = t["latents"][:, :, :4].contiguous()  # a rewrite at another resolution
    path.write_bytes(save(t))
    store = open_store(d)
    store.batch([0])  # shard 0 is fine
    with pytest.raises(StoreDamagedError, match=r"shard-00001.safetensors: latents is float16\[8, 3, 4, 8\].*"
                                                r"microt2i precompute"):
        store.batch([9])
    assert any("checksum mismatch" in p for p in verify_store(d))


def test_shard_with_wrong_dtype_is_refused_naming_it(store_dir, tmp_path):
    d = _copy(store_dir, tmp_path)
    path = d / f"{shard_name(0)}.safetensors"
    from safetensors.torch import load_file

    t = load_file(str(path))
    t["text_tokens"] = t["text_tokens"].float()
    path.write_bytes(save(t))
    with pytest.raises(StoreDamagedError, match=r"text_tokens is float32\[8, 8, 16\], manifest says float16"):
        open_store(d).batch([0])


def test_truncated_shard_is_refused_naming_it(store_dir, tmp_path):
    d = _copy(store_dir, tmp_path)
    path = d / f"{shard_name(0)}.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StoreDamagedError, match=r"shard-00000.safetensors: \d+ bytes, its header needs \d+ "
                                                r"\(truncated"):
        open_store(d).batch([3])


def test_stale_store_is_refused_by_training(t5, store_dir):
    cfg = apply_overrides(presets.get("world-tiny"), [f"data.text_encoder={t5}", "data.text_len=12",
                                                      "data.num_images=16", "data.resolution=8",
                                                      f"data.store_dir={store_dir}"])
    with pytest.raises(StoreMismatchError, match=r"data.text_len: the store has 8, the config asks for 12.*"
                                                 r"microt2i precompute"):
        prepare_data(cfg, torch.device("cpu"), log=lambda *_: None)


def test_damaged_world_cache_is_rebuilt(t5, tmp_path):
    data = _data(t5, "", num_images=4, cache_dir=str(tmp_path))
    from microt2i.encoders import load_codec

    def make():
        return load_codec("pixel"), TextEncoder(t5, max_length=8)

    first = load_or_build(data, make, log=lambda *_: None)
    path = cache_root(data) / "stores" / f"world-{cache_key(data)}.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    logs = []
    again = load_or_build(data, make, log=logs.append)
    assert any("unreadable" in m and "rebuilding" in m for m in logs)
    assert torch.equal(again.latents, first.latents) and torch.equal(again.text_tokens, first.text_tokens)
    _flip(path, 0.9)  # flipped bytes in the tensor data: the checksum catches them
    logs.clear()
    again = load_or_build(data, make, log=logs.append)
    assert any("checksum mismatch" in m and "rebuilding" in m for m in logs)
    assert torch.equal(again.latents, first.latents)


# ---- configs (config.py, train/dist.py) ----

def test_config_typo_names_the_key_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'. Did you mean 'lr'\?"):
        apply_overrides(presets.get("world-tiny"), ["train.lrr=1e-3"])


def test_config_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train.batch_size='eight' must be an integer"):
        apply_overrides(presets.get("world-tiny"), ["train.batch_size=eight"])


def test_batch_not_a_multiple_of_micro_batch_fails_in_the_cli(tmp_path, capsys):
    rc = main(["train", "world-tiny", "train.batch_size=10", "train.micro_batch=4", "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "train.batch_size=10 must be a positive multiple of train.micro_batch=4" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_batch_not_divisible_by_world_size_names_the_fix():
    with pytest.raises(ValueError, match=r"train.batch_size=6 .* world size \(4\); pick a batch size divisible by 4"):
        dist.split_batch(6, 0, 4)


def test_resolution_out_of_range():
    with pytest.raises(ConfigError, match=r"data.resolution=7 must be in \[8, 1024\]"):
        apply_overrides(presets.get("world-tiny"), ["data.resolution=7"])


def test_resolution_the_model_cannot_take_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"latents are \[3, 24, 24\].*model takes \[3, 16, 16\].*model.input_size=24"):
        train(tiny_cfg(), tmp_path, store=fake_store(res=24), **QUIET)
    assert not list_checkpoints(tmp_path)


def test_sampling_settings_out_of_range_in_a_config():
    for override, msg in (("eval.steps=0", r"eval.steps=0 must be in \[1, 10000\]"),
                          ("eval.cfg_scale=-1", r"eval.cfg_scale=-1.0 must be in \[0, 100\]")):
        with pytest.raises(ConfigError, match=msg):
            apply_overrides(presets.get("world-tiny"), [override])


# ---- checkpoints (train/state.py, train/loop.py, sample.py) ----

def test_checkpoint_of_another_preset_is_refused(tmp_path):
    store = fake_store()
    train(tiny_cfg(), tmp_path, store=store, stop_nimg=16, **QUIET)
    other = apply_overrides(tiny_cfg(), ["model.refiner_depth=2"])  # e.g. world-s's layout in world-tiny's folder
    with pytest.raises(ValueError, match="different `model` config; resume with the run's own config.yaml"):
        train(other, tmp_path, store=store, **QUIET)


def test_truncated_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path):
    cfg, store = tiny_cfg("train.ckpt_every_nimg=16"), fake_store()
    train(cfg, tmp_path, store=store, stop_nimg=32, **QUIET)
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    logs = []
    out = train(cfg, tmp_path, store=store, stop_nimg=48, progress=False, log=logs.append)
    assert any("warning: skipping checkpoint training-state-000000000032.pt: damaged (not a complete checkpoint "
               "archive" in m and m.endswith("resuming from training-state-000000000016.pt instead") for m in logs)
    assert any("[resume]" in m and "at 16 images" in m for m in logs) and out["nimg"] == 48


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    cfg, store = tiny_cfg(), fake_store()
    train(cfg, tmp_path, store=store, stop_nimg=16, **QUIET)
    (only,) = list_checkpoints(tmp_path)
    only.write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"no readable checkpoint in .*training-state-000000000016.pt.*move them"):
        train(cfg, tmp_path, store=store, **QUIET)


def test_checkpoint_without_ema_is_skipped(tmp_path):
    cfg, store = tiny_cfg("train.ckpt_every_nimg=16"), fake_store()
    train(cfg, tmp_path, store=store, stop_nimg=32, **QUIET)
    newest = list_checkpoints(tmp_path)[-1]
    payload = torch.load(newest, weights_only=True)
    del payload["ema"]
    torch.save(payload, newest)
    logs = []
    assert load_latest(tmp_path, log=logs.append, require=state.TRAINING_KEYS)["nimg"] == 16
    assert logs == ["[resume] warning: skipping checkpoint training-state-000000000032.pt: incomplete (it lacks ema); "
                    "resuming from training-state-000000000016.pt instead"]


def test_run_folder_without_ema_cannot_be_sampled(tmp_path):
    train(tiny_cfg(), tmp_path, store=fake_store(), stop_nimg=16, **QUIET)  # stopped early: no ema/ yet
    with pytest.raises(FileNotFoundError, match=r"has no ema/model.safetensors; train it to the end first"):
        load_run(tmp_path)


def test_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg, store = tiny_cfg("train.ckpt_every_nimg=16"), fake_store()
    train(cfg, tmp_path, store=store, stop_nimg=16, **QUIET)
    before = list_checkpoints(tmp_path)[0].read_bytes()
    real_write, real_fdopen = state.atomic_write_bytes, os.fdopen

    class Full(io.RawIOBase):  # the temp file takes 100 bytes, then the disk is full
        def __init__(self, fd):
            self.f = real_fdopen(fd, "wb")

        def write(self, b):
            self.f.write(bytes(b)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.f.close()

    def write_on_full_disk(path, data):
        with monkeypatch.context() as m:
            m.setattr(os, "fdopen", lambda fd, mode: Full(fd))
            real_write(path, data)

    monkeypatch.setattr(state, "atomic_write_bytes", write_on_full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*000000000032.pt \(No space left on device\); "
                                      r"the previous checkpoints \['training-state-000000000016.pt'\] are intact"):
        train(cfg, tmp_path, store=store, stop_nimg=32, **QUIET)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert list_checkpoints(tmp_path)[0].read_bytes() == before
    assert train(cfg, tmp_path, store=store, stop_nimg=32, **QUIET)["nimg"] == 32  # free space → resume works


# ---- sampling (`microt2i sample`) ----

def test_sample_steps_zero_is_refused(run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--prompt", "a red cube", "--steps", "0", "--out", str(out)]) == 2
    assert "microt2i sample: error: --steps=0 must be in [1, 10000]" in capsys.readouterr().err
    assert not out.exists()


def test_sample_negative_cfg_scale_is_refused(run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--prompt", "a red cube", "--cfg-scale", "-1", "--out", str(out)]) == 2
    assert "--cfg-scale=-1.0 must be in [0, 100] (0 = unconditional" in capsys.readouterr().err
    assert not out.exists()


def test_prompt_longer_than_the_encoder_limit_is_truncated_with_a_warning(run, tmp_path, capsys):
    out = tmp_path / "s.png"
    prompt = " ".join(["a red cube on the left of a blue sphere"] * 1200)  # ~10k tokens, the encoder keeps 8
    assert main(["sample", str(run), "--prompt", prompt, "--prompt", "a red cube", "--out", str(out)]) == 0
    assert "1 of 2 captions exceed 8 tokens and were truncated" in capsys.readouterr().out
    assert Image.open(out).size[0] > 0


# ---- leftovers of a killed process (train/state.py, train/logger.py) ----

def test_temp_files_of_killed_checkpoint_writes_are_removed_on_restart(tmp_path):
    cfg, store = tiny_cfg(), fake_store()
    train(cfg, tmp_path, store=store, stop_nimg=16, **QUIET)
    (tmp_path / ".training-state-000000000032.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "training-state-000000000032.dcp.tmp").mkdir()  # a sharded write cut short
    (tmp_path / "notes.tmp").write_text("not ours")
    assert train(cfg, tmp_path, store=store, stop_nimg=32, **QUIET)["nimg"] == 32
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == ["notes.tmp"]


def test_torn_stats_line_is_dropped_on_resume(tmp_path):
    cfg, store = tiny_cfg(), fake_store()
    train(cfg, tmp_path, store=store, stop_nimg=16, **QUIET)
    with open(tmp_path / "stats.jsonl", "a") as f:
        f.write('{"nimg": 32, "step": 4, "lo')  # a crash mid-append
    train(cfg, tmp_path, store=store, **QUIET)
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert [json.loads(ln)["nimg"] for ln in lines] == list(range(16, 97, 16))


# ---- destructive commands (export.py) ----

def _export(run, folder, *extra):
    return main(["export", str(run), str(folder), "--no-grid", *extra])


def test_export_overwrite_never_deletes_its_run_or_a_folder_of_runs(run, tmp_path, capsys):
    before = sorted(p.name for p in run.iterdir())
    assert _export(run, run, "--overwrite") == 2  # onto its own run folder
    assert "is the run folder" in capsys.readouterr().err
    assert _export(run, run.parent, "--overwrite") == 2  # into the folder that holds the run
    assert "is the run folder" in capsys.readouterr().err
    other = tmp_path / "runs"  # a folder holding someone's other run, with a stray model_index.json
    shutil.copytree(run, other / "r1")
    (other / "notes.txt").write_text("mine")
    assert _export(run, other, "--overwrite") == 2
    assert "is not a microt2i export" in capsys.readouterr().err
    (other / "model_index.json").write_text('{"_class_name": ["pipeline", "MicroT2IPipeline"]}')
    assert _export(run, other, "--overwrite") == 2
    assert "holds the training run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before and (other / "r1" / "ema" / "model.safetensors").is_file()
    assert (other / "notes.txt").read_text() == "mine"


def test_export_overwrite_replaces_a_previous_export(run, tmp_path, capsys):
    folder = tmp_path / "exp"
    assert _export(run, folder) == 0 and (folder / "microt2i_export.json").is_file()
    (folder / "stale.txt").write_text("from the old export")
    assert _export(run, folder) == 2 and "--overwrite" in capsys.readouterr().err
    assert _export(run, folder, "--overwrite") == 0
    assert not (folder / "stale.txt").exists() and (folder / "transformer").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temp or old copies left


# ---- concurrent runs (train/state.py run_lock) ----

def test_second_training_on_a_live_run_folder_fails_at_once(tmp_path, capsys):
    import subprocess
    import sys

    run_dir = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom microt2i.train.state import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)",
                               str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        tmp = run_dir / ".training-state-000000000016.pt.abc.tmp"  # the live run's in-flight checkpoint
        tmp.write_bytes(b"half")
        rc = main(["train", "world-tiny", "--run-dir", str(run_dir), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and f"run folder {run_dir} is in use by pid {holder.pid} on host" in err
        assert "pass another --run-dir" in err and len(err.strip().splitlines()) == 1
        assert tmp.read_bytes() == b"half" and sorted(p.name for p in run_dir.iterdir()) == [tmp.name, "run.lock"]
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing (SIGKILL): its lock is stale and is taken over
    logs = []
    out = train(tiny_cfg(), run_dir, store=fake_store(), stop_nimg=16, progress=False, log=logs.append)
    assert out["nimg"] == 16 and any(f"taking over the stale lock of pid {holder.pid}" in m for m in logs)
    assert not (run_dir / "run.lock").exists()  # released at the end


def test_lock_file_of_a_dead_process_on_a_flockless_filesystem_is_stale(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 2 ** 22 + 7}))
    logs = []
    with state.run_lock(run_dir, log=logs.append):
        assert json.loads((run_dir / "run.lock").read_text())["pid"] == os.getpid()
    assert "taking over the stale lock of pid 4194311" in logs[0]


# ---- checkpoint integrity (train/state.py, data/store.py) ----

def _flip(path, where=0.5):
    b = bytearray(path.read_bytes())
    b[int(len(b) * where)] ^= 0x40
    path.write_bytes(bytes(b))


def test_flipped_bytes_in_the_newest_checkpoint_fall_back_to_the_previous(tmp_path):
    cfg, store = tiny_cfg("train.ckpt_every_nimg=16"), fake_store()
    train(cfg, tmp_path, store=store, stop_nimg=32, **QUIET)
    newest = list_checkpoints(tmp_path)[-1]
    _flip(newest)
    assert torch.load(newest, weights_only=True)["nimg"] == 32  # torch alone loads it without notice
    logs = []
    out = train(cfg, tmp_path, store=store, stop_nimg=48, progress=False, log=logs.append)
    assert any("skipping checkpoint training-state-000000000032.pt: damaged (CRC-32 mismatch in record" in m and
               "resuming from training-state-000000000016.pt instead" in m for m in logs)
    assert any("[resume]" in m and "at 16 images" in m for m in logs) and out["nimg"] == 48


def test_damaged_newest_sharded_checkpoint_falls_back_to_the_previous(tmp_path):
    from torch import nn

    net, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    for nimg in (16, 32):
        dist.save_sharded(state.checkpoint_path(tmp_path, nimg, sharded=True), net, opt, ema, {"nimg": nimg})
    newest = list_checkpoints(tmp_path)[-1]
    assert sorted(json.loads((newest / "checksums.json").read_text())) == sorted(
        p.name for p in newest.iterdir() if p.name != "checksums.json")
    data = max((p for p in newest.iterdir() if p.suffix == ".distcp"), key=lambda p: p.stat().st_size)
    _flip(data)
    logs = []
    path, payload = state.resume_point(tmp_path, log=logs.append)
    assert path.name == "training-state-000000000016.dcp" and payload is None
    assert logs == [f"[resume] warning: skipping checkpoint training-state-000000000032.dcp: damaged (SHA-256 "
                    f"mismatch in {data.name}); resuming from training-state-000000000016.dcp instead"]


def test_flipped_bytes_in_a_store_shard_are_refused_naming_it(store_dir, tmp_path):
    d = _copy(store_dir, tmp_path)
    _flip(d / f"{shard_name(1)}.safetensors", 0.9)  # inside the tensor data: the layout still checks out
    store = open_store(d)
    store.batch([0])
    with pytest.raises(StoreDamagedError, match=r"shard-00001.safetensors: checksum mismatch.*precompute --verify"):
        store.batch([9])


def test_unreadable_weights_are_one_clear_error(run, tmp_path, capsys):
    bad = shutil.copytree(run, tmp_path / "run")
    (bad / "ema" / "model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{garbage")
    assert main(["sample", str(bad), "--prompt", "a red cube", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is unreadable" in err and "re-run the command that wrote it" in err
    assert len(err.strip().splitlines()) == 1


# ---- divergence at sampling time (sample.py) ----

def test_sample_refuses_a_diverged_model(run, tmp_path, capsys):
    from safetensors.torch import load_file

    bad = shutil.copytree(run, tmp_path / "run")
    weights = load_file(str(bad / "ema" / "model.safetensors"))
    weights = {k: v * 1e30 if v.is_floating_point() else v for k, v in weights.items()}  # finite, far off
    (bad / "ema" / "model.safetensors").write_bytes(save(weights, metadata={"format_version": "1"}))
    out = tmp_path / "s.png"
    assert main(["sample", str(bad), "--prompt", "a red cube", "--out", str(out)]) == 1
    assert "NaN / Inf (or overflowing) images for 1 of 1 samples" in capsys.readouterr().err and not out.exists()
    assert main(["eval", "geneval", str(bad), "--per-tag", "1", "--images-per-prompt", "1", "--out",
                 str(tmp_path / "ev")]) == 1
    assert "its weights diverged in training" in capsys.readouterr().err and not (tmp_path / "ev").exists()


# ---- ingest accounting (data/ingest.py, data/captions.py) ----

def test_webdataset_cut_at_a_member_boundary_is_counted_and_named(t5, tmp_path):
    import tarfile

    from _ingest_data import write_shards

    shard = write_shards(tmp_path / "wds", per_shard=4, shards=1)[0]
    whole = shard.read_bytes()
    with tarfile.open(shard) as tar:
        offsets = [m.offset for m in tar]  # 3 members per sample: jpg, json, txt
    # at the header of sample 2 (samples 0, 1 complete; tarfile alone just stops), inside sample 1's image data
    for name, size, kept in (("boundary", offsets[6], 2), ("inside", offsets[3] + 512 + 100, 1)):
        shard.write_bytes(whole[:size])
        out = precompute(_data(t5, tmp_path / f"s-{name}", source="webdataset", root=str(tmp_path / "wds")),
                         log=lambda *_: None)
        rep = out["report"]
        assert rep["skipped"] == {"truncated archive": 1} and rep["kept"] == kept, rep
        assert [k for k, r in rep["examples"]] == [f"00000/(truncated: {'no end-of-archive marker' if kept == 2 else 'cut'}"
                                                   f" after {'000000001.txt' if kept == 2 else '000000000.txt'})"]


def test_precompute_summary_names_each_unused_archive_member(t5, tmp_path, capsys):
    import tarfile

    from _ingest_data import write_shards

    shard = write_shards(tmp_path / "wds", per_shard=3, shards=1)[0]
    with tarfile.open(shard, "a") as tar:  # a caption whose image never made it into the shard
        info = tarfile.TarInfo("orphan.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"a cat"))
    with tarfile.open(shard) as tar:
        end = [m for m in tar][-1].offset + 1024  # orphan.txt's header + data block: the end marker cut off
    shard.write_bytes(shard.read_bytes()[:end])
    assert main(["precompute", "world-tiny", "data.source=webdataset", f"data.root={tmp_path / 'wds'}",
                 f"data.store_dir={tmp_path / 's'}", f"data.text_encoder={t5}", "data.text_len=8",
                 "data.resolution=8"]) == 0
    out = capsys.readouterr().out
    assert "3 of 5 images kept, skipped no image ×1 (e.g. 00000/orphan), truncated archive ×1 (e.g. 00000/" \
           "(truncated: no end-of-archive marker after orphan.txt))" in out


def test_caption_file_with_a_byte_order_mark_keeps_its_first_image(tmp_path):
    f = tmp_path / "c.tsv"
    f.write_bytes(b"\xef\xbb\xbfa.jpg\tfirst\nb.jpg\tsecond\n")
    assert read_captions(f) == {"a.jpg": ["first"], "b.jpg": ["second"]}
    j = tmp_path / "c.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps({"key": "a.jpg", "caption": "x"}).encode() + b"\n")
    assert read_captions(j) == {"a.jpg": ["x"]}


def test_undecodable_captions_name_file_and_line_in_every_ingest_path(tmp_path):
    import tarfile

    from microt2i.data.ingest import list_sidecar, list_webdataset

    side = tmp_path / "side"
    side.mkdir()
    for i, caption in enumerate((b"\xef\xbb\xbfa red cube\n", b"line one\ncaf\xe9\n")):
        (side / f"{i}.png").write_bytes(_rgb_bytes("PNG"))
        (side / f"{i}.txt").write_bytes(caption)
    with pytest.raises(CaptionFileError, match=r"side/1\.txt:2: not UTF-8 \(byte 0xe9 at column 4\).*iconv"):
        list_sidecar(str(side))
    (side / "1.txt").write_bytes(b"fine")
    assert [it.captions for it in list_sidecar(str(side))] == [("a red cube",), ("fine",)]  # BOM dropped
    wds = tmp_path / "wds.tar"
    with tarfile.open(wds, "w") as tar:
        for name, data in (("k.png", _rgb_bytes("PNG")), ("k.txt", b"ok\n\xff")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CaptionFileError, match=r"wds\.tar:k\.txt:2: not UTF-8 \(byte 0xff at column 1\)"):
        list_webdataset(str(wds))
    from microt2i.sample import read_prompts

    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"\xef\xbb\xbfa red cube\nun caf\xe9\n")
    with pytest.raises(CaptionFileError, match=r"p\.txt:2: not UTF-8 \(byte 0xe9 at column 7\)"):
        read_prompts(None, prompts)
    prompts.write_bytes(b"\xef\xbb\xbfa red cube\n")
    assert read_prompts(None, prompts) == ["a red cube"]


# ---- one error line from the CLI, values validated on load (cli.py, config.py) ----

@pytest.mark.parametrize("override, message", [
    ("train.total_nimg=-16", "train.total_nimg=-16 must be positive"),
    ("train.threads=-1", "train.threads=-1 must be >= 0"),
    ("train.batch_size=0", "train.batch_size=0 must be a positive multiple"),
    ("train.log_every_nimg=0", "train.log_every_nimg=0 must be >= 1"),
    ("train.ckpt_every_nimg=0", "train.ckpt_every_nimg=0 must be >= 1"),
    ("train.lr=-1", "train.lr=-1.0 must be >= 0"),
    ("eval.grid_size=0", "eval.grid_size=0 must be >= 1"),
    ("model.width=0", "model.width=0 must be >= 1"),
    ("model.heads=3", "model.width=64 must be a multiple of model.heads=3"),
    ("model.patch_size=0", "model.patch_size=0 must be >= 1"),
    ("data.num_images=0", "data.num_images=0 must be >= 1"),
    ("data.text_len=0", "data.text_len=0 must be >= 1"),
    ("train.device=bogus", "train.device='bogus' is not a device"),
])
def test_bad_config_values_are_one_error_line(override, message, tmp_path, capsys):
    rc = main(["train", "world-tiny", override, "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_cuda_device_on_a_cpu_build_is_one_error_line(run, tmp_path, capsys):
    assert main(["train", "world-tiny", "train.device=cuda", "--run-dir", str(tmp_path / "r")]) == 2
    assert "train.device='cuda' but this torch build has no CUDA" in capsys.readouterr().err
    assert main(["sample", str(run), "--prompt", "x", "--device", "cuda", "--out", str(tmp_path / "s.png")]) == 2
    assert "--device='cuda' but this torch build has no CUDA" in capsys.readouterr().err


def test_malformed_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n  bad: : x\n")
    assert main(["train", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert f"{bad}:3:" in capsys.readouterr().err
    bad.write_text("- a\n- b\n")
    assert main(["train", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "the top level must be a mapping" in capsys.readouterr().err
    bad.write_bytes(b"\xef\xbb\xbfname: a\n# caf\xe9\n")  # a BOM is fine, Latin-1 is not
    assert main(["train", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert f"{bad}:2: not UTF-8 (byte 0xe9)" in capsys.readouterr().err
    bad.write_bytes(b"\xef\xbb\xbfname: a\ntrain: {total_nimg: 0}\n")
    assert main(["train", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "train.total_nimg=0 must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["world", "--n", "0"], ["sample", "x", "--batch-size", "0"],
                                  ["bench", "train", "--threads", "-1"], ["precompute", "world-tiny", "--workers", "-2"],
                                  ["sample", "x", "--nrow", "0"], ["eval", "fid", "x", "--batch-size", "0"]])
def test_zero_or_negative_counts_on_the_command_line_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"argument {argv[-2]}: must be >=" in capsys.readouterr().err


def test_unexpected_errors_print_one_line_and_log_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MICROT2I_CACHE", str(tmp_path))
    monkeypatch.setattr(presets, "names", lambda: 1 / 0)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected ZeroDivisionError: division by zero" in err
    (log,) = (tmp_path / "logs").iterdir()
    assert f"traceback in {log}; --debug prints it" in err and "Traceback (most recent call last)" in log.read_text()
    with pytest.raises(ZeroDivisionError):
        main(["presets", "--debug"])
