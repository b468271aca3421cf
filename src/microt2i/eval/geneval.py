"""GenEval (Ghosh et al. 2023, djghosh13/geneval) with its exact prompt generator and scoring rules.

Implemented from the protocol written down in `reference/evaluation.md` §1 (no code copied):
- prompts (§1.1): six tags, one `np.random.default_rng(seed)` drawn in a fixed order, de-duplicated by content.
  `make_prompts(COCO_CLASSES, GENEVAL_COLORS, seed=43)` gives the official 553 records in the official order.
  "person" is never coloured (the official generator skips class 0, which is "person"); class lists without
  "person" (the world's shapes) colour every class.
- detections (§1.2): per class, score > 0.3 (> 0.9 for counting prompts), at most 16, optional greedy NMS.
- scoring (§1.3): include = at least `count` (the top-`count` detections are colour- and position-checked),
  exclude = fewer than `count`, so counting means exactly n; position by `relative_position` with τ = 0.1.
- summary (§1.5): per tag the mean over images; overall = unweighted mean of the tags.
- layout (§1.1): `<root>/<index:05d>/metadata.jsonl` + `samples/<k:04d>.png`, 4 images per prompt.

Detectors (the world's rule-based one, a transformers instance-segmentation model) live in `detectors.py`; the
last section here builds ground-truth world scenes for a record (the oracle that must score 1.0).
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text
from PIL import Image

# prompts/object_names.txt: the 80 COCO classes in COCO order, with GenEval's names for mouse, remote, keyboard
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
GENEVAL_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                                   "white")
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
UNCOLORED = "person"  # the official generator never asks for a coloured person


# ---------------------------------------------------------------------------------------------------- prompts


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def make_prompts(classes: Sequence[str] = COCO_CLASSES, colors: Sequence[str] = GENEVAL_COLORS, seed: int = 43,
                 n: int = 100) -> list[dict]:
    """GenEval metadata records (§1.1): every class once as a single object, then `n` draws for each other tag.

    One generator is consumed in this exact order: a permutation of the classes; per two_object draw two distinct
    classes; per counting draw a class then n ∈ {2, 3, 4}; per colors draw a class (not "person") then a colour;
    per position two distinct classes then a relation; per color_attr two distinct classes (not "person") then
    two distinct colours. Duplicates (same content) are dropped, keeping the first.
    """
    classes, colors = list(classes), list(colors)
    colorable = [c for c in classes if c != UNCOLORED]
    if len(set(classes)) != len(classes) or len(set(colors)) != len(colors):
        raise ValueError("make_prompts: classes and colors must not contain duplicates")
    if len(colorable) < 2 or len(colors) < 2:
        raise ValueError(f"make_prompts needs >= 2 classes (besides {UNCOLORED!r}) and >= 2 colours; got "
                         f"{len(classes)} classes and {len(colors)} colours")
    rng = np.random.default_rng(seed)
    one = lambda cls, **extra: {"class": cls, "count": 1, **extra}  # noqa: E731
    records = []
    for i in rng.choice(len(classes), size=len(classes), replace=False):
        records.append({"tag": "single_object", "include": [one(classes[i])],
                        "prompt": f"a photo of {with_article(classes[i])}"})
    for _ in range(n):
        a, b = (classes[i] for i in rng.choice(len(classes), size=2, replace=False))
        records.append({"tag": "two_object", "include": [one(a), one(b)],
                        "prompt": f"a photo of {with_article(a)} and {with_article(b)}"})
    for _ in range(n):
        a = classes[rng.choice(len(classes))]
        k = int(rng.integers(2, 4, endpoint=True))
        records.append({"tag": "counting", "include": [{"class": a, "count": k}],
                        "exclude": [{"class": a, "count": k + 1}], "prompt": f"a photo of {NUMBERS[k]} {plural(a)}"})
    for _ in range(n):
        a = colorable[rng.choice(len(colorable))]
        c = colors[rng.choice(len(colors))]
        records.append({"tag": "colors", "include": [one(a, color=c)], "prompt": f"a photo of {with_article(c)} {a}"})
    for _ in range(n):
        a, b = (classes[i] for i in rng.choice(len(classes), size=2, replace=False))
        rel = RELATIONS[rng.choice(len(RELATIONS))]
        # "a photo of A rel B": B (clause 0) is the target of A's position clause
        records.append({"tag": "position", "include": [one(b), one(a, position=[rel, 0])],
                        "prompt": f"a photo of {with_article(a)} {rel} {with_article(b)}"})
    for _ in range(n):
        a, b = (colorable[i] for i in rng.choice(len(colorable), size=2, replace=False))
        ca, cb = (colors[i] for i in rng.choice(len(colors), size=2, replace=False))
        records.append({"tag": "color_attr", "include": [one(a, color=ca), one(b, color=cb)],
                        "prompt": f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}"})
    seen, unique = set(), []
    for r in records:
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def write_prompts(records: Sequence[dict], folder: str | Path) -> Path:
    """`evaluation_metadata.jsonl` (one record per line) and `generation_prompts.txt`, as the official repo ships."""
    folder = Path(folder)
    atomic_write_text(folder / "evaluation_metadata.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(folder / "generation_prompts.txt", "".join(r["prompt"] + "\n" for r in records))
    return folder / "evaluation_metadata.jsonl"


def read_metadata(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GenEval metadata {p} does not exist; write one with `make_prompts` + `write_prompts`")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ detections


@dataclass
class GenEvalObject:
    """One detection: class, box [x1, y1, x2, y2] in pixels (y down), score, and colour when the detector knows it."""

    cls: str
    box: tuple[float, float, float, float]
    score: float
    color: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Thresholds:
    """§1.2 defaults (tuned by GenEval for Mask2Former); a detector may ship its own calibrated values."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # greedy per-class NMS IoU; 1.0 disables it
    position_threshold: float = 0.1


def box_iou(a, b) -> float:
    """IoU with the +1 pixel-area convention of the reference NMS."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def filter_detections(objects: Iterable[GenEvalObject], tag: str, thresholds: Thresholds = Thresholds()
                      ) -> dict[str, list[GenEvalObject]]:
    """Class → detections, most confident first: score threshold (stricter for counting), cap, optional NMS."""
    cut = thresholds.counting_threshold if tag == "counting" else thresholds.threshold
    by_class: dict[str, list[GenEvalObject]] = defaultdict(list)
    for obj in sorted(objects, key=lambda o: -o.score):
        by_class[obj.cls].append(obj)
    out = {}
    for cls, objs in by_class.items():
        queue = [o for o in objs if o.score > cut][:thresholds.max_objects]
        kept = []
        while queue:
            best = queue.pop(0)
            kept.append(best)
            if thresholds.max_overlap < 1:
                queue = [o for o in queue if box_iou(best.box, o.box) < thresholds.max_overlap]
        if kept:
            out[cls] = kept
    return out


# ------------------------------------------------------------------------------------------------------ rules


def relative_position(box_a, box_b, threshold: float = 0.1) -> set[str]:
    """Relations of box A to box B (§1.3): offsets shrunk by τ·(size_A + size_B) per axis, normalised by the
    original offset's length; a relation holds beyond 0.5. Too-close boxes have none; diagonal ones have two."""
    a, b = np.asarray(box_a[:4], np.float64), np.asarray(box_b[:4], np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    size = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    r = np.sign(offset) * np.maximum(np.abs(offset) - threshold * size, 0)
    if np.all(np.abs(r) < 1e-3):
        return set()
    dx, dy = r / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def score_image(metadata: dict, detections: dict[str, list[GenEvalObject]], *, position_threshold: float = 0.1,
                color_of: Callable[[GenEvalObject], str] | None = None) -> tuple[bool, str]:
    """(correct, reason) of one image (§1.3). `detections` comes from `filter_detections`; `color_of` names an
    object's colour (default: the detector's `obj.color`). Each failure line starts with the clause kind that
    failed: "count:", "color:", "position:" or "exclude:"."""
    color_of = color_of or (lambda obj: obj.color)
    matched: list[list[GenEvalObject] | None] = []
    reasons = []
    for clause in metadata["include"]:
        cls, count = clause["class"], clause["count"]
        found = detections.get(cls, [])[:count]
        ok = len(found) >= count
        if not ok:
            reasons.append(f"count: expected {cls}>={count}, found {len(found)}")
        if ok and "color" in clause:
            colors = [color_of(obj) for obj in found]
            if sum(c == clause["color"] for c in colors) < count:
                ok = False
                reasons.append(f"color: expected {clause['color']} {cls}>={count}, found "
                               + ", ".join(f"{c} {cls}" for c in colors))
        if ok and "position" in clause:
            rel, target = clause["position"]
            if matched[target] is None:
                ok = False
                reasons.append(f"position: no target for {cls} to be {rel}")
            else:
                for obj in found:
                    bad = next((rels for t in matched[target]
                                if rel not in (rels := relative_position(obj.box, t.box, position_threshold))), None)
                    if bad is not None:
                        ok = False
                        reasons.append(f"position: expected {cls} {rel} target, found "
                                       f"{' and '.join(sorted(bad)) or 'no relation'}")
                        break
        matched.append(found if ok else None)
    for clause in metadata.get("exclude", []):
        n = len(detections.get(clause["class"], []))
        if n >= clause["count"]:
            reasons.append(f"exclude: expected {clause['class']}<{clause['count']}, found {n}")
    return not reasons, "\n".join(reasons)


# -------------------------------------------------------------------------------------- evaluation and summary


def evaluate_images(records: Sequence[dict], images: Sequence[Sequence[np.ndarray]], detector,
                    thresholds: Thresholds | None = None, filenames: Sequence[Sequence[str]] | None = None
                    ) -> list[dict]:
    """results.jsonl rows (§1.5 fields) for images[i][k] generated from records[i], judged by `detector`."""
    if len(records) != len(images):
        raise ValueError(f"{len(records)} metadata records but images for {len(images)} prompts")
    thr = thresholds or detector.thresholds
    rows = []
    for i, (record, group) in enumerate(zip(records, images)):
        for k, image in enumerate(group):
            dets = filter_detections(detector.detect(image), record["tag"], thr)
            correct, reason = score_image(record, dets, position_threshold=thr.position_threshold,
                                          color_of=lambda obj, im=image: detector.color(im, obj))
            details = {cls: [[*map(float, o.box), float(o.score)] for o in objs] for cls, objs in dets.items()}
            rows.append({"filename": filenames[i][k] if filenames else f"{i:05d}/samples/{k:04d}.png",
                         "tag": record["tag"], "prompt": record["prompt"], "correct": correct, "reason": reason,
                         "metadata": json.dumps(record), "details": json.dumps(details)})
    return rows


def summarize(rows: Sequence[dict]) -> dict:
    """Per-tag accuracy over images, overall = unweighted mean over the tags present (§1.5), plus the side numbers
    "% correct images" and "% correct prompts" (a prompt is correct if any of its images is)."""
    if not rows:
        raise ValueError("no GenEval results to summarise")
    per_tag: dict[str, list[bool]] = defaultdict(list)
    per_prompt: dict[str, bool] = defaultdict(bool)
    for r in rows:
        per_tag[r["tag"]].append(bool(r["correct"]))
        per_prompt[r["metadata"]] |= bool(r["correct"])
    tags = {t: {"score": float(np.mean(v)), "images": len(v)} for t in TAGS if (v := per_tag.get(t))}
    return {"overall": float(np.mean([t["score"] for t in tags.values()])), "tags": tags,
            "images_correct": float(np.mean([bool(r["correct"]) for r in rows])),
            "prompts_correct": float(np.mean(list(per_prompt.values()))), "images": len(rows),
            "prompts": len(per_prompt)}


def format_table(summary: dict) -> str:
    lines = [f"{'tag':<14} {'score':>6} {'images':>7}"]
    lines += [f"{tag:<14} {s['score']:>6.3f} {s['images']:>7d}" for tag, s in summary["tags"].items()]
    lines.append(f"{'overall':<14} {summary['overall']:>6.3f} {summary['images']:>7d}")
    lines.append(f"(correct images {summary['images_correct']:.3f}, correct prompts {summary['prompts_correct']:.3f}"
                 f" of {summary['prompts']})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the folder layout


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_layout(root: str | Path, records: Sequence[dict], images: Sequence[Sequence[np.ndarray]]) -> Path:
    """`<root>/<i:05d>/metadata.jsonl` + `samples/<k:04d>.png` for record i and its images (PNG, never JPEG)."""
    root = Path(root)
    for i, (record, group) in enumerate(zip(records, images, strict=True)):
        folder = root / f"{i:05d}"
        for k, image in enumerate(group):
            atomic_write_bytes(folder / "samples" / f"{k:04d}.png", _png(image))
        atomic_write_text(folder / "metadata.jsonl", json.dumps(record) + "\n")
    return root


def read_layout(root: str | Path) -> tuple[list[dict], list[list[np.ndarray]], list[list[str]]]:
    """(records, images, file names) of a GenEval image folder: digit-named folders, `\\d+.png` samples."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"{root} holds no GenEval prompt folders (<index:05d>/metadata.jsonl + samples/); "
                                f"generate them with `microt2i eval geneval <run_dir>`")
    records, images, names = [], [], []
    for folder in folders:
        records.append(json.loads((folder / "metadata.jsonl").read_text().splitlines()[0]))
        files = sorted(p for p in (folder / "samples").iterdir() if re.fullmatch(r"\d+\.png", p.name))
        images.append([np.asarray(Image.open(p).convert("RGB")) for p in files])
        names.append([str(p.relative_to(root)) for p in files])
    return records, images, names
