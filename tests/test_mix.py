from collections import Counter

import numpy as np
import pytest
import torch
from _ingest_data import colour, mean_colour, write_hf, write_shards
from _tiny_models import tiny_t5

from microt2i.config import ConfigError, apply_overrides
from microt2i.data.mix import MixedStore, mixture_quotas
from microt2i.data.sampler import ResumableSampler
from microt2i.data.store import Store

QUIET = dict(log=lambda *_: None)


def _store(n: int, tag: float, length: int = 3, dim: int = 4) -> Store:
    """A world-like Store whose sample i has latents filled with tag + i (so a batch says where it came from)."""
    lat = (tag + torch.arange(n, dtype=torch.float32)).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone()
    return Store(lat, torch.full((n, length, dim), tag, dtype=torch.float16), torch.ones(n, length, dtype=torch.bool),
                 [f"{tag}-{i}" for i in range(n)], {"key": f"k{tag}"}, torch.zeros(1, length, dim),
                 torch.zeros(1, length, dtype=torch.bool))


@pytest.mark.parametrize("sizes, weights", [([10, 3], [1, 1]), ([7, 50, 5], [0.2, 0.5, 0.3]), ([4], [2.0])])
def test_quotas_follow_the_weights_and_cover_every_sample(sizes, weights):
    q = mixture_quotas(sizes, weights)
    total = sum(q)
    w = np.asarray(weights) / sum(weights)
    assert total == max(int(np.ceil(n / wc - 1e-9)) for n, wc in zip(sizes, w))
    assert all(qc >= n for qc, n in zip(q, sizes))  # no sample is left out of an epoch
    assert np.abs(np.asarray(q) - w * total).max() < 1  # largest remainder: within one slot of w·N


def test_mixed_stream_ratio_coverage_and_resume():
    a, b = _store(10, 0.0), _store(3, 100.0)
    mix = MixedStore([a, b], [2, 1], seed=5)
    assert mix.quotas == [10, 5] and len(mix) == 15 and mix.text_tokens.shape == (15, 3, 4)
    comp, local = mix.source_of(np.arange(len(mix)))
    assert sorted(local[comp == 0]) == list(range(10)) and set(local[comp == 1]) == {0, 1, 2}
    # the trainer's sampler over the mixture: images seen per component follow the weights, exactly per epoch
    sampler = ResumableSampler(len(mix), seed=1)
    seen = Counter(mix.source_of(sampler.indices(0, 15 * 50))[0].tolist())
    assert seen == {0: 500, 1: 250}
    # a batch gathers each component's rows in index order (latent value = tag + local index)
    idx = sampler.indices(7, 6)
    batch = mix.batch(idx)
    comp, local = mix.source_of(idx)
    want = np.where(comp == 1, 100.0, 0.0) + local
    assert torch.equal(batch["x0"][:, 0, 0, 0], torch.tensor(want, dtype=torch.float32))
    assert torch.equal(batch["text_tokens"][:, 0, 0], torch.tensor(np.where(comp == 1, 100.0, 0.0), dtype=torch.float32))
    # deterministic: the same (stores, weights, seed) give the same stream; another seed another one
    again = MixedStore([a, b], [2, 1], seed=5)
    assert all((x == y).all() for x, y in zip(again.source_of(idx), mix.source_of(idx)))
    other = MixedStore([a, b], [2, 1], seed=6)
    assert not (other.source_of(np.arange(15))[1] == mix.source_of(np.arange(15))[1]).all()
    with pytest.raises(ValueError, match="share the codec"):
        MixedStore([a, _store(3, 1.0, length=5)], [1, 1])
    with pytest.raises(IndexError):
        mix.source_of([15])


def test_webdataset_and_hf_precompute_into_one_mixed_stream_that_trains(tmp_path):
    """Done-when: a tiny WebDataset and an HF dataset → precompute → one mixed stream → training."""
    from microt2i import presets
    from microt2i.data.precompute import precompute
    from microt2i.train.loop import train

    t5 = str(tiny_t5(tmp_path / "t5"))
    write_shards(tmp_path / "wds", per_shard=4, shards=2)
    write_hf(tmp_path / "hf", n=3)
    common = [f"data.text_encoder={t5}", "data.text_len=8", "data.resolution=8", "data.codec=pixel",
              "data.shard_size=4", "data.clean_captions=true"]
    base = presets.get("world-tiny")
    for name, source, root in (("a", "webdataset", tmp_path / "wds"), ("b", "hf", tmp_path / "hf")):
        cfg = apply_overrides(base, common + [f"data.source={source}", f"data.root={root}",
                                              f"data.store_dir={tmp_path / name}"])
        assert precompute(cfg.data, **QUIET)["manifest"]
    run = apply_overrides(base, common + [
        f"data.mix=[{{store_dir: {tmp_path / 'a'}, weight: 1}}, {{store_dir: {tmp_path / 'b'}, weight: 1}}]",
        "model.in_channels=3", "model.input_size=8", "model.patch_size=2", "model.text_dim=16",
        "train.total_nimg=32", "train.batch_size=8", "train.threads=1", "train.log_every_nimg=16",
        "eval.every_nimg=0"])
    out = train(run, tmp_path / "run", progress=False, stop_nimg=16, **QUIET)
    mix = out["store"]
    assert isinstance(mix, MixedStore) and mix.quotas == [8, 8] and len(mix) == 16
    assert [r["size"] for r in mix.meta["mix"]] == [8, 3]
    comp, local = mix.source_of(np.arange(16))
    rows = mix.batch(np.arange(16))["x0"].numpy()
    want = np.array([colour(i) if c == 0 else colour(100 + i) for c, i in zip(comp, local)])
    assert np.abs(mean_colour(rows) - want).max() < 4
    assert set(mix.captions[8:]) == {f"a drawing of item {100 + r}" for r in range(3)}  # cleaned: lower case
    assert set(mix.captions[:8]) == {f"photo number {i}" for i in range(8)}  # cleaned: the URL is gone
    # resumable: stopping at 16 and resuming to 32 equals one uninterrupted run
    resumed = train(run, tmp_path / "run", progress=False, **QUIET)
    whole = train(run, tmp_path / "run2", progress=False, **QUIET)
    assert resumed["finished"] and all(torch.equal(x, y) for x, y in zip(resumed["net"].state_dict().values(),
                                                                         whole["net"].state_dict().values()))
    with pytest.raises(ConfigError, match="exclusive"):
        apply_overrides(run, [f"data.store_dir={tmp_path / 'a'}"])
