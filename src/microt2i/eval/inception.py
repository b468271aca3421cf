"""The FID Inception-v3, written here without torchvision, loading pytorch-fid's published weights.

Architecture: Inception-v3 (Szegedy et al. 2016) with the three changes of the TensorFlow 2015-12-05 graph that
FID was defined on (`reference/evaluation.md` §3.1), as pytorch-fid's `FIDInceptionA/C/E` patch them:
- the pool branch of every A, C and first E block averages over valid pixels only (TF's average pool ignores the
  zero padding: `count_include_pad=False`);
- the pool branch of the last E block (Mixed_7c) is a max pool, not an average pool;
- the classifier has 1008 outputs (TF's label map), with no auxiliary head.
Features are the 2048-d global average pool after Mixed_7c, as every FID implementation uses.

Weights: `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's port of the TF graph: a plain state dict of
conv / batch-norm / fc tensors, keys `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch_pool.bn.running_var`, ...,
`fc.weight` [1008, 2048]). It is read from a local path with `torch.load(weights_only=True)` (no unpickling of code)
and loaded strictly: any missing, extra or mis-shaped tensor is an error naming it. Nothing is downloaded.

Resize protocol (stated in every cache key and report):
- `bilinear` (default, pytorch-fid): uint8 → [0, 1], `F.interpolate(bilinear, align_corners=False)` to 299² with no
  antialiasing, then 2x − 1. Numbers are comparable with pytorch-fid's.
- `clean` (offered): clean-fid's resize — PIL bicubic on each channel as float32 (antialiased), no re-quantisation —
  then (x − 128)/128. clean-fid's own numbers use its TorchScript export of the same graph (`--features inception
  --weights inception-2015-12-05.pt`); this mode runs clean-fid's resize on pytorch-fid's weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.teacher import resize_clean

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
RESIZE_MODES = ("bilinear", "clean")
SIZE = 299


class ConvBN(nn.Module):
    """conv (no bias) → batch norm (eps 1e-3, TF's) → ReLU; state-dict names `conv.*` and `bn.*`."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):  # TF's 3×3 average pool: padded zeros do not count
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # 35×35: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | pool→1×1
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_tf_avg_pool(x))], 1)


class BlockB(nn.Module):  # 35 → 17 reduction
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):  # 17×17 with factorised 7×7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = ConvBN(cin, c7, 1), ConvBN(c7, c7, **row), \
            ConvBN(c7, 192, **col)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = ConvBN(cin, c7, 1), ConvBN(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = ConvBN(c7, c7, **row), ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class BlockD(nn.Module):  # 17 → 8 reduction
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # 8×8 with split 1×3 / 3×1 outputs; `max_pool` for the last block of the FID graph
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = ConvBN(cin, 448, 1), ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Input: float [B, 3, 299, 299] scaled to [−1, 1]; output: [B, 2048] pool features (`logits=True`: + fc)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # TF's 1008-way classifier: loaded (strictly) but unused for FID

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        feats = x.mean((2, 3))
        return self.fc(feats) if logits else feats


def load_fid_inception(weights: str | os.PathLike, device="cpu") -> FIDInception:
    """The FID Inception with pytorch-fid's state dict from a local file (strict; `weights_only=True`)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights {weights!s} do not exist; download {WEIGHTS_FILE} (pytorch-"
                                f"fid's release 'fid_weights') once and pass --weights /path/to/{WEIGHTS_FILE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — a pickle with code, a TorchScript archive, a damaged file
        raise ValueError(f"{path} is not a plain PyTorch state dict ({type(e).__name__}); pass pytorch-fid's "
                         f"{WEIGHTS_FILE}, or a TorchScript inception-2015-12-05.pt ending in .pt") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict; pass pytorch-fid's {WEIGHTS_FILE}")
    net = FIDInception()
    want = net.state_dict()
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    bad = [f"{k} {tuple(v.shape)} (want {tuple(want[k].shape)})" for k, v in state.items()
           if k in want and tuple(getattr(v, "shape", ())) != tuple(want[k].shape)]
    if missing or unexpected or bad:
        raise ValueError(f"{path} is not the FID Inception state dict: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, mis-shaped {bad[:3]}; pass pytorch-fid's {WEIGHTS_FILE}")
    # batch-norm step counters are bookkeeping that files saved before PyTorch 0.4.1 do not carry
    state = {**{k: v for k, v in want.items() if k.endswith("num_batches_tracked")}, **state}
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def preprocess(images: np.ndarray, resize: str = "bilinear") -> torch.Tensor:
    """uint8 [N, H, W, 3] → float32 [N, 3, 299, 299] in [−1, 1] by the stated resize protocol."""
    if resize == "bilinear":
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1
    if resize == "clean":
        return (resize_clean(images, SIZE) - 128) / 128
    raise ValueError(f"inception resize {resize!r}: choose one of {', '.join(RESIZE_MODES)}")
