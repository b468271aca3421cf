"""`microt2i eval fid|fd|kid|prdc|clipscore|geneval|dpg <run_dir>`: sample a finished run, score, write JSON + HTML.

Every suite samples with the run's EMA weights and its `eval` settings (sampler, steps, CFG) unless overridden,
with per-image seeds: image j of a call uses the noise of (seed, j) (`diffusion.generate.initial_noise`), so results do not
depend on the batch size. Results go to `<run_dir>/eval/<metric>/` as `results.json` + `report.html` (+ the
GenEval folder layout and `results.jsonl`), always with N, the feature space and the sampler settings.

Reference sets (`eval/references.py`): ImageNet val, any image folder, an image + caption set, or the world. On
the world they are held-out scenes: `make_dataset(n, seed=REFERENCE_SEED)` with the run's resolution,
caption kind and object count — training draws items from (data.seed, i), never from this seed. The generated set
is sampled from the same captions (as COCO-30k FID samples COCO captions).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
from .references import REFERENCE_SEED, world_reference
from . import geneval
import torch
from . import dpg
from .clipscore import clip_cosines, summarize_clip
from .detectors import DEFAULT_COLOR_MODEL, WorldDetector, get_detector
from .distribution import frechet_distance, kid, prdc
from .features import cached_features, get_extractor
from .pages import save_grid, write_report
from .references import make_reference
from ..data.store import cache_root
from ..diffusion.generate import generate
from ..encoders import TextEncoder, codec_of
from ..encoders.clip import DEFAULT_MODEL, load_image_text_model
from ..encoders.extender import make_extender
from ..train.artifacts import load_run
from ..world import CLASSES, COLORS

GENEVAL_SEED = 42  # the official generation seed (diffusers_generate.py)


@dataclass
class RunSampler:
    """Prompts → uint8 images from a network, a config, its text encoder and codec; the embeddings of every prompt
    list it was called with are kept (in-training eval asks the same three lists again and again)."""

    net: object
    cfg: object
    text: object
    codec: object
    null_tokens: object
    null_mask: object
    device: object = "cpu"
    steps: int | None = None
    cfg_scale: float | None = None
    batch_size: int = 64
    progress: bool = False  # progress.py lines / bar per sampling call
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_run(cls, run_dir: str | Path, device="cpu", **opts) -> RunSampler:
        cfg, net, null_tokens, null_mask = load_run(run_dir, device=device)
        text = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device)
        return cls(net, cfg, text, codec_of(cfg.data, device=device), null_tokens, null_mask, device, **opts)

    def settings(self) -> dict:
        e = self.cfg.eval
        return {"sampler": e.sampler, "steps": self.steps or e.steps,
                "cfg_scale": e.cfg_scale if self.cfg_scale is None else self.cfg_scale}

    def __call__(self, prompts: list[str], *, seed: int, first_index: int = 0) -> np.ndarray:
        """Image j of the list uses the noise of (seed, first_index + j): a long list sampled in chunks (with their
        offsets) gives the images of one call."""
        key = tuple(prompts)
        emb = self._cache.get(key)
        if emb is None:
            emb = self.text.encode(list(prompts))
            if len(prompts) <= 1024:  # the small lists asked again and again; never a 50k-prompt reference
                self._cache[key] = emb
        with torch.no_grad():
            return generate(self.net, self.cfg, emb.tokens, emb.mask, self.null_tokens, self.null_mask,
                            codec=self.codec, steps=self.steps, cfg_scale=self.cfg_scale, seed=seed,
                            batch_size=self.batch_size, device=self.device, first_index=first_index,
                            progress=self.progress, desc="eval")

    def stream(self, prompts: list[str], *, seed: int, consume, keep: int = 64, chunk: int = 1000) -> np.ndarray:
        """Sample one image per prompt in chunks, hand each chunk to `consume` (features, scores) and return only
        the first `keep` images, so N = 50k never sits in memory. Chunks hold whole batches, so even DDIM with
        eta > 0 (fresh noise seeded per batch) gives the images of one call."""
        chunk = max(1, chunk // self.batch_size) * self.batch_size
        kept: list[np.ndarray] = []
        for start in range(0, len(prompts), chunk):
            images = self(prompts[start:start + chunk], seed=seed, first_index=start)
            consume(images, start)
            kept.extend(images[:max(0, keep - len(kept))])
        return np.stack(kept)


# ------------------------------------------------------------------------------------------ world reference sets


def reference_features(cfg, n: int, extractor, seed: int = REFERENCE_SEED) -> tuple[np.ndarray, list[str]]:
    """Features of the world reference set (cached under the data cache root) and its captions."""
    images, captions, _, spec = world_reference(cfg, n, seed)
    return cached_features(extractor, spec, lambda: images, cache_root(cfg.data)), captions


def world_geneval_records(n: int = 100, per_tag: int | None = None, seed: int = 43) -> list[dict]:
    """GenEval records on the world's classes and colours; `per_tag` keeps the first records of each tag."""
    records = geneval.make_prompts(CLASSES, list(COLORS), seed=seed, n=n)
    if per_tag is None:
        return records
    kept, seen = [], Counter()
    for r in records:
        seen[r["tag"]] += 1
        if seen[r["tag"]] <= per_tag:
            kept.append(r)
    return kept


def run_geneval(sampler: RunSampler, records: list[dict], detector, *, images_per_prompt: int = 4,
                seed: int = GENEVAL_SEED, prompts: list[str] | None = None
                ) -> tuple[dict, list[dict], list[list[np.ndarray]]]:
    """(summary, results rows, images per record): image j of record i is sample i·k + j of one seeded call.
    `prompts` (one per record, e.g. extended ★ prompts) are what the model sees; scoring stays on the records."""
    k = images_per_prompt
    extended = prompts is not None
    if extended and len(prompts) != len(records):
        raise ValueError(f"{len(prompts)} generation prompts for {len(records)} GenEval records; pass one per record")
    prompts = prompts if extended else [r["prompt"] for r in records]
    flat = sampler([p for p in prompts for _ in range(k)], seed=seed)
    images = [list(flat[i * k:(i + 1) * k]) for i in range(len(records))]
    rows = geneval.evaluate_images(records, images, detector)
    if extended:  # rows run record by record, k images each
        for j, row in enumerate(rows):
            row["generation_prompt"] = prompts[j // k]
    return geneval.summarize(rows), rows, images


def mini_geneval(net, cfg, text, codec, null_tokens, null_mask, *, per_tag: int = 4, device="cpu") -> dict:
    """{"geneval": overall, "geneval/<tag>": score}: the first `per_tag` world prompts of each tag, one image each."""
    sampler = RunSampler(net, cfg, text, codec, null_tokens, null_mask, device)
    records = world_geneval_records(n=per_tag, per_tag=per_tag)
    summary, _, _ = run_geneval(sampler, records, WorldDetector(), images_per_prompt=1, seed=cfg.eval.seed)
    return {"geneval": summary["overall"], **{f"geneval/{t}": s["score"] for t, s in summary["tags"].items()}}


# ------------------------------------------------------------------------------------------------------ suites


# features each metric uses on a real reference by default (ImageNet-T2I Table 1: FID Inception, FD-DINOv2 and PRDC
# on DINOv2); on the world the shipped EfficientNet-Lite0, which needs no download
REAL_FEATURES = {"fid": "inception", "kid": "inception", "fd": "dinov2", "prdc": "dinov2"}


def _reference(sampler, n, reference=None, captions=None, labels_file=None, **_):
    return make_reference(reference, sampler.cfg, n=n, captions=captions, labels_file=labels_file,
                          world_n=DEFAULT_N["fid"])


def _n_fields(ref) -> dict:
    """N and the reference, written next to every number (compare only at equal N and reference)."""
    return {"n": ref.n, **({"n_paper": ref.paper_n} if ref.paper_n else {}), "reference": ref.label}


def _real_and_fake(sampler, ref, extractor, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    real = ref.features(extractor, cache_root(sampler.cfg.data))
    fake: list[np.ndarray] = []
    grid = sampler.stream(ref.prompts, seed=seed, consume=lambda images, _: fake.append(extractor(images)))
    return real, np.concatenate(fake), grid


def _extractor(sampler, metric, ref, features, weights, resize):
    name = features or ("effnet-lite0" if ref.kind == "world" else REAL_FEATURES[metric])
    return get_extractor(name, weights, device=sampler.device, resize=resize)


def _fd_kid(sampler, n, features, weights, seed, metric="fid", resize=None, **opts):
    ref = _reference(sampler, n, **opts)
    ext = _extractor(sampler, metric, ref, features, weights, resize)
    real, fake, grid = _real_and_fake(sampler, ref, ext, seed)
    k = kid(real, fake, subset_size=min(1000, ref.n))
    metrics = {ext.metric_name: frechet_distance(real, fake), "KID": k["kid"], "KID_std": k["kid_std"],
               "n_real": len(real), "n_fake": len(fake), "features": ext.key, **_n_fields(ref)}
    return metrics, [], grid


def _prdc(sampler, n, features, weights, seed, k=3, splits=5, resize=None, **opts):
    """PRDC at the ImageNet-T2I authors' defaults: k = 3 over 5 equal splits, DINOv2 features on a real reference
    (`reference/evaluation.md` §4, DiffEvals `calculate_prdc(k=3, prdc_splits=5)`)."""
    ref = _reference(sampler, n, **opts)
    ext = _extractor(sampler, "prdc", ref, features, weights, resize)
    real, fake, grid = _real_and_fake(sampler, ref, ext, seed)
    return prdc(real, fake, k=k, splits=splits) | {"features": ext.key, **_n_fields(ref)}, [], grid


def _clipscore(sampler, n, seed, model=None, **opts):
    clip = load_image_text_model(model or DEFAULT_MODEL, device=sampler.device)
    ref = _reference(sampler, n, **opts)
    parts = []
    grid = sampler.stream(ref.prompts, seed=seed, consume=lambda images, start: parts.append(
        clip_cosines(images, ref.prompts[start:start + len(images)], clip)))
    rows = [{"caption": c} for c in ref.prompts[:50]]
    return summarize_clip(parts, clip) | _n_fields(ref), rows, grid


def _extender(spec: str, device):
    return make_extender(spec) if spec in ("world", "template") else make_extender(spec, device=device)


def _geneval(sampler, per_tag_draws=100, images_per_prompt=4, detector="world", seed=GENEVAL_SEED, out=None,
             color_model=None, extend=None, **_):
    """GenEval ◇ (the benchmark's prompts) or, with `extend`, GenEval★: each prompt rewritten by the prompt extender
    before generation and the images scored against the original record (ImageNet-T2I Tables 2 and 9–11)."""
    det = get_detector(detector, color_model=color_model or DEFAULT_COLOR_MODEL, device=sampler.device)
    if detector == "world":
        records = world_geneval_records(n=per_tag_draws)
    else:
        records = geneval.make_prompts(geneval.COCO_CLASSES, geneval.GENEVAL_COLORS, seed=43, n=per_tag_draws)
    prompts = _extender(extend, sampler.device).extend([r["prompt"] for r in records]) if extend else None
    summary, rows, images = run_geneval(sampler, records, det, images_per_prompt=images_per_prompt, seed=seed,
                                        prompts=prompts)
    if out is not None:  # the official layout, so the reference evaluator can score the same images
        geneval.write_prompts(records, out)
        geneval.write_layout(Path(out) / "images", records, images)
        atomic_write_text(Path(out) / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"overall": summary["overall"], **{t: s["score"] for t, s in summary["tags"].items()},
               "images_correct": summary["images_correct"], "prompts_correct": summary["prompts_correct"],
               "images": summary["images"], "prompts": summary["prompts"], "detector": det.name,
               "thresholds": json.dumps(det.thresholds.__dict__), "prompt_set": _prompt_set(extend)}
    show = [{k: r[k] for k in ("filename", "tag", "prompt", "generation_prompt", "correct", "reason") if k in r}
            for r in rows[:400]]
    return metrics, show, np.stack([g[0] for g in images]), summary


def _prompt_set(extend) -> str:
    return f"extended (★) by {extend}" if extend else "original (◇)"


def _dpg(sampler, n, seed, model=None, csv=None, tiles=4, extend=None, **_):
    """DPG-Bench; with `extend` the prompts go through the prompt extender before generation, the questions stay."""
    if csv:
        prompts, questions = dpg.read_questions(csv)
        if n:
            questions = dict(list(questions.items())[:n])
        if not model:
            raise ValueError("DPG on a question CSV needs a VQA model: pass --model <hub id or folder>")
        answer = dpg.TransformersVQA(model, device=sampler.device)
        texts = [prompts[item] for item in questions]
    else:  # the world: held-out scenes, their long captions, questions from the scene specs, the detector answers
        _, captions, scenes, _ = world_reference(sampler.cfg, n)
        questions = {f"world{i:05d}": dpg.world_questions(s, f"world{i:05d}") for i, s in enumerate(scenes)}
        texts, answer = captions, (dpg.TransformersVQA(model, device=sampler.device) if model else dpg.WorldVQA())
    if extend:
        texts = _extender(extend, sampler.device).extend(texts)
    flat = sampler([t for t in texts for _ in range(tiles)], seed=seed)
    images = {item: list(flat[i * tiles:(i + 1) * tiles]) for i, item in enumerate(questions)}
    out = dpg.score(questions, images, answer)
    metrics = {"dpg_score": out["dpg_score"], **{f"category/{k}": v for k, v in out["categories"].items()},
               **{f"category_last_tile/{k}": v for k, v in out["categories_last_tile"].items()},
               "prompts": out["items"], "tiles": out["tiles"], "answerer": getattr(answer, "name", "world"),
               "prompt_set": _prompt_set(extend)}
    grid = np.stack([dpg.tile_images(images[item]) for item in list(questions)[:16]]) if tiles in (1, 4, 9) else flat
    return metrics, out["rows"][:400], grid


SUITES = {"fid": _fd_kid, "fd": _fd_kid, "kid": _fd_kid, "prdc": _prdc, "clipscore": _clipscore,
          "geneval": _geneval, "dpg": _dpg}
# World references: sized so a world run's eval samples ≈ 64 images, minutes on a CPU (world-s, heun 24 steps + CFG:
# 7.5 s/img measured on 2 cores at load average 9); compare only at equal N. Real references: references.PAPER_N.
DEFAULT_N = {"fid": 64, "prdc": 64, "clipscore": 64, "dpg": 16}
REFERENCE_METRICS = ("fid", "fd", "kid", "prdc", "clipscore")  # N comes from the reference (papers' N by default)


def run_eval(metric: str, run_dir: str | Path, *, out: str | Path | None = None, seed: int | None = None,
             n: int | None = None, steps: int | None = None, cfg_scale: float | None = None, batch_size: int = 64,
             device="cpu", log=print, progress: bool = False, **opts) -> dict:
    """Run one suite on a finished run; returns {"metrics", "settings", "out", ...} and writes JSON + HTML."""
    if metric not in SUITES:
        raise ValueError(f"unknown eval metric {metric!r}; choose one of {', '.join(SUITES)}")
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "eval" / (f"{metric}-extended" if opts.get("extend") else metric)
    t0 = time.perf_counter()
    sampler = RunSampler.from_run(run_dir, device=device, steps=steps, cfg_scale=cfg_scale, batch_size=batch_size,
                                  progress=progress)
    seed = (GENEVAL_SEED if metric == "geneval" else sampler.cfg.eval.seed) if seed is None else seed
    n = n if metric in REFERENCE_METRICS else n or DEFAULT_N.get(metric)
    result = SUITES[metric](sampler, n=n, seed=seed, out=out, metric=metric, **opts)
    metrics, rows, images = result[:3]
    n = metrics.get("n", n)
    settings = {"metric": metric, "run_dir": str(run_dir), "seed": seed, "n": n, **sampler.settings(),
                **{k: v for k, v in opts.items() if v is not None}, "seconds": round(time.perf_counter() - t0, 1)}
    report = {"metrics": metrics, "settings": settings}
    if metric == "geneval":
        report["summary"] = result[3]
    atomic_write_text(out / "results.json", json.dumps(report, indent=2))
    side = int(np.ceil(np.sqrt(min(len(images), 64))))
    save_grid(np.asarray(images[:64]), out / "grid.png", nrow=side, upscale=max(1, 128 // images.shape[1]))
    write_report(out, title=f"microt2i eval {metric} — {run_dir.name}", metrics=metrics,
                 images={"samples (first of each prompt)": "grid.png"}, samples=rows,
                 config_text=json.dumps(settings, indent=2) + "\n\n" + (run_dir / "config.yaml").read_text())
    log(f"[eval {metric}] {out / 'results.json'}, {out / 'report.html'} ({settings['seconds']} s)")
    return report | {"out": str(out)}
