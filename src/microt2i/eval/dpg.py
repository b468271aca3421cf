"""DPG-Bench (ELLA's `dpg_bench`): dense prompts, a question graph per prompt, DSG dependency zeroing
(`reference/evaluation.md` §2, §8.2). Implemented from the written protocol:

- the question graph is DPG's CSV (`item_id, text, keywords, proposition_id, dependency, category_broad,
  category_detailed, tuple, question_natural_language`); every row is read — the reference's `if i == 0:
  continue` that drops the first row (ELLA issue #61) is deliberately not reproduced;
- each of the 4 images of a prompt (a 2×2 tiled image in the reference layout) is asked every question; an answer
  scores 1 iff it is "yes";
- DSG rule: walking the propositions in order, a question whose parent (≠ 0) scored 0 scores 0;
- **DPG score** = 100 × mean over prompts of mean over tiles of mean over questions (with dependencies);
- **category scores** = 100 × mean of the *raw* answers of every question of that category (L1 = entity,
  attribute, relation, global, other; L2 = e.g. attribute-color) over all tiles; the reference used the last
  tile only, reported as `categories_last_tile`. Raw category numbers run higher than the overall score.

On the world, questions come from scene specs (entity, colour, count, spatial relation; no global question, the
detector cannot judge backgrounds) and the world's detector answers them; a `transformers` VQA model by id
answers natural-language questions on real prompts.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from .detectors import WorldDetector
from .geneval import relative_position
from ..encoders.hub import resolve_pretrained
from ..world.scenes import relation

CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
               "tuple", "question_natural_language")


@dataclass(frozen=True)
class Question:
    item_id: str
    proposition_id: int
    dependency: tuple[int, ...]  # parent proposition ids; () for a root (0 in the CSV)
    tuple: str  # e.g. "attribute - color (truck, red)"
    text: str  # the natural-language question

    @property
    def category(self) -> str:
        """L1: the tuple's text before "(" and then before "-"."""
        return self.tuple.split("(")[0].split("-")[0].strip()

    @property
    def subcategory(self) -> str:
        """L2: e.g. "entity-whole", "relation-spatial", or "global"."""
        return "-".join(p.strip() for p in self.tuple.split("(")[0].split("-") if p.strip())


def read_questions(path: str | Path) -> tuple[dict[str, str], dict[str, list[Question]]]:
    """(item → prompt, item → questions in proposition order) from a DPG-Bench / DSG CSV, first row included."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"DPG question file {p} does not exist; pass DPG-Bench's dpg_bench.csv (or a DSG CSV "
                                f"with the columns {', '.join(CSV_COLUMNS)})")
    prompts: dict[str, str] = {}
    questions: dict[str, list[Question]] = defaultdict(list)
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{p} lacks the DPG columns {sorted(missing)}; expected {', '.join(CSV_COLUMNS)}")
        for row in reader:
            deps = tuple(int(d) for d in str(row["dependency"]).replace(" ", "").split(",") if d and d != "0")
            q = Question(row["item_id"], int(row["proposition_id"]), deps, row["tuple"],
                         row["question_natural_language"])
            prompts.setdefault(q.item_id, row["text"])
            questions[q.item_id].append(q)
    return prompts, {k: sorted(v, key=lambda q: q.proposition_id) for k, v in questions.items()}


def apply_dependencies(questions: Sequence[Question], raw: dict[int, float]) -> dict[int, float]:
    """DSG zeroing: in proposition order, a question whose parent scored 0 scores 0 (so zeros run down chains)."""
    out = dict(raw)
    for q in sorted(questions, key=lambda q: q.proposition_id):
        if any(out.get(parent, 1.0) == 0 for parent in q.dependency):
            out[q.proposition_id] = 0.0
    return out


def split_tiles(image: np.ndarray, n: int = 4) -> list[np.ndarray]:
    """The reference's `--pic-num 4`: a √n × √n tiled image → n tiles, row by row."""
    side = int(round(n ** 0.5))
    if side * side != n or image.shape[0] % side or image.shape[1] % side:
        raise ValueError(f"cannot cut a {image.shape[1]}×{image.shape[0]} image into {n} equal tiles")
    h, w = image.shape[0] // side, image.shape[1] // side
    return [image[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(side) for c in range(side)]


def tile_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """n equal images → one √n × √n image (the reference's generation layout)."""
    side = int(round(len(images) ** 0.5))
    if side * side != len(images):
        raise ValueError(f"{len(images)} images do not tile a square")
    return np.concatenate([np.concatenate(images[r * side:(r + 1) * side], 1) for r in range(side)], 0)


def score(questions: dict[str, list[Question]], images: dict[str, Sequence[np.ndarray]],
          answer: Callable[[np.ndarray, Question], bool]) -> dict:
    """DPG score (with dependencies) and raw category scores of `images[item]` (the tiles of each prompt)."""
    missing = set(questions) - set(images)
    if missing:
        raise ValueError(f"no images for {len(missing)} DPG item(s), e.g. {sorted(missing)[:3]}")
    per_item, rows = {}, []
    by_cat: dict[str, list[float]] = defaultdict(list)
    by_cat_last: dict[str, list[float]] = defaultdict(list)
    for item, qs in questions.items():
        tiles = list(images[item])
        tile_scores = []
        for t, tile in enumerate(tiles):
            raw = {q.proposition_id: float(bool(answer(tile, q))) for q in qs}
            adjusted = apply_dependencies(qs, raw)
            tile_scores.append(float(np.mean(list(adjusted.values()))))
            for q in qs:
                for key in (q.category, q.subcategory):
                    by_cat[key].append(raw[q.proposition_id])
                    if t == len(tiles) - 1:
                        by_cat_last[key].append(raw[q.proposition_id])
                rows.append({"item_id": item, "tile": t, "proposition_id": q.proposition_id, "tuple": q.tuple,
                             "question": q.text, "raw": raw[q.proposition_id], "score": adjusted[q.proposition_id]})
        per_item[item] = float(np.mean(tile_scores))
    pct = lambda d: {k: 100 * float(np.mean(v)) for k, v in sorted(d.items())}  # noqa: E731
    return {"dpg_score": 100 * float(np.mean(list(per_item.values()))), "categories": pct(by_cat),
            "categories_last_tile": pct(by_cat_last), "items": len(per_item),
            "tiles": sum(len(images[i]) for i in questions), "per_item": per_item, "rows": rows}


# ------------------------------------------------------------------------------------------------- the world


def world_questions(scene, item_id: str) -> list[Question]:
    """DSG-style questions that are true of `scene`: one entity per class, then colour, count and the spatial
    relation of every secondary object to the main one (as the long caption states it), each depending on its
    entities."""
    out: list[Question] = []
    entity: dict[str, int] = {}

    def add(tup: str, text: str, deps: tuple[int, ...] = ()):
        out.append(Question(item_id, len(out) + 1, deps, tup, text))
        return len(out)

    for o in scene.objects:
        if o.cls not in entity:
            entity[o.cls] = add(f"entity - whole ({o.cls})", f"Is there a {o.cls}?")
    for o in scene.objects:
        add(f"attribute - color ({o.cls}, {o.color})", f"Is there a {o.color} {o.cls}?", (entity[o.cls],))
    counts = defaultdict(int)
    for o in scene.objects:
        counts[o.cls] += 1
    for cls, n in counts.items():
        if n > 1:
            add(f"other - count ({cls}, =={n})", f"Are there exactly {n} {cls}s?", (entity[cls],))
    main = scene.main
    for o in scene.objects[1:]:
        rel = relation(o, main)
        add(f"relation - spatial ({o.cls}, {main.cls}, {rel})", f"Is the {o.cls} {rel} the {main.cls}?",
            (entity[o.cls], entity[main.cls]))
    return out


def _args(q: Question) -> list[str]:
    return [a.strip() for a in q.tuple.split("(", 1)[1].rsplit(")", 1)[0].split(",")]


def _holds(relation: str, box_a, box_b) -> bool:
    """A caption relation ("to the left of", "above", ...) between detected boxes: GenEval's `relative_position`
    without its dead zone, i.e. the centre offset points within 60° of the relation's axis. The caption states
    the dominant axis of the true centres (≥ 45° from the other axis), so small box-centre shifts keep it true."""
    return relation.removeprefix("to the ") in relative_position(box_a, box_b, threshold=0.0)


class WorldVQA:
    """Answers world questions from the world detector's objects (`answer(image, question) -> bool`)."""

    def __init__(self):
        self.detector = WorldDetector()
        self._cache: tuple[bytes, list] | None = None

    def _objects(self, image: np.ndarray):
        key = np.ascontiguousarray(image).tobytes()
        if self._cache is None or self._cache[0] != key:  # one detection per tile, however many questions
            cut = self.detector.thresholds.threshold
            self._cache = (key, [o for o in self.detector.detect(image) if o.score > cut])
        return self._cache[1]

    def __call__(self, image: np.ndarray, q: Question) -> bool:
        objs, args = self._objects(image), _args(q)
        of = lambda cls: [o for o in objs if o.cls == cls]  # noqa: E731
        if q.subcategory == "entity-whole":
            return bool(of(args[0]))
        if q.subcategory == "attribute-color":
            return any(o.color == args[1] for o in of(args[0]))
        if q.subcategory == "other-count":
            return len(of(args[0])) == int(args[1].lstrip("="))
        if q.subcategory == "relation-spatial":
            pairs = ((a, b) for a in of(args[0]) for b in of(args[1]) if a is not b)
            return any(_holds(args[2], a.box, b.box) for a, b in pairs)
        raise ValueError(f"the world VQA cannot answer {q.tuple!r}; world questions come from `world_questions`")


class TransformersVQA:
    """A `transformers` visual-question-answering model by hub id or folder: a classifier over answers (ViLT) or a
    generator (BLIP). Yes iff the answer is exactly "yes" (the reference's rule for mPLUG)."""

    def __init__(self, spec: str, device="cpu"):
        # heavy (seconds to import): only when this model is loaded
        from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

        folder = resolve_pretrained(spec, what="VQA model")
        self.name, self.device = spec, torch.device(device)
        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = AutoModelForVisualQuestionAnswering.from_pretrained(
            folder, use_safetensors=True).eval().to(self.device)

    def answer_text(self, image: np.ndarray, question: str) -> str:
        inputs = self.processor(images=Image.fromarray(np.asarray(image, np.uint8)), text=question,
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            if self.model.can_generate():
                ids = self.model.generate(**inputs, max_new_tokens=8)
                return self.processor.decode(ids[0], skip_special_tokens=True)
            return self.model.config.id2label[int(self.model(**inputs).logits[0].argmax())]

    def __call__(self, image: np.ndarray, q: Question) -> bool:
        return self.answer_text(image, q.text).strip().lower() == "yes"
