import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_imagenet import make_tree
from _tiny_models import tiny_t5, tiny_vae

from microt2i.config import DataConfig, apply_overrides
from microt2i.data.precompute import precompute
from microt2i.data.store import (MANIFEST, StoreMismatchError, open_store, shard_name, store_key, verify_store)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"t5": str(tiny_t5(d / "t5")), "t5b": str(_other_t5(d / "t5b")), "vae": str(tiny_vae(d / "vae"))}


def _other_t5(folder: Path) -> Path:
    tiny_t5(folder)
    cfg = folder / "config.json"
    cfg.write_text(cfg.read_text().replace('"dropout_rate": 0.1', '"dropout_rate": 0.2'))  # another revision
    return folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, make_tree(root)


def _cfg(models, store_dir, **kw) -> DataConfig:
    base = dict(source="world", num_images=20, resolution=16, codec="pixel", text_encoder=models["t5"], text_len=8,
                shard_size=8, store_dir=str(store_dir))
    return DataConfig(**(base | kw))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_killed_mid_way_and_restarted_gives_the_same_store(models, tmp_path):
    whole = precompute(_cfg(models, tmp_path / "a"), log=lambda *_: None)
    assert whole["done"] == [0, 1, 2] and whole["manifest"]

    def die(index):
        if index == 0:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        precompute(_cfg(models, tmp_path / "b"), on_shard=die, log=lambda *_: None)
    assert not (tmp_path / "b" / MANIFEST).exists() and (tmp_path / "b" / f"{shard_name(0)}.json").exists()
    (tmp_path / "b" / f".{shard_name(1)}.safetensors.123.tmp").write_bytes(b"half")  # a write cut by the kill
    (tmp_path / "b" / f"{shard_name(2)}.safetensors").write_bytes(b"no sidecar: never finished")
    with pytest.raises(FileNotFoundError, match="not a finished store"):
        open_store(tmp_path / "b")
    again = precompute(_cfg(models, tmp_path / "b"), log=lambda *_: None)
    assert again["skipped_shards"] == [0] and again["done"] == [1, 2]
    assert not (tmp_path / "b" / f".{shard_name(1)}.safetensors.123.tmp").exists()  # the restart removed it
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # byte-identical, manifest included


def test_machine_shards_compose_and_verify_catches_damage(models, tmp_path):
    precompute(_cfg(models, tmp_path / "a"), log=lambda *_: None)
    first = precompute(_cfg(models, tmp_path / "b"), num_shards=2, shard_index=1, log=lambda *_: None)
    assert first["done"] == [1] and not first["manifest"]
    assert "not done" in verify_store(tmp_path / "b")[0]
    second = precompute(_cfg(models, tmp_path / "b"), num_shards=2, shard_index=0, log=lambda *_: None)
    assert second["done"] == [0, 2] and second["manifest"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and verify_store(tmp_path / "b") == []
    shard = tmp_path / "b" / f"{shard_name(1)}.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "b" / f"{shard_name(2)}.safetensors").unlink()
    problems = verify_store(tmp_path / "b")
    assert any("shard-00001" in p and "checksum" in p for p in problems)
    assert any("shard-00002" in p and "missing" in p for p in problems)
    with pytest.raises(ValueError, match="shard-index"):
        precompute(_cfg(models, tmp_path / "c"), num_shards=2, shard_index=2)


def test_stale_store_is_refused_naming_both_settings(models, tmp_path):
    cfg = _cfg(models, tmp_path / "s")
    precompute(cfg, log=lambda *_: None)
    with pytest.raises(StoreMismatchError, match="text_len: 8 → 12"):
        precompute(_cfg(models, tmp_path / "s", text_len=12), log=lambda *_: None)
    other = _cfg(models, tmp_path / "s", text_encoder=models["t5b"])
    with pytest.raises(StoreMismatchError) as e:
        open_store(tmp_path / "s", store_key(other))
    msg = str(e.value)
    assert "data.text_encoder" in msg and models["t5"] in msg and models["t5b"] in msg and "precompute" in msg
    assert "text_revision" in msg  # same path, other weights would be caught by the revision alone


def test_posterior_is_resampled_per_step_and_sample_mode_is_fixed(models, tmp_path):
    cfg = _cfg(models, tmp_path / "ms", codec=models["vae"], num_images=6, shard_size=4)
    precompute(cfg, log=lambda *_: None)
    st = open_store(cfg.store_dir, store_key(cfg))
    rows = st.read([5, 1])
    mean, std = (torch.from_numpy(rows[k]).float() for k in ("latents", "latents_std"))
    assert st.latents.shape == (6, 4, 8, 8) and (std > 0).all()
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    b = st.batch([5, 1], generator=torch.Generator().manual_seed(3))
    assert torch.equal(b["x0"], mean + std * eps)  # CAD-I: z = mean + std·ε, fresh ε every step
    assert torch.equal(st.batch([5, 1])["x0"], mean)  # no generator: the posterior mean
    assert b["label"].tolist() == [int(x) for x in rows["labels"]]
    sample = _cfg(models, tmp_path / "sm", codec=models["vae"], num_images=6, shard_size=4, latent_mode="sample")
    precompute(sample, log=lambda *_: None)
    ss = open_store(sample.store_dir)
    assert "latents_std" not in ss.read([0])
    g = torch.Generator().manual_seed(3)
    assert torch.equal(ss.batch([2], generator=g)["x0"], ss.batch([2])["x0"])  # a stored sample is not re-drawn
    assert not torch.allclose(ss.batch([2])["x0"], st.batch([2])["x0"].half().float())


def test_token_ids_encoded_on_the_fly_match_stored_states(models, tmp_path):
    from microt2i.encoders import TextEncoder

    emb = _cfg(models, tmp_path / "e", store_dtype="float32")
    ids = _cfg(models, tmp_path / "i", store_dtype="float32", text_store="ids")
    precompute(emb, log=lambda *_: None)
    precompute(ids, log=lambda *_: None)
    se, si = open_store(emb.store_dir), open_store(ids.store_dir)
    assert si.read([0])["text_ids"].dtype == np.int32
    with pytest.raises(RuntimeError, match="attach"):
        si.batch([0])
    si.attach_text_encoder(TextEncoder(models["t5"], max_length=8))
    a, b = se.batch([3, 17, 9]), si.batch([3, 17, 9])
    assert torch.equal(a["text_mask"], b["text_mask"])
    assert torch.allclose(a["text_tokens"], b["text_tokens"], atol=1e-5)
    assert si.text_tokens.shape == se.text_tokens.shape == (20, 8, 16)
    assert torch.allclose(si.null_text("empty")[0], se.null_text("empty")[0], atol=1e-5)
    assert se.captions == si.captions and len(se.captions) == 20


def test_imagenet_tree_caption_precompute_train_end_to_end(models, tree, tmp_path):
    """Done-when: a fabricated ImageNet tree with corrupt files → caption file → precompute → train."""
    from microt2i import presets
    from microt2i.data.captions import read_captions, write_captions
    from microt2i.encoders.captioner import TemplateCaptioner, folder_source, run_caption_job
    from microt2i.train.loop import train

    root, expect = tree
    # caption: the resumable caption job over the train folder; corrupt files fail there too
    keys, load = folder_source(root / "train")
    job = run_caption_job(keys, load, TemplateCaptioner(), tmp_path / "captions.tsv", progress=False,
                          log=lambda *_: None)
    assert len(job["failed"]) == 2
    table = read_captions(tmp_path / "captions.tsv")
    write_captions(tmp_path / "long.tsv", [(k, f"a long caption of {k.split('/')[-1]}") for k in table]
                   + [(k, f"another caption of {k.split('/')[-1]}") for k in table])  # two captions per image
    run = apply_overrides(presets.get("world-tiny"), [
        "data.source=imagenet", f"data.root={root}", f"data.store_dir={tmp_path / 'store'}", "data.shard_size=5",
        f"data.codec={models['vae']}", f"data.text_encoder={models['t5']}", "data.text_len=8",
        f"data.caption_file={tmp_path / 'long.tsv'}",
        "model.in_channels=4", "model.input_size=8", "model.patch_size=2", "model.text_dim=16",
        "train.total_nimg=32", "train.batch_size=8", "train.threads=1", "train.log_every_nimg=16",
        "eval.every_nimg=0"])
    out = precompute(run.data, workers=1, log=lambda *_: None)
    assert out["report"]["total"] == expect["train_images"] and out["report"]["kept"] == expect["train_readable"]
    assert out["report"]["skipped"] == expect["skipped"]
    assert verify_store(run.data.store_dir) == []
    st = open_store(run.data.store_dir)
    assert len(st) == expect["train_readable"] and st.manifest["skipped"] == expect["skipped"]
    assert st.keys == sorted(table)  # the readable images, each with one of its captions
    assert all(c.split(" of ")[-1] == k.split("/")[-1] for c, k in zip(st.captions, st.keys))
    assert {c.split(" of ")[0] for c in st.captions} == {"a long caption", "another caption"}
    result = train(run, tmp_path / "run", progress=False, log=lambda *_: None)
    assert result["finished"] and result["nimg"] == 32 and len(result["store"]) == len(st)
    # a config with another text encoder refuses the store, naming both
    other = apply_overrides(run, [f"data.text_encoder={models['t5b']}"])
    with pytest.raises(StoreMismatchError, match="text_encoder"):
        train(other, tmp_path / "run2", progress=False, log=lambda *_: None)


def test_cli_precompute_verify_filter_and_world_train_vae(models, tmp_path, capsys):
    from microt2i.cli import main

    store = tmp_path / "store"
    args = ["world-tiny", f"data.store_dir={store}", f"data.text_encoder={models['t5']}", "data.num_images=12",
            "data.shard_size=5", "data.text_len=8"]
    assert main(["precompute", *args]) == 0
    assert "3 shards written" in capsys.readouterr().out
    assert main(["precompute", *args]) == 0 and "0 shards written, 3 already done" in capsys.readouterr().out
    assert main(["precompute", "--verify", str(store)]) == 0
    (store / f"{shard_name(2)}.safetensors").write_bytes(b"x")
    assert main(["precompute", "--verify", *args]) == 1 and "checksum" in capsys.readouterr().out
    assert main(["precompute", *args[:-1], "data.text_len=9"]) == 2  # stale store: one line, exit 2
    assert "text_len" in capsys.readouterr().err
    assert main(["filter", "world-tiny", "data.num_images=6", "data.resolution=32", "--threshold", "0.0",
                 "--out", str(tmp_path / "kept.jsonl")]) == 0
    assert len((tmp_path / "kept.jsonl").read_text().splitlines()) == 6
    assert main(["world", "--n", "2", "--resolution", "16", "--out", str(tmp_path / "w.png")]) == 0  # old usage
    assert main(["world", "train-vae", "--steps", "1", "--batch-size", "2", "--vae-dir", str(tmp_path / "vae"),
                 "--threads", "1"]) == 0
    assert json.loads((tmp_path / "vae" / "training.json").read_text())["steps"] == 1


def test_world_captions_from_a_caption_file_and_uncaptioned_images_are_skipped(models, tmp_path):
    from microt2i.data.captions import write_captions

    write_captions(tmp_path / "c.jsonl", [(f"world-0/{i:07d}", f"caption {i}") for i in range(20) if i % 3])
    cfg = _cfg(models, tmp_path / "s", caption_file=str(tmp_path / "c.jsonl"))
    out = precompute(cfg, log=lambda *_: None)
    assert out["report"]["skipped"] == {"no caption": 7} and out["report"]["kept"] == 13
    st = open_store(cfg.store_dir)
    assert st.captions == [f"caption {i}" for i in range(20) if i % 3]
    assert st.keys[:2] == ["world-0/0000001", "world-0/0000002"]
    bare = open_store(precompute(_cfg(models, tmp_path / "o"), log=lambda *_: None)["store_dir"])
    assert torch.equal(st.latents[[0]], bare.latents[[1]])  # same render, the caption file only picks the text
    with pytest.raises(FileNotFoundError, match="caption file"):
        precompute(DataConfig(source="folder", root=str(tmp_path), store_dir=str(tmp_path / "f")))


def test_decoding_processes_do_not_change_the_store(models, tree, tmp_path):
    root, _ = tree
    stores = []
    for w in (0, 2):
        cfg = DataConfig(source="imagenet", root=str(root), store_dir=str(tmp_path / f"w{w}"), resolution=16,
                         captions="aio", text_encoder=models["t5"], text_len=8, shard_size=4)
        precompute(cfg, workers=w, log=lambda *_: None)
        stores.append(_files(tmp_path / f"w{w}"))
    assert stores[0] == stores[1] and len(stores[0]) == 2 * 4 + 3  # 4 shards (+ sidecars), plan, empty, manifest
