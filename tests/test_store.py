import json

import numpy as np
import pytest
import torch
from _tiny_models import tiny_vae

from microt2i.config import DataConfig
from microt2i.data.store import (MANIFEST, PLAN, ShardedStore, Store, finalize_store, model_revision, shard_name,
                                 store_key, verify_store, write_shard)


def _write(folder, counts, seed=0):
    """A store of shards with `counts` rows each; returns the full tensors for comparison."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PLAN).write_text(json.dumps({"key": "k", "fields": {"text_store": "embeddings",
                                                                  "latent_mode": "mean_std"},
                                           "content": {}, "shard_size": max(counts), "num_shards": len(counts)}))
    from safetensors.torch import save

    (folder / "empty.safetensors").write_bytes(save({"tokens": torch.ones(1, 3, 2), "mask": torch.ones(1, 3).byte()}))
    full = {"latents": [], "latents_std": [], "text_tokens": [], "text_mask": [], "labels": []}
    start = 0
    for s, n in enumerate(counts):
        t = {"latents": torch.randn(n, 1, 2, 2, generator=g).half(), "latents_std": torch.rand(n, 1, 2, 2).half(),
             "text_tokens": torch.randn(n, 3, 2, generator=g).half(),
             "text_mask": torch.randint(0, 2, (n, 3), generator=g).byte(), "labels": torch.arange(start, start + n)}
        write_shard(folder, s, t, [{"key": f"k{start + i}", "caption": f"c{start + i}", "label": start + i}
                                   for i in range(n)], {"text_dim": 2})
        for k in full:
            full[k].append(t[k])
        start += n
    assert finalize_store(folder) is not None
    return {k: torch.cat(v) for k, v in full.items()}


def test_rows_are_gathered_across_shards_in_request_order(tmp_path):
    full = _write(tmp_path / "s", [4, 4, 3, 0, 2])  # an empty shard (all images skipped) is fine
    st = ShardedStore(tmp_path / "s")
    assert len(st) == 13 and st.latents.shape == (13, 1, 2, 2) and st.text_tokens.shape == (13, 3, 2)
    idx = np.array([12, 0, 5, 5, 11, 3, 8])
    rows = st.read(idx)
    for k, v in full.items():
        assert np.array_equal(rows[k], v[idx].numpy()), k
    assert torch.equal(st.latents[idx], full["latents"][idx].float())
    assert torch.equal(st.latents[2:4], full["latents"][2:4].float())
    assert st.captions[11] == "c11" and st.keys[0] == "k0"
    b = st.batch(idx)
    assert b["label"].tolist() == idx.tolist() and b["text_mask"].dtype == torch.bool
    with pytest.raises(IndexError, match="out of range"):
        st.read([13])
    tok, mask = st.null_text("empty")
    assert tok.shape == (1, 3, 2) and bool(mask.all())
    assert st.null_text("zero")[0].abs().sum() == 0


def test_verify_finds_shape_and_count_lies_and_unfinished_stores(tmp_path):
    _write(tmp_path / "s", [3, 3])
    assert verify_store(tmp_path / "s") == []
    m = json.loads((tmp_path / "s" / MANIFEST).read_text())
    m["shards"][1]["tensors"]["latents"]["shape"] = [3, 1, 2, 3]
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(m))
    assert any("latents" in p and shard_name(1) in p for p in verify_store(tmp_path / "s"))
    (tmp_path / "s" / MANIFEST).unlink()
    (tmp_path / "s" / f"{shard_name(0)}.json").unlink()
    assert "1 of 2 shards not done" in verify_store(tmp_path / "s")[0]
    with pytest.raises(FileNotFoundError, match="not a finished store"):
        ShardedStore(tmp_path / "s")
    assert "not a store" in verify_store(tmp_path / "nothing")[0]
    with pytest.raises(ValueError, match="rows"):
        write_shard(tmp_path / "x", 0, {"a": torch.zeros(2)}, [{}])


def test_store_key_tracks_encoders_and_their_revisions(tmp_path):
    vae = tiny_vae(tmp_path / "vae")
    base = DataConfig(codec=str(vae))
    key = store_key(base)
    for change in ({"text_len": 32}, {"latent_mode": "sample"}, {"text_store": "ids"}, {"resolution": 64},
                   {"store_dtype": "float32"}, {"codec": "pixel"}):
        assert store_key(DataConfig(**({"codec": str(vae)} | change))) != key, change
    assert store_key(DataConfig(codec=str(vae), store_dir="/x", shard_size=7, cache_dir="/y")) == key  # layout only
    rev = model_revision(str(vae), "VAE")
    cfg = vae / "config.json"
    cfg.write_text(cfg.read_text().replace('"scaling_factor": 0.25', '"scaling_factor": 0.5'))
    assert model_revision(str(vae), "VAE") != rev  # re-scaled latents are another cache
    snap = tmp_path / "models--a--b" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert model_revision(str(snap), "VAE") == "0123abcd"  # a hub snapshot is keyed by its commit
    assert store_key(DataConfig(source="imagenet", root="r", store_dir="s"))["source"] == "imagenet"
    assert "num_images" not in store_key(DataConfig(source="imagenet", root="r", store_dir="s"))


def test_world_store_keeps_its_interface():
    st = Store(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 6).half(), torch.ones(2, 5).bool(), ["a", "b"], {},
               torch.zeros(1, 5, 6).half(), torch.ones(1, 5).bool())
    b = st.batch([1], generator=torch.Generator().manual_seed(0))  # accepted, ignored: world latents are stored
    assert b["x0"].shape == (1, 3, 4, 4) and b["text_tokens"].dtype == torch.float32
