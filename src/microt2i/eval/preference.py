"""Pairwise preference: model A vs model B on the same prompts and noise seeds, judged per prompt (MicroDiT Fig. 12:
GPT-4o asked "which image do you prefer, Image A or Image B … or 'none'", image order shuffled against position bias,
win rates per prompt set and category).

`compare(prompts, images_a, images_b, judge)` shows each pair in a seeded random order, maps the judge's answer back
to the models and returns one row per prompt; `win_rates(rows)` gives A's and B's win rates and the tie rate with
Wilson score intervals, A's preference score (wins + ties/2) with a bootstrap interval over prompts, the rate at
which the first-shown image won (position bias) and per-category rates. Judges are callables
`judge(prompt, first, second, meta) -> "A" | "B" | "tie"` (A = the first-shown image):
- `WorldJudge`: rule-based on the embedded world (world/detect.py): the image whose detections match more of the
  prompt's scene objects (class and colour) wins, extra detections count against it;
- `TransformersJudge`: a `transformers` image-text-to-text VLM by hub id or folder, asked the paper's question; its
  answer is the most likely of the first tokens of "A", "B" and "none" (one forward pass, no free text to parse).
PartiPrompts / DrawBench are read from user-given files (`read_prompts`); none is shipped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from .runner import RunSampler, world_reference
from ..data.captions import read_text_utf8
from ..encoders.hub import resolve_pretrained
from ..world import detect

PAPER_QUESTION = ("Given the prompt '{prompt}', which image do you prefer, Image A or Image B, considering factors "
                  "like image details, quality, realism, and aesthetics? Respond with 'A' or 'B' or 'none' if neither "
                  "is preferred.")  # MicroDiT Fig. 12
VERDICTS = ("A", "B", "tie")


def read_prompts(path: str | Path) -> tuple[list[str], list[str]]:
    """(prompts, categories) of a prompt file: `.txt` (one per line), `.tsv` / `.csv` with a header naming the prompt
    column (PartiPrompts' `Prompt`, DrawBench's `Prompts`) and optionally `Category`, or `.jsonl` ({"prompt", …})."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist (PartiPrompts.tsv, DrawBench .csv, or a .txt "
                                f"with one prompt per line)")

    suffix, text = path.suffix.lower(), read_text_utf8(path)  # UTF-8 (BOM dropped), else file:line and the fix
    if suffix in (".tsv", ".csv"):
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
        names = list(rows[0]) if rows else []
        pc = next((c for c in names if c.strip().lower() in ("prompt", "prompts", "text", "caption")), None)
        if pc is None:
            raise ValueError(f"{path}: no prompt column (Prompt, Prompts, text) among {names}")
        cc = next((c for c in names if c.strip().lower() == "category"), None)
        pairs = [(r[pc].strip(), (r[cc] or "").strip() if cc else "") for r in rows if (r[pc] or "").strip()]
    elif suffix == ".jsonl":
        pairs = [(r["prompt"], r.get("category", "")) for r in map(json.loads, filter(str.strip, text.splitlines()))]
    else:
        pairs = [(ln.strip(), "") for ln in text.splitlines() if ln.strip()]
    if not pairs:
        raise ValueError(f"{path} holds no prompts")
    return [p for p, _ in pairs], [c for _, c in pairs]


# ----------------------------------------------------------------------------------------------------- harness


def compare(prompts, images_a, images_b, judge, *, seed: int = 0, metas=None, categories=None) -> list[dict]:
    """One row per prompt: {"prompt", "category", "a_first", "answer" (in shown order), "winner" ("A" | "B" | "tie"
    in model terms)}. Which model is shown first is a seeded coin per prompt."""
    n = len(prompts)
    if len(images_a) != n or len(images_b) != n:
        raise ValueError(f"compare needs one image per prompt from each model: {n} prompts, {len(images_a)} A images, "
                         f"{len(images_b)} B images")
    rng = np.random.default_rng([seed, 0x707265])
    a_first = rng.random(n) < 0.5
    rows = []
    for i, prompt in enumerate(prompts):
        first, second = (images_a[i], images_b[i]) if a_first[i] else (images_b[i], images_a[i])
        answer = judge(prompt, first, second, None if metas is None else metas[i])
        if answer not in VERDICTS:
            raise ValueError(f"judge {getattr(judge, 'name', judge)!r} answered {answer!r}; a judge returns A, B or tie")
        winner = answer if answer == "tie" or a_first[i] else {"A": "B", "B": "A"}[answer]
        rows.append({"prompt": prompt, "category": categories[i] if categories else "", "a_first": bool(a_first[i]),
                     "answer": answer, "winner": winner})
    return rows


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (Wilson 1927); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple:
    """Percentile bootstrap interval of the mean of `values` (resampling prompts with replacement)."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def win_rates(rows: list[dict], *, z: float = 1.96, n_boot: int = 2000, seed: int = 0) -> dict:
    """Win / tie rates with Wilson intervals, A's preference score with a bootstrap interval, position bias, and
    per-category rates (see the module docstring)."""
    n = len(rows)
    count = Counter(r["winner"] for r in rows)
    out: dict = {"n": n, "wins_a": count["A"], "wins_b": count["B"], "ties": count["tie"]}
    for key, k in (("a", count["A"]), ("b", count["B"]), ("tie", count["tie"])):
        lo, hi = wilson_interval(k, n, z)
        out |= {f"win_rate_{key}" if key != "tie" else "tie_rate": k / n if n else 0.0,
                f"{'win_rate_' + key if key != 'tie' else 'tie_rate'}_lo": lo,
                f"{'win_rate_' + key if key != 'tie' else 'tie_rate'}_hi": hi}
    score = np.array([{"A": 1.0, "B": 0.0, "tie": 0.5}[r["winner"]] for r in rows])
    lo, hi = bootstrap_interval(score, n_boot=n_boot, seed=seed)
    out |= {"score_a": float(score.mean()) if n else 0.5, "score_a_lo": lo, "score_a_hi": hi}
    decisive = [r for r in rows if r["answer"] != "tie"]
    out["first_shown_won"] = (sum(r["answer"] == "A" for r in decisive) / len(decisive)) if decisive else 0.0
    for cat in sorted({r["category"] for r in rows if r["category"]}):
        sub = [r for r in rows if r["category"] == cat]
        out[f"category/{cat}/win_rate_a"] = sum(r["winner"] == "A" for r in sub) / len(sub)
        out[f"category/{cat}/win_rate_b"] = sum(r["winner"] == "B" for r in sub) / len(sub)
    return out


# ------------------------------------------------------------------------------------------------------ judges


class WorldJudge:
    """Rule-based judge on the embedded world: meta is the prompt's Scene; score = objects matched (class and colour,
    each detection used once) − ½ · unmatched detections; the higher score wins, equal scores tie."""

    name = "world"

    @staticmethod
    def score(image: np.ndarray, scene) -> float:
        dets = [(d.cls, d.color) for d in detect(np.asarray(image))]
        matched = 0
        for obj in scene.objects:
            if (obj.cls, obj.color) in dets:
                dets.remove((obj.cls, obj.color))
                matched += 1
        return matched - 0.5 * len(dets)

    def __call__(self, prompt, first, second, meta) -> str:
        if meta is None or not hasattr(meta, "objects"):
            raise ValueError("the world judge needs each prompt's world scene (prompts drawn from the world); for a "
                             "prompt file use --judge <VLM hub id or folder>")
        a, b = self.score(first, meta), self.score(second, meta)
        return "A" if a > b else "B" if b > a else "tie"


class TransformersJudge:
    """A `transformers` VLM (AutoModelForImageTextToText + AutoProcessor with a chat template) asked `question` about
    two images; the verdict is the most likely first token among "A", "B" and "none"."""

    def __init__(self, model: str, *, question: str = PAPER_QUESTION, device=None, dtype=None):
        # heavy (seconds to import): only when this model is loaded
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        folder = resolve_pretrained(model, what="preference judge VLM")
        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).to(device).eval()
        tok = self.processor.tokenizer
        self.ids = {v: tok.encode(word, add_special_tokens=False)[0] for v, word in
                    (("A", "A"), ("B", "B"), ("tie", "none"))}
        if len(set(self.ids.values())) < 3:
            raise ValueError(f"{model}: its tokenizer maps A, B and none to the same tokens {self.ids}; it cannot "
                             f"serve as a preference judge")
        self.question, self.device, self.name = question, device, f"vlm:{model}"

    def inputs(self, prompt: str, first, second) -> dict:
        conv = [{"role": "user", "content": [{"type": "text", "text": "Image A:"}, {"type": "image"},
                                             {"type": "text", "text": "Image B:"}, {"type": "image"},
                                             {"type": "text", "text": self.question.format(prompt=prompt)}]}]
        text = self.processor.apply_chat_template(conv, add_generation_prompt=True)
        images = [Image.fromarray(np.asarray(im)) for im in (first, second)]
        return self.processor(text=[text], images=[images], return_tensors="pt").to(self.device)

    def probabilities(self, prompt: str, first, second) -> dict[str, float]:
        with torch.inference_mode():
            logits = self.model(**self.inputs(prompt, first, second)).logits[0, -1].float()
        p = torch.softmax(logits[list(self.ids.values())], 0)
        return dict(zip(self.ids, p.tolist()))

    def __call__(self, prompt, first, second, meta=None) -> str:
        p = self.probabilities(prompt, first, second)
        return max(p, key=p.get)


def get_judge(spec: str = "world", device=None):
    return WorldJudge() if spec == "world" else TransformersJudge(spec, device=device)


# ------------------------------------------------------------------------ suite for eval/runner.py's protocol


def suite_preference(sampler, n, seed, against=None, judge="world", prompts=None, **_):
    """`microt2i eval preference RUN_A --against RUN_B`: both runs sample the same prompts with the same noise
    seeds; the judge compares each pair. World scenes by default (the world judge needs them), or a prompt file."""
    if not against:
        raise ValueError("eval preference needs --against <run folder B> (the run in run_dir is model A)")
    other = RunSampler.from_run(against, device=sampler.device, steps=sampler.steps, cfg_scale=sampler.cfg_scale,
                                batch_size=sampler.batch_size)
    if prompts:
        texts, cats = read_prompts(prompts)
        texts, cats, metas = texts[:n], cats[:n], None
        if judge == "world":
            raise ValueError("the world judge scores world scenes; with --prompts pass --judge <VLM id or folder>")
    else:
        _, texts, metas, _ = world_reference(sampler.cfg, n)
        cats = [f"{len(s.objects)} object{'s' * (len(s.objects) > 1)}" for s in metas]
    images_a, images_b = sampler(texts, seed=seed), other(texts, seed=seed)
    j = get_judge(judge, device=sampler.device)
    rows = compare(texts, images_a, images_b, j, seed=seed, metas=metas, categories=cats)
    metrics = win_rates(rows, seed=seed) | {"judge": getattr(j, "name", str(judge)), "model_a": "run_dir",
                                            "model_b": str(against)}
    pairs = np.stack([im for pair in zip(images_a[:32], images_b[:32]) for im in pair])  # A, B side by side
    return metrics, [{k: r[k] for k in ("prompt", "category", "a_first", "winner")} for r in rows[:400]], pairs
