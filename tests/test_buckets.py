"""Aspect-ratio buckets (data/buckets.py): the bucket list and assignment against their closed forms, exact
resize + centre crop, single-bucket batches, a resumable order, rectangular sin-cos positions."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from microt2i.config import ConfigError
from microt2i.data.buckets import BucketBatchSampler, assign_bucket, bucket_sizes, resize_to_bucket
from microt2i.models.layers import sincos_pos_embed_2d, sincos_pos_embed_hw


@pytest.mark.parametrize("base, mult", [(1024, 64), (256, 16), (64, 8)])
def test_bucket_list_closed_form(base, mult):
    b = bucket_sizes(base, mult)
    assert (base, base) in b and len(set(b)) == len(b)
    for h, w in b:
        assert h % mult == 0 and w % mult == 0 and h * w <= base * base  # within the budget
        assert (h + mult) * w > base * base  # the tallest at this width
        assert 0.25 <= w / h <= 4
    ratios = [w / h for h, w in b]
    assert ratios == sorted(ratios)
    if (base, mult) == (1024, 64):  # the SDXL list's well-known members
        assert {(768, 1344), (1344, 768), (832, 1216), (1216, 832), (896, 1152), (1152, 896)} <= set(b)


def test_assignment_is_the_nearest_log_aspect():
    b = bucket_sizes(256, 16)
    rng = np.random.default_rng(0)
    for h, w in rng.integers(20, 2000, size=(300, 2)):
        i = assign_bucket(int(h), int(w), b)
        d = [abs(math.log(bw / bh) - math.log(w / h)) for bh, bw in b]
        assert d[i] == min(d) and i == d.index(min(d))
    assert b[assign_bucket(500, 500, b)] == (256, 256)


def test_resize_to_bucket_is_an_exact_centre_crop():
    # 40 × 20 image: left half black, right half white; a 16 × 16 bucket keeps the central square, half each
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 20:] = 255
    out = resize_to_bucket(Image.fromarray(a), 16, 16)
    assert out.size == (16, 16)
    o = np.asarray(out)
    assert (o[:, :6] < 10).all() and (o[:, 10:] > 245).all()
    assert resize_to_bucket(Image.fromarray(a), 8, 32).size == (32, 8)


@pytest.mark.parametrize("args, needle", [((256, 16, 1000), "data.bucket_pixels=1000 must be a positive multiple of 16"),
                                          ((250, 16), "bucket base resolution 250")])
def test_bad_bucket_settings_one_line(args, needle):
    with pytest.raises(ConfigError, match=needle):
        bucket_sizes(*args)


def test_batches_single_bucket_cover_each_epoch_and_resume_exactly():
    rng = np.random.default_rng(1)
    bucket_of = rng.integers(0, 4, size=103)
    s = BucketBatchSampler(bucket_of, 4, seed=7)
    per = len(s.epoch_batches(0))
    assert per == sum(np.bincount(bucket_of) // 4)
    seen = np.concatenate(s.epoch_batches(0))
    assert len(set(seen.tolist())) == len(seen) == per * 4  # no repeat within an epoch
    ref = [next(s) for _ in range(3 * per)]
    assert all(len(set(bucket_of[b])) == 1 for b in ref)  # every batch from one bucket
    assert not all(np.array_equal(a, b) for a, b in zip(ref[:per], ref[per:2 * per]))  # reshuffled per epoch
    t = BucketBatchSampler(bucket_of, 4, seed=7)
    for _ in range(per + 5):
        next(t)
    state = t.state_dict()
    u = BucketBatchSampler(bucket_of, 4, seed=7)
    u.load_state_dict(state)
    assert all(np.array_equal(next(u), ref[k]) for k in range(per + 5, 3 * per))
    with pytest.raises(ValueError, match="seed=7, this run 8"):
        BucketBatchSampler(bucket_of, 4, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="no bucket holds a full batch"):
        BucketBatchSampler([0, 1, 2], 2)


def test_rectangular_positions_extend_the_square_grid():
    sq = sincos_pos_embed_2d(32, 8, interp_scale=2.0)
    assert torch.equal(sincos_pos_embed_hw(32, 8, 8, step=0.5), sq)
    wide = sincos_pos_embed_hw(32, 4, 16, step=0.5).reshape(4, 16, 32)
    assert torch.equal(wide[:, :8], sq.reshape(8, 8, 32)[:4])  # the square's rows, extended along x


def test_dit_i_trains_a_step_on_mixed_aspect_buckets():
    """world-tiny's DiT-I (16² pixels, patch 2): a batch from a wide and one from a tall bucket of the 16² budget
    each give a finite loss and gradients; the square input is the model's own grid, unchanged."""
    from microt2i import presets
    from microt2i.diffusion.objectives import build_objective
    from microt2i.models import build

    cfg = presets.get("world-tiny")
    torch.manual_seed(0)
    net = build(cfg.model)
    obj = build_objective(cfg.objective)
    buckets = bucket_sizes(16, 2)
    assert (8, 32) in buckets and (32, 8) in buckets
    tok = torch.randn(2, cfg.data.text_len, cfg.model.text_dim)
    mask = torch.ones(2, cfg.data.text_len, dtype=torch.bool)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for h, w in [(8, 32), (32, 8), (16, 16)]:
        x0 = torch.randn(2, 3, h, w, generator=g)
        loss = obj.loss(net, x0, tok, mask, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and net.final_layer.linear.weight.grad.abs().sum() > 0  # zero-init output: its grad first
        opt.step()
        with torch.no_grad():
            assert net(x0, torch.ones(2), tok, mask).shape == x0.shape
    with pytest.raises(ValueError, match="aspect bucket of at most 16"):
        net(torch.randn(1, 3, 32, 32), torch.ones(1), tok[:1], mask[:1])
