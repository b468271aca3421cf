import numpy as np
import pytest
import torch

from microt2i.data.loader import PositionBatches, _bench_store, iterate, loader_throughput, make_loader
from microt2i.data.sampler import ResumableSampler
from microt2i.data.store import ShardedStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    _bench_store(d, num_samples=50, shard_size=16, latent_shape=(2, 4, 4), text_shape=(3, 5))
    return ShardedStore(d)


def _rows(loader):
    return [{k: v.clone() for k, v in rows.items()} for rows in loader]


def test_batches_follow_the_sampler_and_do_not_depend_on_worker_count(store):
    sampler = ResumableSampler(len(store), seed=1)
    by_workers = [_rows(make_loader(store, sampler, start=0, end=120, micro=8, workers=w)) for w in (0, 2)]
    assert len(by_workers[0]) == 15
    for a, b in zip(*by_workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k, rows in enumerate(by_workers[0]):  # batch k holds the samples of positions 8k … 8k+7, epochs included
        want = store.read(sampler.indices(8 * k, 8))
        assert np.array_equal(rows["latents"].numpy(), want["latents"])


def test_resume_mid_epoch_is_the_tail_of_the_full_stream_and_ranks_split_it(store):
    sampler = ResumableSampler(len(store), seed=2)
    full = _rows(make_loader(store, sampler, start=0, end=96, micro=8))
    resumed = _rows(make_loader(store, sampler, start=40, end=96, micro=8, workers=1))
    assert all(torch.equal(a["text_tokens"], b["text_tokens"]) for a, b in zip(full[5:], resumed))
    # two ranks with micro 4 each cover the global micro-batch of 8 in rank order
    ranks = [_rows(make_loader(store, sampler, start=0, end=96, micro=4, rank=r, world_size=2)) for r in (0, 1)]
    for k, g in enumerate(full):
        both = torch.cat([ranks[0][k]["latents"], ranks[1][k]["latents"]])
        assert torch.equal(both, g["latents"])
    assert len(PositionBatches(sampler, 0, 96, 4, 1, 2)) == 12


def test_iterate_makes_training_tensors_with_per_position_generators(store):
    sampler = ResumableSampler(len(store), seed=0)
    got = list(iterate(store, sampler, start=16, end=32, micro=8,
                       generator_for=lambda pos: torch.Generator().manual_seed(pos)))
    assert [p for p, _ in got] == [16, 24]
    b = got[1][1]
    assert b["x0"].dtype == torch.float32 and b["text_tokens"].shape == (8, 3, 5) and b["text_mask"].dtype == torch.bool
    assert torch.equal(b["x0"], store.batch(sampler.indices(24, 8))["x0"])  # "sample" store: nothing to re-draw


def test_loader_throughput_reports_a_rate(tmp_path):
    res = loader_throughput(num_samples=64, micro=16, shard_size=32, epochs=2, latent_shape=(4, 8, 8),
                            text_shape=(7, 16), tmp_dir=str(tmp_path))
    assert res["samples_per_s"] > 0 and res["num_samples"] == 64 and res["text_shape"] == [7, 16]
    assert list(tmp_path.iterdir()) == []  # the temporary store is removed


def test_training_with_loader_workers_is_bit_identical(tmp_path):
    """`train.loader_workers` only moves reading into processes: same batches, same weights, and a resume
    mid-run (a fresh reader starting at the checkpoint's position) still replays the uninterrupted run."""
    from microt2i import presets
    from microt2i.config import apply_overrides
    from microt2i.train.loop import train
    from microt2i.train.state import load_latest

    d = tmp_path / "store"
    _bench_store(d, num_samples=24, shard_size=8, latent_shape=(3, 16, 16), text_shape=(6, 16))
    cfg = apply_overrides(presets.get("world-tiny"), [
        "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1",
        "train.total_nimg=40", "train.batch_size=8", "train.micro_batch=4", "train.ckpt_every_nimg=16",
        "train.threads=1"])
    quiet = dict(progress=False, log=lambda *_: None)
    train(cfg, tmp_path / "a", store=ShardedStore(d), **quiet)
    workers = apply_overrides(cfg, ["train.loader_workers=2"])
    train(workers, tmp_path / "b", store=ShardedStore(d), stop_nimg=16, **quiet)
    train(workers, tmp_path / "b", store=ShardedStore(d), **quiet)
    a, b = load_latest(tmp_path / "a"), load_latest(tmp_path / "b")
    assert a["nimg"] == b["nimg"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
