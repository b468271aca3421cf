"""The papers' ablations on the world, as data: arms, claims, evaluation settings, the experiment list, and
how an (arm, seed) becomes a run config and a run folder (budget scaling, config hashes, the git commit)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
import numpy as np
from . import presets
from .config import ConfigError, RunConfig, plain, apply_overrides, to_dict
import yaml
from .cost import count_train_flops
from .eval.runner import world_geneval_records


RUNTIME_KEYS = (("train", "threads"), ("train", "device"), ("data", "cache_dir"), ("train", "compile"))
CI = 0.95


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...] = ()
    label: str = ""  # one line for the table


@dataclass(frozen=True)
class Claim:
    """The paper's direction: `better` beats `worse` on `metric` (GenEval keys: higher is better; FD/KID: lower)."""

    metric: str
    better: str
    worse: str
    paper: str  # what the paper reports, with its table / figure
    number: str = ""  # the paper's own numbers for this pair (better vs worse), for EXPERIMENTS.md's summary table


@dataclass(frozen=True)
class EvalSpec:
    geneval_per_tag: int = 8  # world-GenEval prompts per tag (evaluation.md §8.1)
    geneval_images: int = 2  # images per prompt
    fd_n: int = 96  # held-out references and samples for FD / KID / PRDC
    steps: int = 12  # sampler steps for every evaluation of the experiment (the arms' eval.steps)
    extended: bool = True  # also GenEval★: the prompts through the world prompt extender (ImageNet-T2I Tables 2, 9–11)


@dataclass(frozen=True)
class Experiment:
    name: str
    preset: str
    question: str
    arms: tuple[Arm, ...]
    claims: tuple[Claim, ...]
    base: tuple[str, ...] = ()  # overrides of every arm at scale 1
    default_arms: tuple[str, ...] = ()  # arms run without --arms (empty = all); sweeps are opt-in
    flops_reference: str = ""  # non-empty: iso-FLOPs budget, every arm trains flops(reference arm) × its images
    eval: EvalSpec = field(default_factory=EvalSpec)

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise ConfigError(f"experiment {self.name!r} has no arm {name!r}; valid arms: "
                          f"{', '.join(a.name for a in self.arms)}")


# ------------------------------------------------------------------------------------------------ experiments

# world-s (DiT-I on 4×8×8 world-VAE latents) shortened to 8,192 images seen (a third of the preset's), with a
# GenEval-only in-training curve (2 prompts per tag every 2,048 images): ≈ 7 min per arm on one free CPU core,
# longer on a shared one (EXPERIMENTS.md states the wall time measured); --scale multiplies every image count.
_DIT_BASE = ("train.total_nimg=8192", "train.warmup_nimg=512", "train.ema_start_nimg=2048", "train.log_every_nimg=512",
             "train.ckpt_every_nimg=2048", "eval.every_nimg=2048", "eval.geneval_per_tag=2", "eval.fd_n=0",
             "eval.grid_size=1")
# Captions whole: the world's longest oracle caption is 82 MiniLM tokens ([CLS] and [SEP] included; ≈ 2 % of world-s
# captions exceed the preset's 64 and were cut), MiniLM has 512 positions. The caption experiments keep every token;
# the presets keep 64 (tests/test_experiment.py measures the captions).
LONG_TEXT = ("data.text_len=96",)


def _cutmix(setting: str = "all", tau: int | str = 400, p: str = "0.5") -> tuple[str, ...]:
    """CutMix's overrides, ImageNet-T2I's CM-all, τ 400, p 0.5 unless a sweep (Tables 9–11) changes one."""
    return ("augment.cutmix.enabled=true", f"augment.cutmix.setting={setting}", f"augment.cutmix.tau={tau}",
            f"augment.cutmix.p={p}")


_CUTMIX = _cutmix()
_CROP = ("augment.crop.enabled=true", "augment.crop.p=0.5", "model.crop_cond=true")

# world-microdit-s (32 px pixels, 256 patches, MoE), 4,096 images for the deferred arm; in `masking` the others
# get as many images as the same training FLOPs buy. Sampling 256 tokens is slow on a CPU: a smaller eval.
_MASKING_BASE = ("train.total_nimg=4096", "train.batch_size=16", "train.warmup_nimg=256", "train.ema_decay=0.995",
                 "train.ema_start_nimg=1024", "train.log_every_nimg=512", "train.ckpt_every_nimg=2048",
                 "eval.every_nimg=0", "eval.grid_size=2", *LONG_TEXT)
_MASKING_EVAL = EvalSpec(geneval_per_tag=4, geneval_images=1, fd_n=64, steps=10)
_MASKING_ARMS = (Arm("deferred", ("model.mask_ratio=0.75", "model.masking=deferred"), "75 % deferred (patch-mixer)"),
                 Arm("naive", ("model.mask_ratio=0.75", "model.masking=naive"), "75 % naive (mask before the mixer)"))
_FIG8 = "figure only: deferred far better at 75 % (FID, CLIP score; DiT-Tiny/2, 60k steps, same steps)"
_MASKING_CLAIMS = (Claim("FD-EffNetLite0", "deferred", "naive", "MicroDiT Fig. 8: deferred ≫ naive at high masking ratios",
                         _FIG8),
                   Claim("geneval", "deferred", "naive", "MicroDiT Fig. 8 (FID / CLIP score there)", _FIG8))

# ImageNet-T2I App. E.2, Tables 9–11 (CAD-I, 250k steps, ♦ original GenEval prompts, ★ extended): each sweep
# varies one CutMix knob around the paper's recipe (CM-all / CM-1/4, p 0.5, τ 400). The TA baseline (no CutMix) is
# Table 10's ρ = 0 row: FID 6.16, GenEval 0.51 ♦ / 0.55 ★.
_DIT_LONG = (*_DIT_BASE, *LONG_TEXT)
_CM_SETTINGS = {"cm1-2": "1/2", "cm1-4": "1/4", "cm1-9": "1/9", "cm1-16": "1/16", "cm-all": "all"}
_T9 = {"cm1-2": (6.13, 0.46, 0.55), "cm1-4": (6.41, 0.49, 0.53), "cm1-9": (6.63, 0.51, 0.51),
       "cm1-16": (6.42, 0.47, 0.56), "cm-all": (6.81, 0.53, 0.55), "ta": (6.16, 0.51, 0.55)}  # FID, GenEval ♦, ★
_T10 = {"p0": (6.16, 0.51, 0.55), "p0.25": (5.99, 0.55, 0.58), "p0.5": (6.41, 0.49, 0.53),
        "p0.75": (6.71, 0.45, 0.53), "p1": (6.07, 0.48, 0.49)}
_T11 = {"tau300": (6.99, 0.51, 0.53), "tau400": (6.62, 0.55, 0.57), "tau500": (6.16, 0.48, 0.55),
        "tau600": (5.90, 0.50, 0.55)}


def _table_claim(table: dict, name: str, metric: str, better: str, worse: str, paper: str) -> Claim:
    """A claim whose paper numbers come from one of Tables 9–11 (FID for FD claims, ♦ for geneval, ★ for geneval★)."""
    col, what = ((0, "FID") if metric.startswith("FD") else (2, "GenEval ★") if metric.startswith("geneval★")
                 else (1, "GenEval ♦"))
    b, w = table[better][col], table[worse][col]
    d = (w - b) if col == 0 else (b - w)
    return Claim(metric, better, worse, f"ImageNet-T2I {name}: {paper}",
                 f"{what} {b:.2f} vs {w:.2f} (Δ {d:+.2f}{', lower is better' if col == 0 else ''})")

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(
        name="captions", preset="world-s", base=_DIT_LONG,
        question="Do long (oracle) captions beat 'An image of a <class>' captions on compositional prompts?",
        arms=(Arm("aio", ("data.captions=aio",), "AIO: 'An image of a <class>'"),
              Arm("long", ("data.captions=long",), "TA: oracle long captions")),
        claims=(Claim("geneval", "long", "aio", "ImageNet-T2I Table 1: GenEval 0.11 (AIO) → 0.55 (TA)",
                      "GenEval 0.55 vs 0.11 (DiT-I), 0.55 vs 0.17 (CAD-I)"),
                Claim("geneval★", "long", "aio", "ImageNet-T2I Table 1 (TA models are scored with extended prompts, Table 2)",
                      "TA 0.55 ★ (Table 2, DiT-I); AIO with the extender not reported"),
                Claim("geneval/colors", "long", "aio", "ImageNet-T2I Table 1 / §3.1: attributes come from the captions",
                      "TA colours 0.80 ★ (Table 2, DiT-I); AIO per tag not reported"),
                Claim("FD-EffNetLite0", "long", "aio", "ImageNet-T2I Table 1: FID Inception 20.14 (AIO) → 6.29 (TA), DiT-I",
                      "FID 6.29 vs 20.14 (DiT-I), 6.16 vs 84.77 (CAD-I)"))),
    Experiment(
        name="image-augmentation", preset="world-s", base=_DIT_LONG,
        question="Do CutMix (CM-all, τ = 400, p = 0.5) and Crop help composition over TA alone?",
        arms=(Arm("ta", (), "TA"),
              Arm("ta-cutmix", _CUTMIX, "TA + CutMix CM-all, τ 400, p 0.5"),
              Arm("ta-crop", _CROP, "TA + Crop, p 0.5, side ≥ 50 %"),
              Arm("ta-cutmix-crop", (*_CUTMIX, *_CROP), "TA + CutMix CM-all + Crop (both IA)"),
              *(Arm(f"cutmix-p{p}", _cutmix(p=p), f"CutMix p = {p} (Table 10)")
                for p in ("0.25", "0.75", "1.0")),
              *(Arm(f"cutmix-tau{t}", _cutmix(tau=t),
                    f"CutMix τ = {t} (Table 11)") for t in ("300", "500", "600"))),
        default_arms=("ta", "ta-cutmix", "ta-crop", "ta-cutmix-crop"),
        claims=(Claim("geneval★/two_object", "ta-cutmix", "ta", "ImageNet-T2I Table 2 (extended prompts): CutMix +7 points "
                                                                  "on two-object", "two-object 0.68 vs 0.61 (DiT-I), 0.68 vs "
                                                                                   "0.60 (CAD-I), ★"),
                Claim("geneval/two_object", "ta-cutmix", "ta", "ImageNet-T2I Table 2: CutMix +7 points on two-object",
                      "Table 2 is on extended prompts only (above)"),
                Claim("geneval/position", "ta-cutmix", "ta", "ImageNet-T2I Table 2: CutMix helps position",
                      "position 0.28 vs 0.28 (DiT-I), 0.35 vs 0.26 (CAD-I), ★"),
                Claim("geneval★", "ta-cutmix", "ta", "ImageNet-T2I Table 2: IA +2 points overall",
                      "overall 0.57 vs 0.55 (DiT-I and CAD-I), ★"),
                Claim("geneval", "ta-crop", "ta", "ImageNet-T2I Table 2: Crop improves overall GenEval",
                      "overall 0.54 vs 0.55 (DiT-I, ★): the table's own Crop row is 1 point below TA; §2.3 says IA +2"),
                Claim("geneval★/two_object", "ta-cutmix-crop", "ta",
                      "ImageNet-T2I §2.3 / App. E–F: the best models train with TA + IA",
                      "no TA + CutMix + Crop row; each alone: two-object 0.68 (CutMix), 0.56 (Crop) vs 0.61"))),
    Experiment(
        name="cutmix-setting", preset="world-s", base=_DIT_LONG,
        question="Which CutMix setting (CM-1/2, 1/4, 1/9, 1/16 or all; p 0.5, τ 400) composes best (ImageNet-T2I "
                 "Table 9)?",
        arms=(Arm("ta", (), "TA (no CutMix)"),
              *(Arm(a, _cutmix(setting=s), f"TA + CutMix CM-{s}, p 0.5, τ 400")
                for a, s in _CM_SETTINGS.items())),
        claims=(_table_claim(_T9, "Table 9", "geneval", "cm-all", "ta", "CM-all improves over the baseline on "
                             "original prompts (TA: Table 10, ρ = 0)"),
                _table_claim(_T9, "Table 9", "geneval★", "cm1-16", "ta", "CM-1/16 improves over the baseline on "
                             "extended prompts"),
                *(_table_claim(_T9, "Table 9", "geneval", "cm-all", a, "CM-all the best setting on original prompts")
                  for a in ("cm1-2", "cm1-4", "cm1-9", "cm1-16")),
                _table_claim(_T9, "Table 9", "FD-EffNetLite0", "cm1-2", "cm-all", "CM-1/2 the best FID, CM-all the "
                             "worst"))),
    Experiment(
        name="cutmix-p", preset="world-s", base=_DIT_LONG,
        question="How often should CutMix fire above τ: p ∈ {0, 0.25, 0.5, 0.75, 1} with CM-1/4, τ 400 (ImageNet-T2I "
                 "Table 10)?",
        arms=(Arm("p0", (), "ρ = 0: TA (no CutMix)"),
              *(Arm(f"p{p}", _cutmix(setting="1/4", p=p),
                    f"TA + CutMix CM-1/4, p = {p}, τ 400") for p in ("0.25", "0.5", "0.75", "1"))),
        claims=(_table_claim(_T10, "Table 10", "geneval", "p0.25", "p0", "p = 0.25 beats no CutMix"),
                _table_claim(_T10, "Table 10", "geneval★", "p0.25", "p0", "p = 0.25 beats no CutMix"),
                _table_claim(_T10, "Table 10", "geneval", "p0.25", "p0.5", "GenEval falls as p grows"),
                _table_claim(_T10, "Table 10", "geneval", "p0.5", "p0.75", "GenEval falls as p grows"),
                _table_claim(_T10, "Table 10", "geneval", "p0.25", "p1", "GenEval falls as p grows"),
                _table_claim(_T10, "Table 10", "geneval★", "p0.25", "p1", "GenEval falls as p grows"),
                _table_claim(_T10, "Table 10", "FD-EffNetLite0", "p0.25", "p0.75", "p > 0.5 degrades FID"))),
    Experiment(
        # Table 11 reports τ ∈ {300, 400, 500, 600}; τ = 0 is no threshold at all (CutMix at every noise level), which
        # augment.cutmix.tau refuses (0 < τ < 1000), and the paper did not run it
        name="cutmix-tau", preset="world-s", base=_DIT_LONG,
        question="Above which noise level should CutMix images be used: τ ∈ {300, 400, 500, 600} with CM-all, p 0.5 "
                 "(ImageNet-T2I Table 11)?",
        arms=tuple(Arm(f"tau{t}", _cutmix(tau=t),
                       f"TA + CutMix CM-all, p 0.5, τ = {t}") for t in (300, 400, 500, 600)),
        claims=(*(_table_claim(_T11, "Table 11", "geneval", "tau400", f"tau{t}", "τ = 400 gives the best GenEval")
                  for t in (300, 500, 600)),
                *(_table_claim(_T11, "Table 11", "geneval★", "tau400", f"tau{t}", "τ = 400 gives the best GenEval")
                  for t in (300, 600)),
                *(_table_claim(_T11, "Table 11", "FD-EffNetLite0", "tau600", f"tau{t}", "τ = 600 gives the best FID")
                  for t in (300, 400)))),
    Experiment(
        name="masking", preset="world-microdit-s", flops_reference="deferred", base=_MASKING_BASE, eval=_MASKING_EVAL,
        question="At 75 % masking, does the patch-mixer (deferred masking) beat naive masking, and unmasked "
                 "training, at equal training FLOPs?",
        arms=(*_MASKING_ARMS, Arm("unmasked", ("model.mask_ratio=0.0",), "unmasked")),
        claims=(*_MASKING_CLAIMS,
                Claim("FD-EffNetLite0", "deferred", "unmasked", "MicroDiT Table 5 / §4: masking buys more at equal FLOPs",
                      "75 %, iso-FLOPs: FID 6.96 vs 7.09, CLIP score 28.16 vs 27.68 — against a downscaled network; "
                      "ours is the full-size network unmasked on fewer images"))),
    Experiment(
        # MicroDiT App. D.1 / Fig. 8 compare at the same number of optimisation steps, not FLOPs: naive masking then
        # sees as many images as deferred (and costs less)
        name="masking-steps", preset="world-microdit-s", base=_MASKING_BASE, eval=_MASKING_EVAL,
        question="At 75 % masking and the same number of steps (MicroDiT Fig. 8's protocol), does the patch-mixer "
                 "(deferred masking) beat naive masking?",
        arms=_MASKING_ARMS, claims=_MASKING_CLAIMS),
    Experiment(
        name="objective", preset="world-s", base=_DIT_BASE,
        question="EDM vs VP-ε vs rectified flow at an equal budget (beyond the papers)",
        arms=(Arm("edm", ("objective.kind=edm",), "EDM (σ log-normal, preconditioning)"),
              Arm("vp", ("objective.kind=vp", "objective.schedule=linear"), "VP ε, γ = 1 − t (CAD-I)"),
              Arm("flow", ("objective.kind=flow",), "rectified flow, logit-normal t")),
        claims=()),
    Experiment(
        # The world's default recipe against session 3's (DiT-I at width 256 under EDM, at its own 24,576-image
        # budget: 13× the FLOPs per image) and each convergence lever at the demo's 65,536 images; the class-accuracy
        # curve (64 single-object prompts every 8,192 images) gives the images and training FLOPs to reach the
        # baseline's final accuracy, 0.5 and 0.8 (EXPERIMENTS.md, time-to-quality).
        name="time-to-quality", preset="world-s",
        base=("train.total_nimg=65536", "train.warmup_nimg=1024", "train.ema_start_nimg=4096",
              "train.log_every_nimg=1024", "train.ckpt_every_nimg=8192", "eval.every_nimg=8192", "eval.class_n=64",
              "eval.geneval_per_tag=0", "eval.fd_n=0", "eval.grid_size=1"),
        eval=EvalSpec(geneval_per_tag=4, geneval_images=1, fd_n=64, steps=12, extended=False),
        question="How many images and training FLOPs until single objects are drawn as well as session 3's world-s "
                 "drew them, and as asked (class accuracy 0.5 / 0.8), for today's world-s and each convergence lever?",
        arms=(Arm("baseline", ("model.width=256", "objective.kind=edm", "train.lr=1e-3", "train.total_nimg=24576"),
                  "session 3's world-s: width 256, EDM, lr 1e-3, 24,576 images"),
              Arm("default", (), "today's world-s (width 64, rectified flow, lr 2e-3)"),
              Arm("w128", ("model.width=128", "train.lr=1e-3"), "session 5's world-s (width 128, lr 1e-3)"),
              Arm("edm", ("objective.kind=edm",), "EDM instead of rectified flow"),
              Arm("repa", ("objective.repa_weight=0.5", "model.repa_depth=2", "model.repa_dim=320",
                           "model.repa_hidden=512", "data.repa_teacher=effnet-lite0"), "+ REPA (EffNet-Lite0, λ 0.5)"),
              Arm("tread", ("model.route_ratio=0.5", "model.route_start=1", "model.route_end=5"),
                  "+ TREAD (half the tokens skip blocks 1–4)"),
              Arm("muon", ("train.optimizer=muon",), "+ Muon on the hidden matrices"),
              Arm("rope", ("model.rope=true",), "+ 2-D RoPE in the self-attention"),
              Arm("mixffn", ("model.mix_ffn=true",), "+ Mix-FFN (Sana: depthwise 3×3 conv in every MLP)"),
              Arm("lr1", ("train.lr=1e-3",), "learning rate 1e-3 (instead of 2e-3)"),
              Arm("film", ("model.text_film=true",), "+ the mean caption token in adaLN-single (MicroDiT-style)")),
        default_arms=("baseline", "default"),
        claims=()),
    Experiment(
        name="overfitting", preset="world-s",
        # 256 training images seen 48 times each: FD against held-out scenes vs images seen (ImageNet-T2I Fig. 3)
        base=(*LONG_TEXT, "data.num_images=256", "train.total_nimg=12288", "train.warmup_nimg=512", "train.ema_start_nimg=2048",
              "train.log_every_nimg=512", "train.ckpt_every_nimg=4096", "eval.every_nimg=2048",
              "eval.geneval_per_tag=2", "eval.fd_n=64", "eval.grid_size=2"),
        question="Does image augmentation delay overfitting on a small training set?",
        arms=(Arm("no-ia", (), "TA only"), Arm("cutmix", (*_CUTMIX, "augment.cutmix.times=4"), "TA + CutMix ×4"),
              Arm("crop", _CROP, "TA + Crop")),
        claims=(Claim("FD-EffNetLite0", "cutmix", "no-ia", "ImageNet-T2I Fig. 3: IA delays overfitting",
                      "figure only: TA's FID rises sharply after ≈ 200k steps, TA + CutMix stays lower (CAD-I)"),
                Claim("FD-EffNetLite0", "crop", "no-ia", "ImageNet-T2I Fig. 3 / §2.3: TA + Crop delays overfitting too",
                      "figure only: TA + Crop keeps a lower FID for longer (CAD-I)"))),
)}


def names() -> list[str]:
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def select_arms(exp: Experiment, arms: str | list[str] | None) -> list[str]:
    """--arms a,b (validated) or the experiment's default arms."""
    if arms:
        chosen = [a.strip() for a in (arms.split(",") if isinstance(arms, str) else arms) if a.strip()]
        for a in chosen:
            exp.arm(a)
        return chosen
    return list(exp.default_arms or [a.name for a in exp.arms])


# ------------------------------------------------------------------------------------------------ configs, keys

_NIMG_KEYS = ("total_nimg", "warmup_nimg", "ema_start_nimg", "ckpt_every_nimg", "log_every_nimg")


def _scaled(n: int, factor: float, batch: int) -> int:
    return 0 if n == 0 else max(batch, int(round(n * factor / batch)) * batch)


def scale_budget(cfg: RunConfig, factor: float) -> RunConfig:
    """Every image count (training length, warm-up, EMA start, log / checkpoint / in-training-eval periods) × factor,
    rounded to whole global batches."""
    if factor <= 0:
        raise ConfigError(f"--scale={factor} must be > 0 (1 = the CPU default; 10 = ten times the images)")
    b = cfg.train.batch_size
    t = replace(cfg.train, **{k: _scaled(getattr(cfg.train, k), factor, b) for k in _NIMG_KEYS})
    return replace(cfg, train=t, eval=replace(cfg.eval, every_nimg=_scaled(cfg.eval.every_nimg, factor, b)))


def arm_config(exp: Experiment, arm: str, seed: int, scale: float = 1.0, extra: tuple[str, ...] = ()) -> RunConfig:
    """The resolved config of (arm, seed): preset → experiment base → arm → `extra` overrides → scale → seed; with
    an iso-FLOPs experiment, the arm's images are set so that its training FLOPs equal the reference arm's."""
    base = presets.get(exp.preset)
    cfg = apply_overrides(base, [*exp.base, *exp.arm(arm).overrides, *extra, f"eval.steps={exp.eval.steps}",
                                 f"train.seed={seed}"])
    cfg = replace(scale_budget(cfg, scale), name=f"{exp.name}-{arm}-s{seed}")
    if exp.flops_reference and arm != exp.flops_reference:
        ref = arm_config(exp, exp.flops_reference, seed, scale, extra)
        factor = count_train_flops(ref).train / count_train_flops(cfg).train
        cfg = scale_budget(cfg, factor)
    return cfg


def config_hash(cfg: RunConfig, spec: EvalSpec) -> str:
    d = plain(to_dict(cfg))
    for section, key in RUNTIME_KEYS:
        d[section].pop(key, None)
    d["name"] = None
    ev = {k: v for k, v in spec.__dict__.items() if k != "extended"}  # an add-on: changes no other number
    blob = json.dumps({"config": d, "eval": plain(ev)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def git_commit(repo: str | Path | None = None) -> tuple[str, bool]:
    """(HEAD commit, whether src/ has uncommitted changes) of the checkout holding this package; ("unknown", False)
    outside git."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip() != ""
        return head, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def arm_key(cfg: RunConfig, spec: EvalSpec, commit: str) -> str:
    return hashlib.sha256(f"{config_hash(cfg, spec)}:{commit}".encode()).hexdigest()[:10]


def arm_dir(root: str | Path, exp: Experiment, arm: str, seed: int, key: str) -> Path:
    return Path(root) / exp.name / f"{arm}-s{seed}-{key}"


def find_result(root: str | Path, exp: Experiment, arm: str, seed: int, cfg: RunConfig, commit: str,
                any_commit: bool = False) -> Path | None:
    """The finished folder of this (config, seed, commit): the arm's own, or one of another experiment or arm with
    the same key (e.g. captions/long is image-augmentation/ta); with `any_commit` also the newest of any commit."""
    key = arm_key(cfg, exp.eval, commit)
    exact = arm_dir(root, exp, arm, seed, key)
    if (exact / "result.json").is_file():
        return exact
    same = sorted(Path(root).glob(f"*/*-s{seed}-{key}/result.json"))
    if same:
        return same[0].parent
    if not any_commit:
        return None
    found = [p.parent for p in Path(root).glob(f"*/*-s{seed}-*/result.json") if same_run(p.parent, cfg, exp.eval)]
    return max(found, key=lambda p: (p / "result.json").stat().st_mtime) if found else None


def _same_values(saved, now) -> bool:
    """Every key of the saved config has the same value now; keys added to the code since are ignored (a new
    option defaults to the old behaviour)."""
    if isinstance(saved, dict):
        return isinstance(now, dict) and all(k in now and _same_values(v, now[k]) for k, v in saved.items())
    return saved == now


def same_run(folder: Path, cfg: RunConfig, spec: EvalSpec) -> bool:
    """A finished folder (of any commit) ran this config and evaluation: its config.yaml agrees with `cfg` on every
    key it has (runtime keys and the name aside), and its results have the spec's shape (images per prompt, prompts,
    FD samples; the sampler steps are eval.steps of the config)."""
    result = json.loads((folder / "result.json").read_text())
    if result.get("config_hash") == config_hash(cfg, spec):
        return True
    saved, now = yaml.safe_load((folder / "config.yaml").read_text()), plain(to_dict(cfg))
    for d in (saved, now):
        d.pop("name", None)
        for section, key in RUNTIME_KEYS:
            d.get(section, {}).pop(key, None)

    correct = result["geneval"]["correct"]
    n_prompts = len(world_geneval_records(n=spec.geneval_per_tag, per_tag=spec.geneval_per_tag))
    n_fd = np.load(folder / "features.npz")["fake"].shape[0] if (folder / "features.npz").is_file() else None
    return (_same_values(saved, now) and len(correct) == n_prompts and len(correct[0]) == spec.geneval_images
            and n_fd == spec.fd_n)
