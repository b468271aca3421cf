"""ImageNet as users have it on disk, and plain image folders: listing, labels, decoding, resize + centre crop.

Layouts (ImageNet-T2I trains on ImageNet-1k train, 256² and 512²):
- `train/<synset>/*.JPEG` (the official train tarball, extracted);
- `val/<synset>/*.JPEG` (after the usual `valprep.sh`), or flat `val/*.JPEG` plus a labels file: lines
  `filename synset` / `filename,synset` / `filename class-index`, or Kaggle's `LOC_val_solution.csv`.
Keys are paths relative to the split folder (`n01440764/n01440764_10026.JPEG`), which caption files use.

Decoding converts any mode (greyscale, 16-bit greyscale scaled to 8 bits, CMYK, palette, RGBA) to RGB, reads
files by content (a PNG named .JPEG is fine), and never crashes on a bad file: `load_image` raises
`UnreadableImage`, `try_load` returns the reason (empty, truncated, not an image, too large for PIL's
decompression-bomb limit, ...), and the precompute job counts skipped files per reason in its report.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .synsets import imagenet_classes, synset_to_index
from .captions import read_text_utf8

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp", ".bmp")
_SYNSET = re.compile(r"n\d{8}")


class UnreadableImage(ValueError):
    """An image file that cannot be decoded (empty, truncated, not an image); the message says why."""


@dataclass(frozen=True)
class ImageItem:
    key: str  # path relative to the split / folder root (caption files are keyed by it)
    path: Path
    label: int  # ImageNet class index 0..999; -1 when unknown
    name: str  # class name for the AIO caption (the synset's first WordNet lemma, or the folder name)


@dataclass
class IngestReport:
    """What ingest kept and skipped: counts per reason and a few examples (key, reason)."""

    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    def add_skip(self, key: str, reason: str, keep_examples: int = 20) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < keep_examples:
            self.examples.append((key, reason))

    def as_dict(self) -> dict:
        return {"total": self.total, "kept": self.kept, "skipped": dict(self.skipped), "examples": self.examples}


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def class_names() -> dict[str, str]:
    """Synset → human class name (first WordNet lemma)."""
    return dict(imagenet_classes())


def _read_labels(labels_file: Path) -> dict[str, str]:
    """Filename (stem) → synset from a labels file (see the module docstring)."""
    if not labels_file.is_file():
        raise FileNotFoundError(f"ImageNet labels file {labels_file} does not exist; pass data.labels_file=<file with "
                                f"'filename synset' lines or LOC_val_solution.csv>, or use the val/<synset>/ layout")
    synsets = [s for s, _ in imagenet_classes()]
    out: dict[str, str] = {}

    text = read_text_utf8(labels_file)
    rows = (list(csv.reader(io.StringIO(text, newline=""))) if labels_file.suffix.lower() == ".csv"
            else [ln.split() for ln in text.splitlines()])
    for n, row in enumerate(rows, 1):
        row = [c.strip() for c in row if c.strip()]
        label = row[1].split()[0] if len(row) > 1 else ""  # LOC_val_solution: "n01751748 x0 y0 x1 y1 ..."
        if not row or (n == 1 and not _SYNSET.fullmatch(label) and not label.isdigit()):
            continue  # blank line or a header (ImageId,PredictionString)
        if len(row) < 2 or not (_SYNSET.fullmatch(label) or label.isdigit()):
            raise ValueError(f"{labels_file}:{n}: expected 'filename synset' (or 'filename class-index'), got {row!r}; "
                             f"a bare devkit ground-truth file uses devkit ids, convert it to 'filename synset' lines")
        name = row[0]
        if label.isdigit():
            if not 0 <= int(label) < 1000:
                raise ValueError(f"{labels_file}:{n}: class index {label} is not in 0..999")
            label = synsets[int(label)]
        out[Path(name).stem] = label
    return out


def list_imagenet(root: str | Path, split: str = "train", labels_file: str | Path = "") -> list[ImageItem]:
    """Every image of `root/<split>` in sorted key order, with its class index and name."""
    split_dir = Path(root).expanduser() / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no {split}/ folder in {root}; data.root must hold ImageNet's train/ and val/ "
                                f"(train/<synset>/*.JPEG)")
    names, index = class_names(), synset_to_index()
    items = []
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if class_dirs:
        for d in class_dirs:
            for p in sorted(filter(_is_image, d.iterdir())):
                items.append(ImageItem(f"{d.name}/{p.name}", p, index.get(d.name, -1), names.get(d.name, d.name)))
    else:  # flat val/ + labels file
        if not labels_file:
            raise FileNotFoundError(f"{split_dir} holds flat files and no <synset>/ folders; pass data.labels_file="
                                    f"<'filename synset' lines or LOC_val_solution.csv>")
        labels = _read_labels(Path(labels_file).expanduser())
        for p in sorted(filter(_is_image, split_dir.iterdir())):
            synset = labels.get(p.stem)
            if synset is None:
                raise ValueError(f"{p.name} has no label in {labels_file}; the labels file must cover every image")
            items.append(ImageItem(p.name, p, index.get(synset, -1), names.get(synset, synset)))
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}")
    return items


def list_folder(root: str | Path) -> list[ImageItem]:
    """Every image under `root` (recursive, sorted); the parent folder's name is the class name, label -1."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.root=<folder of images>")
    items = [ImageItem(p.relative_to(root).as_posix(), p, -1, p.parent.name if p.parent != root else "")
             for p in sorted(filter(_is_image, root.rglob("*")))]
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return items


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to `resolution` (bicubic; PIL widens the filter when shrinking, i.e. antialiased),
    then take the centre square."""
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """uint8 [resolution, resolution, 3] RGB, or `UnreadableImage` naming the reason."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF / palette transparency; the pixels are fine
            with Image.open(path) as img:
                img.load()  # decodes now: a truncated file fails here, not later
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale, not clip, to 8 bits
                    img = Image.fromarray((np.asarray(img, np.float64) / 257).round().clip(0, 255).astype(np.uint8))
                if img.mode != "RGB":
                    img = img.convert("RGBA").convert("RGB") if "transparency" in img.info else img.convert("RGB")
                return np.asarray(resize_center_crop(img, resolution), dtype=np.uint8)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except Image.DecompressionBombError:  # more than 2 × Image.MAX_IMAGE_PIXELS: never decoded
        raise UnreadableImage(f"too large (over {2 * Image.MAX_IMAGE_PIXELS} pixels, PIL's decompression-bomb "
                              f"limit)") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).lower()
        raise UnreadableImage("truncated" if "truncat" in msg else f"decode error: {type(e).__name__}") from None


def try_load(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    """(image, None) or (None, reason): `load_image` for a process pool (one picklable argument)."""
    path, resolution = args
    try:
        return load_image(path, resolution), None
    except UnreadableImage as e:
        return None, str(e)
    except FileNotFoundError:
        return None, "missing"
