"""The FID Inception-v3 (eval/inception.py): loads a state dict laid out exactly like pytorch-fid's published
`pt_inception-2015-12-05-6726825d.pth` (built here from a table of its tensors, random values), strictly, through
`torch.load(weights_only=True)`; the resize protocols; bad files."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from microt2i.eval import features
from microt2i.eval.inception import FIDInception, load_fid_inception, preprocess


def _file_layout():
    """(name, cin, cout, kh, kw) of every conv + batch norm of the published file (Inception-v3, the TF graph)."""
    convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
             ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    for name, cin, pool in (("5b", 192, 32), ("5c", 256, 64), ("5d", 288, 64)):
        convs += [(f"Mixed_{name}.{b}", i, o, k, k) for b, i, o, k in (
            ("branch1x1", cin, 64, 1), ("branch5x5_1", cin, 48, 1), ("branch5x5_2", 48, 64, 5),
            ("branch3x3dbl_1", cin, 64, 1), ("branch3x3dbl_2", 64, 96, 3), ("branch3x3dbl_3", 96, 96, 3),
            ("branch_pool", cin, pool, 1))]
    convs += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
              ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    for name, c in (("6b", 128), ("6c", 160), ("6d", 160), ("6e", 192)):
        convs += [(f"Mixed_{name}.{b}", i, o, kh, kw) for b, i, o, kh, kw in (
            ("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c, 1, 1), ("branch7x7_2", c, c, 1, 7),
            ("branch7x7_3", c, 192, 7, 1), ("branch7x7dbl_1", 768, c, 1, 1), ("branch7x7dbl_2", c, c, 7, 1),
            ("branch7x7dbl_3", c, c, 1, 7), ("branch7x7dbl_4", c, c, 7, 1), ("branch7x7dbl_5", c, 192, 1, 7),
            ("branch_pool", 768, 192, 1, 1))]
    convs += [("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
              ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
              ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
    for name, cin in (("7b", 1280), ("7c", 2048)):
        convs += [(f"Mixed_{name}.{b}", i, o, kh, kw) for b, i, o, kh, kw in (
            ("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
            ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1), ("branch_pool", cin, 192, 1, 1))]
    return convs


def published_like_state_dict(seed=0, with_counters=False) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, cin, cout, kh, kw in _file_layout():
        sd[f"{name}.conv.weight"] = torch.randn(cout, cin, kh, kw, generator=g) * (2 / (cin * kh * kw)) ** 0.5
        sd[f"{name}.bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
        sd[f"{name}.bn.bias"] = 0.1 * torch.randn(cout, generator=g)
        sd[f"{name}.bn.running_mean"] = 0.1 * torch.randn(cout, generator=g)
        sd[f"{name}.bn.running_var"] = 1 + torch.rand(cout, generator=g)
        if with_counters:
            sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    sd["fc.weight"], sd["fc.bias"] = 0.01 * torch.randn(1008, 2048, generator=g), torch.zeros(1008)
    return sd


def test_the_table_is_the_published_file():
    sd = published_like_state_dict()
    # 94 conv+BN units and the 1008-way fc: 23,885,392 float32 values, i.e. the 95.5 MB of the released file
    assert len(sd) == 94 * 5 + 2 and sum(v.numel() for v in sd.values()) == 23_885_392


@pytest.mark.parametrize("with_counters", [False, True])
def test_loads_the_published_layout_strictly_and_gives_2048_features(tmp_path, with_counters, one_thread):
    sd = published_like_state_dict(with_counters=with_counters)
    torch.save(sd, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    net = load_fid_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    for k, v in net.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k]), k
    ext = features.get_extractor("inception", weights=str(tmp_path / "pt_inception-2015-12-05-6726825d.pth"))
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    f = ext(images)
    assert ext.metric_name == "FID" and f.shape == (2, 2048) and np.isfinite(f).all() and (f >= 0).all()  # post-ReLU
    assert ext.key.endswith(":299:bilinear")
    with torch.inference_mode():
        want = net(preprocess(images, "bilinear")).double().numpy()
    assert np.allclose(f, want)


def test_bad_weight_files_get_one_clear_error(tmp_path):
    sd = published_like_state_dict()
    del sd["Mixed_7c.branch_pool.conv.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing.*Mixed_7c.branch_pool.conv.weight"):
        load_fid_inception(tmp_path / "partial.pth")
    sd = published_like_state_dict()
    sd["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's 1000-way head: not the FID graph
    torch.save(sd, tmp_path / "tv.pth")
    with pytest.raises(ValueError, match=r"fc.weight \(1000, 2048\)"):
        load_fid_inception(tmp_path / "tv.pth")
    torch.save({"net": FIDInception}, tmp_path / "code.pth")  # a pickled class: weights_only refuses it
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        load_fid_inception(tmp_path / "code.pth")
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_fid_inception(tmp_path / "nowhere.pth")


def test_resize_protocols():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, 0, 0] = 255  # one white pixel top-left
    x = preprocess(img, "bilinear")
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    # pytorch-fid: bilinear, align_corners=False, no antialias, then [0, 1] → [−1, 1]: corners keep their pixel
    assert x[0, 0, 0, 0] == pytest.approx(1) and x[0, 0, -1, -1] == pytest.approx(-1) and x.min() >= -1
    want = 2 * F.interpolate(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255, size=(299, 299),
                             mode="bilinear", align_corners=False) - 1
    assert torch.allclose(x, want)
    clean = preprocess(img, "clean")  # clean-fid's float PIL bicubic, then (x − 128)/128
    assert torch.allclose(clean, (features.resize_clean(img, 299) - 128) / 128)
    assert not torch.allclose(clean, x, atol=1e-2)
    with pytest.raises(ValueError, match="bilinear, clean"):
        preprocess(img, "nearest")


def test_fid_pools_ignore_padding_and_the_last_block_max_pools():
    from microt2i.eval.inception import _tf_avg_pool

    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert _tf_avg_pool(x)[0, 0, 0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4)  # TF: padded zeros not counted
    net = FIDInception()
    assert not net.Mixed_7b.max_pool and net.Mixed_7c.max_pool
