"""`microt2i experiment <name>`: the papers' ablations at micro scale on the embedded world, with error bars.

An experiment is a few arms (dotted overrides of one world preset) trained with identical budgets (images seen, or
training FLOPs for `masking`), for several seeds, then evaluated alike: world-GenEval per tag (the world detector),
FD-EffNetLite0 + KID and PRDC on held-out world scenes. Each arm-seed lives in
`runs/experiments/<name>/<arm>-s<seed>-<key>/`, key = hash(resolved config, eval settings, git commit): a finished
arm (its `result.json`) is reused, an interrupted one resumes from its checkpoints, so an experiment completes across
invocations and re-renders without training (`--render-only`).

Intervals are percentile bootstraps (95 %). GenEval: seeds and prompts resampled independently (prompts within their
tag, a prompt's images together), overall = mean over tags (evaluation.md §1.5). FD: seeds and generated samples
resampled, real statistics fixed. KID / PRDC: seeds only. Arm differences resample both arms with the same indices
(paired: same seeds, same prompts, same noise).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import presets
from .config import ConfigError, RunConfig, plain, apply_overrides, to_dict
from .io import atomic_write_bytes, atomic_write_text
from .progress import Progress, heartbeat
from .eval.live import LiveEval
import yaml
from .bench import device_string
from .cost import count_train_flops
from .encoders.extender import TemplateExtender
from .eval.detectors import WorldDetector
from .eval.distribution import GaussianStats, as_features, frechet_distance, kid, prdc
from .eval.features import get_extractor
from .eval.pages import data_uri, html_page, html_table, read_stats
from .eval.runner import GENEVAL_SEED, RunSampler, reference_features, run_geneval, world_geneval_records
from .train.loop import resolve_device, train

# Settings that change where or how fast a run goes, not what it computes: left out of the reuse key.
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


@dataclass(frozen=True)
class EvalSpec:
    geneval_per_tag: int = 8  # world-GenEval prompts per tag (evaluation.md §8.1)
    geneval_images: int = 2  # images per prompt
    fd_n: int = 96  # held-out references and samples for FD / KID / PRDC
    steps: int = 12  # sampler steps for every evaluation of the experiment (the arms' eval.steps)
    extended: bool = True  # also GenEval★: the prompts through the world prompt extender (000 Tables 2, 9–11)


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
_CUTMIX = ("augment.cutmix.enabled=true", "augment.cutmix.setting=all", "augment.cutmix.tau=400",
           "augment.cutmix.p=0.5")
_CROP = ("augment.crop.enabled=true", "augment.crop.p=0.5", "model.crop_cond=true")

# world-microdit-s (32 px pixels, 256 patches, MoE), 4,096 images for the deferred arm; in `masking` the others
# get as many images as the same training FLOPs buy. Sampling 256 tokens is slow on a CPU: a smaller eval.
_MASKING_BASE = ("train.total_nimg=4096", "train.batch_size=16", "train.warmup_nimg=256", "train.ema_decay=0.995",
                 "train.ema_start_nimg=1024", "train.log_every_nimg=512", "train.ckpt_every_nimg=2048",
                 "eval.every_nimg=0", "eval.grid_size=2")
_MASKING_EVAL = EvalSpec(geneval_per_tag=4, geneval_images=1, fd_n=64, steps=10)
_MASKING_ARMS = (Arm("deferred", ("model.mask_ratio=0.75", "model.masking=deferred"), "75 % deferred (patch-mixer)"),
                 Arm("naive", ("model.mask_ratio=0.75", "model.masking=naive"), "75 % naive (mask before the mixer)"))
_MASKING_CLAIMS = (Claim("FD-EffNetLite0", "deferred", "naive", "003 Fig. 8: deferred ≫ naive at high masking ratios"),
                   Claim("geneval", "deferred", "naive", "003 Fig. 8 (FID / CLIP score there)"))

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(
        name="captions", preset="world-s", base=_DIT_BASE,
        question="Do long (oracle) captions beat 'An image of a <class>' captions on compositional prompts?",
        arms=(Arm("aio", ("data.captions=aio",), "AIO: 'An image of a <class>'"),
              Arm("long", ("data.captions=long",), "TA: oracle long captions")),
        claims=(Claim("geneval", "long", "aio", "000 Table 1: GenEval 0.11 (AIO) → 0.55 (TA)"),
                Claim("geneval★", "long", "aio", "000 Table 1 (TA models are scored with extended prompts, Table 2)"),
                Claim("geneval/colors", "long", "aio", "000 Table 1 / §3.1: attributes come from the captions"),
                Claim("FD-EffNetLite0", "long", "aio", "000 Table 1: FID Inception 20.14 (AIO) → 6.29 (TA), DiT-I"))),
    Experiment(
        name="image-augmentation", preset="world-s", base=_DIT_BASE,
        question="Do CutMix (CM-all, τ = 400, p = 0.5) and Crop help composition over TA alone?",
        arms=(Arm("ta", (), "TA"),
              Arm("ta-cutmix", _CUTMIX, "TA + CutMix CM-all, τ 400, p 0.5"),
              Arm("ta-crop", _CROP, "TA + Crop, p 0.5, side ≥ 50 %"),
              *(Arm(f"cutmix-p{p}", (*_CUTMIX[:3], f"augment.cutmix.p={p}"), f"CutMix p = {p} (Table 10)")
                for p in ("0.25", "0.75", "1.0")),
              *(Arm(f"cutmix-tau{t}", (*_CUTMIX[:2], f"augment.cutmix.tau={t}", _CUTMIX[3]),
                    f"CutMix τ = {t} (Table 11)") for t in ("300", "500", "600"))),
        default_arms=("ta", "ta-cutmix", "ta-crop"),
        claims=(Claim("geneval★/two_object", "ta-cutmix", "ta", "000 Table 2 (extended prompts): CutMix +7 points "
                                                                  "on two-object"),
                Claim("geneval/two_object", "ta-cutmix", "ta", "000 Table 2: CutMix +7 points on two-object"),
                Claim("geneval/position", "ta-cutmix", "ta", "000 Table 2: CutMix helps position"),
                Claim("geneval", "ta-crop", "ta", "000 Table 2: Crop improves overall GenEval"))),
    Experiment(
        name="masking", preset="world-microdit-s", flops_reference="deferred", base=_MASKING_BASE, eval=_MASKING_EVAL,
        question="At 75 % masking, does the patch-mixer (deferred masking) beat naive masking, and unmasked "
                 "training, at equal training FLOPs?",
        arms=(*_MASKING_ARMS, Arm("unmasked", ("model.mask_ratio=0.0",), "unmasked")),
        claims=(*_MASKING_CLAIMS,
                Claim("FD-EffNetLite0", "deferred", "unmasked", "003 Table 5 / §4: masking buys more at equal FLOPs"))),
    Experiment(
        # 003 App. D.1 / Fig. 8 compare at the same number of optimisation steps, not FLOPs: naive masking then
        # sees as many images as deferred (and costs less)
        name="masking-steps", preset="world-microdit-s", base=_MASKING_BASE, eval=_MASKING_EVAL,
        question="At 75 % masking and the same number of steps (003 Fig. 8's protocol), does the patch-mixer "
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
        # The world's default recipe against session 3's (DiT-I at width 256 under EDM) and each convergence lever,
        # at the old demo's budget; the class-accuracy curve (32 single-object prompts every 6,144 images) gives the
        # images and training FLOPs to reach 0.5 / 0.8 (EXPERIMENTS.md, time-to-quality).
        name="time-to-quality", preset="world-s",
        base=("train.total_nimg=24576", "train.warmup_nimg=1024", "train.ema_start_nimg=4096",
              "train.log_every_nimg=1024", "train.ckpt_every_nimg=6144", "eval.every_nimg=6144", "eval.class_n=32",
              "eval.geneval_per_tag=0", "eval.fd_n=0", "eval.grid_size=1"),
        eval=EvalSpec(geneval_per_tag=4, geneval_images=1, fd_n=64, steps=12, extended=False),
        question="How many images and training FLOPs until single objects are drawn as asked (class accuracy 0.5 / "
                 "0.8), for the old world-s recipe, the new one and each convergence lever?",
        arms=(Arm("baseline", ("model.width=256", "objective.kind=edm"), "session 3's world-s: width 256, EDM"),
              Arm("default", (), "today's world-s (width 128, rectified flow)"),
              Arm("edm", ("objective.kind=edm",), "width 128, EDM"),
              Arm("repa", ("objective.repa_weight=0.5", "model.repa_depth=2", "model.repa_dim=320",
                           "model.repa_hidden=512", "data.repa_teacher=effnet-lite0"), "+ REPA (EffNet-Lite0, λ 0.5)"),
              Arm("tread", ("model.route_ratio=0.5", "model.route_start=1", "model.route_end=5"),
                  "+ TREAD (half the tokens skip blocks 1–4)"),
              Arm("muon", ("train.optimizer=muon",), "+ Muon on the hidden matrices")),
        default_arms=("baseline", "default"),
        claims=()),
    Experiment(
        name="overfitting", preset="world-s",
        # 256 training images seen 48 times each: FD against held-out scenes vs images seen (000 Fig. 3)
        base=("data.num_images=256", "train.total_nimg=12288", "train.warmup_nimg=512", "train.ema_start_nimg=2048",
              "train.log_every_nimg=512", "train.ckpt_every_nimg=4096", "eval.every_nimg=2048",
              "eval.geneval_per_tag=2", "eval.fd_n=64", "eval.grid_size=2"),
        question="Does image augmentation delay overfitting on a small training set?",
        arms=(Arm("no-ia", (), "TA only"), Arm("cutmix", (*_CUTMIX, "augment.cutmix.times=4"), "TA + CutMix ×4"),
              Arm("crop", _CROP, "TA + Crop")),
        claims=(Claim("FD-EffNetLite0", "cutmix", "no-ia", "000 Fig. 3: IA delays overfitting"),)),
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


# ------------------------------------------------------------------------------------------------ run and evaluate


def _geneval(sampler, spec: EvalSpec, extended: bool = False) -> dict:
    """World-GenEval per prompt and image; `extended`: each prompt rewritten by the world prompt extender first
    (the records, hence the scoring rules, stay the same)."""
    records = world_geneval_records(n=spec.geneval_per_tag, per_tag=spec.geneval_per_tag)
    if extended:
        ext = TemplateExtender().extend([r["prompt"] for r in records])
        records = [{**r, "prompt": p} for r, p in zip(records, ext)]
    k = spec.geneval_images
    summary, rows, _ = run_geneval(sampler, records, WorldDetector(), images_per_prompt=k, seed=GENEVAL_SEED)
    return {"prompts": [r["prompt"] for r in records], "tags": [r["tag"] for r in records],
            "correct": [[bool(rows[i * k + j]["correct"]) for j in range(k)] for i in range(len(records))],
            "overall": summary["overall"], "by_tag": {t: s["score"] for t, s in summary["tags"].items()}}


def evaluate_extended(run_dir: str | Path, spec: EvalSpec, device="cpu") -> dict:
    return _geneval(RunSampler.from_run(run_dir, device=device, steps=spec.steps), spec, extended=True)


def evaluate_arm(run_dir: str | Path, spec: EvalSpec, device="cpu", log=print) -> dict:
    """World-GenEval per prompt and image, FD-EffNetLite0 + KID and PRDC (k = 5) of a finished run; the features go
    to run_dir/features.npz (the FD bootstrap needs them)."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    sampler = RunSampler.from_run(run_dir, device=device, steps=spec.steps)
    out = {"geneval": _geneval(sampler, spec)}
    if spec.extended:
        out["geneval_extended"] = _geneval(sampler, spec, extended=True)
    log(f"[experiment] {run_dir.name}: GenEval {out['geneval']['overall']:.3f} ({time.perf_counter() - t0:.0f} s)")
    ext = get_extractor("effnet-lite0", device=device)
    real, captions = reference_features(sampler.cfg, spec.fd_n, ext)
    fake = ext(sampler(captions, seed=sampler.cfg.eval.seed))
    buf = io.BytesIO()
    np.savez(buf, real=real.astype(np.float32), fake=fake.astype(np.float32))
    atomic_write_bytes(run_dir / "features.npz", buf.getvalue())
    pr = prdc(real, fake, k=5, splits=1)  # small-N world arms: the whole set
    out["metrics"] = {ext.metric_name: frechet_distance(real, fake),
                      "KID": kid(real, fake, subset_size=min(1000, spec.fd_n))["kid"],
                      **{k: float(pr[k]) for k in ("precision", "recall", "density", "coverage")}}
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_arm(exp: Experiment, arm: str, seed: int, *, root: str | Path = "runs/experiments", scale: float = 1.0,
            extra: tuple[str, ...] = (), commit: str | None = None, any_commit: bool = False,
            keep_checkpoints: bool = False, progress: bool = False, log=print) -> dict:
    """Train (or resume) and evaluate one arm-seed; reuse its result.json when it exists. Returns the result."""
    cfg = arm_config(exp, arm, seed, scale, extra)
    head, dirty = git_commit()
    head = commit or head
    done = find_result(root, exp, arm, seed, cfg, head, any_commit)
    if done is not None:
        log(f"[experiment] reuse {done}")
        result = json.loads((done / "result.json").read_text())
        if exp.eval.extended and "geneval_extended" not in result:  # an add-on evaluation of a finished arm
            t0 = time.perf_counter()
            result["geneval_extended"] = evaluate_extended(done, exp.eval, resolve_device(cfg.train.device))
            result["eval_seconds"] = round(result["eval_seconds"] + time.perf_counter() - t0, 1)
            atomic_write_text(done / "result.json", json.dumps(result, indent=1))
        return result
    folder = arm_dir(root, exp, arm, seed, arm_key(cfg, exp.eval, head))
    device = resolve_device(cfg.train.device)
    log(f"[experiment] {exp.name}/{arm} seed {seed}: {cfg.train.total_nimg} images → {folder}")
    t0 = time.perf_counter()
    summary = train(cfg, folder, progress=progress, log=log, evaluate=LiveEval)
    train_s = time.perf_counter() - t0
    if not summary.get("finished"):
        raise RuntimeError(f"{folder} did not finish training; run the experiment again to resume it")
    with heartbeat("experiment", f"evaluating {arm} seed {seed}", enabled=progress):
        ev = evaluate_arm(folder, exp.eval, device=device, log=log)

    result = {"experiment": exp.name, "arm": arm, "seed": seed, "scale": scale, "commit": head, "dirty": dirty,
              "config_hash": config_hash(cfg, exp.eval), "nimg": cfg.train.total_nimg,
              "train_flops_per_image": count_train_flops(cfg).train, "device": device_string(device),
              "train_seconds": round(train_s, 1), **ev, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(folder / "result.json", json.dumps(result, indent=1))
    if not keep_checkpoints:  # the EMA weights, stats and features stay; optimizer states go
        for p in folder.glob("training-state-*"):
            p.unlink() if p.is_file() else None
    return result


# ------------------------------------------------------------------------------------------------ bootstrap


def _interval(samples: np.ndarray, point: float | None = None) -> tuple[float, float]:
    """Percentile interval; with `point`, shifted by the bootstrap bias (mean of the samples − point). FD needs it:
    a resampled set holds duplicates, fewer distinct samples, and FD is biased upwards at small N."""
    lo, hi = np.quantile(samples, [(1 - CI) / 2, (1 + CI) / 2])
    shift = 0.0 if point is None else float(np.mean(samples)) - point
    return float(lo) - shift, float(hi) - shift


def resample(n_seeds: int, tags: list[str], n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(seed indices [B, S], prompt indices [B, P]): seeds with replacement; prompts with replacement within their
    tag, so position j always holds a prompt of tag tags[j]."""
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    tags_a = np.asarray(tags)
    prompts = np.empty((n_boot, len(tags)), dtype=np.int64)
    for t in dict.fromkeys(tags):
        pos = np.flatnonzero(tags_a == t)
        prompts[:, pos] = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    return seeds, prompts


def geneval_score(correct: np.ndarray, tags: list[str], seed_idx: np.ndarray | None = None,
                  prompt_idx: np.ndarray | None = None, tag: str | None = None) -> np.ndarray:
    """GenEval (mean over tags of the tag's image accuracy; or one `tag`'s accuracy) of correct [S, P, K], for each
    row of the resample indices (or the data as is when none are given: a 1-element array)."""
    c = np.asarray(correct, dtype=np.float64)
    if seed_idx is None:
        seed_idx, prompt_idx = np.arange(c.shape[0])[None], np.arange(c.shape[1])[None]
    g = c[seed_idx[:, :, None], prompt_idx[:, None, :]]  # [B, S, P, K]
    tags_a = np.asarray(tags)
    keep = [tag] if tag else list(dict.fromkeys(tags))
    return np.mean([g[:, :, tags_a == t].mean(axis=(1, 2, 3)) for t in keep], axis=0)


def fd_resampled(real: np.ndarray, fakes: np.ndarray, seed_idx: np.ndarray, sample_idx: np.ndarray) -> np.ndarray:
    """FD (mean over the resampled seeds) of fakes [S, N, D] resampled by rows of sample_idx [B, N] (generated
    sample j answers reference caption j: one index set for every seed) against fixed real statistics.

    Each FD comes from N × N Gram matrices (eval/distribution.py's low-rank identity): with Xc the centred resampled
    rows, Tr Σf = Tr(Xc Xcᵀ)/(N−1) and Tr(ΣrΣf)^½ = Σ √eig(Xc Σr Xcᵀ/(N−1)); Xc = C·F[idx] with C = I − 11ᵀ/N, so
    F Fᵀ and F Σr Fᵀ are computed once per seed."""
    r = GaussianStats.of(real, "real features")
    n = sample_idx.shape[1]
    centre = np.eye(n) - 1.0 / n
    per_seed = []
    for f in fakes:
        f = as_features(f, "fake features")
        per_seed.append((f, f @ f.T, f @ r.sigma @ f.T))
    out = np.empty(len(seed_idx))
    for b, (si, ni) in enumerate(zip(seed_idx, sample_idx)):
        vals = {}
        for s in set(si.tolist()):
            f, gram, gram_r = per_seed[s]
            mu = f[ni].mean(0)
            tr_f = np.trace(centre @ gram[np.ix_(ni, ni)] @ centre) / (n - 1)
            mid = centre @ gram_r[np.ix_(ni, ni)] @ centre / (n - 1)
            root = np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum()
            diff = r.mu - mu
            vals[s] = max(float(diff @ diff + np.trace(r.sigma) + tr_f - 2 * root), 0.0)
        out[b] = np.mean([vals[s] for s in si])
    return out


@dataclass
class ArmData:
    """Every seed's result of one arm, stacked for the bootstrap."""

    name: str
    seeds: list[int]
    results: list[dict]
    correct: np.ndarray  # [S, P, K]
    tags: list[str]
    metrics: dict[str, np.ndarray]  # per-seed scalar metrics
    real: np.ndarray | None = None
    fakes: np.ndarray | None = None  # [S, N, D]
    correct_ext: np.ndarray | None = None  # [S, P, K] on extended prompts (GenEval★), when every seed has it

    @classmethod
    def of(cls, name: str, results: list[dict], folders: list[Path] | None = None) -> ArmData:
        results = sorted(results, key=lambda r: r["seed"])
        tags = results[0]["geneval"]["tags"]
        metrics = {k: np.array([r["metrics"][k] for r in results], np.float64) for k in results[0]["metrics"]}
        real = fakes = None
        if folders and all((f / "features.npz").is_file() for f in folders):
            feats = [np.load(f / "features.npz") for f in sorted(folders, key=lambda f: _seed_of(f))]
            real = feats[0]["real"].astype(np.float64)
            fakes = np.stack([f["fake"].astype(np.float64) for f in feats])
        ext = (np.array([r["geneval_extended"]["correct"] for r in results], dtype=bool)
               if all("geneval_extended" in r for r in results) else None)
        return cls(name, [r["seed"] for r in results], results,
                   np.array([r["geneval"]["correct"] for r in results], dtype=bool), tags, metrics, real, fakes, ext)


def _seed_of(folder: Path) -> int:
    return int(folder.name.rsplit("-s", 1)[1].split("-", 1)[0])


def metric_samples(arm: ArmData, metric: str, seed_idx: np.ndarray, prompt_idx: np.ndarray,
                   sample_idx: np.ndarray) -> tuple[float, np.ndarray]:
    """(point estimate, bootstrap samples) of `metric` ("geneval", "geneval/<tag>", FD key, KID, PRDC keys)."""
    if metric.split("/")[0] in ("geneval", "geneval★"):
        tag = metric.split("/", 1)[1] if "/" in metric else None
        c = arm.correct_ext if metric.startswith("geneval★") else arm.correct
        return (float(geneval_score(c, arm.tags, tag=tag)[0]), geneval_score(c, arm.tags, seed_idx, prompt_idx, tag=tag))
    if metric.startswith("FD-") and arm.fakes is not None:
        return float(arm.metrics[metric].mean()), fd_resampled(arm.real, arm.fakes, seed_idx, sample_idx)
    values = arm.metrics[metric]
    return float(values.mean()), values[seed_idx].mean(axis=1)


def lower_is_better(metric: str) -> bool:
    return metric.startswith("FD") or metric == "KID"


@dataclass
class Summary:
    rows: list[dict]  # one per arm: metric → (point, lo, hi)
    claims: list[dict]
    tags: list[str]


def summarize(arms: list[ArmData], claims: tuple[Claim, ...] = (), *, n_boot: int = 2000, n_boot_fd: int = 200,
              seed: int = 0) -> Summary:
    """Bootstrap intervals for every arm and metric, and the paired difference of each claim (arms share the
    resample indices: they were trained with the same seeds and evaluated on the same prompts and noise)."""
    if not arms:
        raise ValueError("no finished arms to summarise; run the experiment first")
    common = sorted(set.intersection(*[set(a.seeds) for a in arms]))  # pairing needs the same seeds everywhere
    if not common:
        raise ValueError(f"the arms share no seed ({', '.join(f'{a.name}: {a.seeds}' for a in arms)}); "
                         f"run the missing seeds first")
    n_seeds = len(common)
    pos = {a.name: [a.seeds.index(s) for s in common] for a in arms}
    arms = [replace(a, seeds=common, correct=a.correct[pos[a.name]],
                    correct_ext=None if a.correct_ext is None else a.correct_ext[pos[a.name]],
                    fakes=None if a.fakes is None else a.fakes[pos[a.name]],
                    metrics={k: v[pos[a.name]] for k, v in a.metrics.items()}) for a in arms]
    tags = list(dict.fromkeys(arms[0].tags))
    rng = np.random.default_rng(seed)
    seed_idx, prompt_idx = resample(n_seeds, arms[0].tags, n_boot, rng)
    n_fake = 0 if arms[0].fakes is None else arms[0].fakes.shape[1]
    sample_idx = rng.integers(0, max(n_fake, 1), size=(n_boot, max(n_fake, 1)))
    extended = all(a.correct_ext is not None for a in arms)
    metrics = ["geneval", *[f"geneval/{t}" for t in tags], *(["geneval★"] if extended else []), *arms[0].metrics]
    cache: dict[tuple[str, str], tuple[float, np.ndarray]] = {}

    def get(arm: ArmData, metric: str):
        if (arm.name, metric) not in cache:
            fd = metric.startswith("FD-")
            sl = slice(0, n_boot_fd if fd else n_boot)
            cache[arm.name, metric] = metric_samples(arm, metric, seed_idx[sl], prompt_idx[sl], sample_idx[sl])
        return cache[arm.name, metric]

    rows = []
    for a in arms:
        row = {"arm": a.name, "seeds": n_seeds, "nimg": a.results[0]["nimg"]}
        for m in metrics:
            point, boot = get(a, m)
            row[m] = (point, *_interval(boot, point if m.startswith("FD-") else None))
        rows.append(row)
    by_name = {a.name: a for a in arms}
    out_claims = []
    for c in claims:
        if c.better not in by_name or c.worse not in by_name or (c.metric.startswith("geneval★") and not extended):
            out_claims.append({"claim": c, "verdict": "not run", "delta": None})
            continue
        (pb, bb), (pw, bw) = get(by_name[c.better], c.metric), get(by_name[c.worse], c.metric)
        sign = -1.0 if lower_is_better(c.metric) else 1.0  # Δ > 0 means the paper's direction
        delta = sign * (pb - pw)
        lo, hi = _interval(sign * (bb - bw), delta if c.metric.startswith("FD-") else None)
        tie = abs(delta) < 1e-9  # equal estimates (e.g. the same counts of correct images)
        verdict = ("held" if lo > 0 else "reversed" if hi < 0 else "no difference" if tie and lo == hi == 0
                   else "equal estimates, not significant" if tie
                   else "same direction, not significant" if delta > 0 else "opposite direction, not significant")
        out_claims.append({"claim": c, "verdict": verdict, "delta": (delta, lo, hi)})
    return Summary(rows, out_claims, tags)


# ------------------------------------------------------------------------------------------------ rendering


def fmt_ci(v: tuple[float, float, float] | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    p, lo, hi = v
    return f"{p:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table_columns(summary: Summary) -> list[str]:
    cols = ["geneval", *[f"geneval/{t}" for t in summary.tags]]
    extra = [k for k in summary.rows[0] if k not in cols and isinstance(summary.rows[0][k], tuple)]
    return cols + extra


def markdown_table(summary: Summary, labels: dict[str, str] | None = None) -> str:
    """Arms × metrics, each cell `point [lo, hi]` (95 % bootstrap)."""
    cols = table_columns(summary)
    head = ["arm", "images seen", *[c.replace("geneval/", "").replace("geneval", "GenEval") for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.rows:
        name = r["arm"] + (f" ({labels[r['arm']]})" if labels and labels.get(r["arm"]) else "")
        digits = lambda c: 2 if c.startswith("FD") else 4 if c == "KID" else 3  # noqa: E731
        lines.append("| " + " | ".join([name, f"{r['nimg']:,}", *[fmt_ci(r[c], digits(c)) for c in cols]]) + " |")
    return "\n".join(lines)


def claim_lines(summary: Summary) -> list[str]:
    out = []
    for c in summary.claims:
        cl = c["claim"]
        what = f"{cl.better} vs {cl.worse} on {cl.metric}"
        if c["delta"] is None:
            out.append(f"- {what}: not run ({cl.paper})")
            continue
        d, lo, hi = c["delta"]
        unit = " (lower is better; Δ = worse − better)" if lower_is_better(cl.metric) else ""
        out.append(f"- **{c['verdict']}**: {what}, Δ = {d:+.3f} [{lo:+.3f}, {hi:+.3f}]{unit}. Paper: {cl.paper}.")
    return out


def _curves(arms: dict[str, list[Path]], keys: list[str], path: Path) -> Path | None:
    """Metric vs images seen from each arm's in-training evaluations (stats.jsonl): thin lines per seed, thick the
    mean over seeds. None when no arm has in-training evaluations."""
    series = {a: [[s for s in read_stats(f / "stats.jsonl") if any(k in s for k in keys)] for f in fs]
              for a, fs in arms.items()}
    if not any(any(runs) for runs in series.values()):
        return None
    import matplotlib  # heavy: only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only for this figure

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (arm, runs) in enumerate(series.items()):
            color = f"C{i}"
            curves = [[(s["nimg"], s[key]) for s in run if key in s] for run in runs]
            for c in curves:
                if c:
                    ax.plot(*zip(*c), color=color, lw=0.7, alpha=0.4)
            common = sorted(set.intersection(*[{x for x, _ in c} for c in curves])) if all(curves) else []
            if common:
                ax.plot(common, [np.mean([dict(c)[x] for c in curves]) for x in common], color=color, lw=2,
                        marker="o", ms=3, label=arm)
        ax.set_xlabel("images seen")
        ax.set_title(key.replace("eval/", ""), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


TTQ_KEY, TTQ_THRESHOLDS = "eval/class_accuracy", (0.5, 0.8)


def first_reach(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """Images seen at the first in-training evaluation whose value is >= threshold (None: never reached)."""
    return next((n for n, v in sorted(curve) if v >= threshold), None)


def time_to_quality(data: list[ArmData], folders: dict[str, list[Path]]) -> list[dict]:
    """Per arm: images and training FLOPs until the class-accuracy curve (`eval.class_n`) first reaches each threshold,
    median over seeds (a seed that never reaches it counts as ∞), each seed's value, and the speed-up in FLOPs over
    the first arm; the final class accuracy (mean over seeds)."""
    rows, base = [], {}
    for arm in data:
        curves = [[(s["nimg"], s[TTQ_KEY]) for s in read_stats(f / "stats.jsonl") if TTQ_KEY in s]
                  for f in folders[arm.name]]
        if not any(curves):
            continue
        flops = arm.results[0]["train_flops_per_image"]
        row = {"arm": arm.name, "final": float(np.mean([c[-1][1] for c in curves if c])),
               "flops_per_image": flops}
        for th in TTQ_THRESHOLDS:
            reach = [first_reach(c, th) for c in curves]
            med = float(np.median([np.inf if r is None else r for r in reach]))
            row[th] = {"images": med, "flops": med * flops, "seeds": reach}
            if not rows:
                base[th] = row[th]["flops"]
            row[th]["speedup"] = (base[th] / row[th]["flops"] if np.isfinite(base.get(th, np.inf))
                                  and np.isfinite(row[th]["flops"]) else None)
        rows.append(row)
    return rows


def ttq_markdown(rows: list[dict], labels: dict[str, str]) -> str:
    def cell(r, th):
        c = r[th]
        seeds = ", ".join("—" if v is None else f"{v:,}" for v in c["seeds"])
        if not np.isfinite(c["images"]):
            return f"not reached ({seeds})"
        sp = f", {c['speedup']:.2f}×" if c["speedup"] is not None else ""
        return f"{c['images']:,.0f} img = {c['flops']:.3g} FLOPs{sp} ({seeds})"

    head = ["arm", "final class accuracy", *[f"to class accuracy {th}" for th in TTQ_THRESHOLDS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['arm']}: {labels.get(r['arm'], '')} | {r['final']:.3f} | "
                     + " | ".join(cell(r, th) for th in TTQ_THRESHOLDS) + " |")
    return "\n".join(lines)


def collect(exp: Experiment, arms: list[str], seeds: list[int], *, root: str | Path, scale: float = 1.0,
            extra: tuple[str, ...] = (), commit: str | None = None, any_commit: bool = False
            ) -> tuple[list[ArmData], dict[str, list[Path]], list[str]]:
    """(arms with every requested seed finished, their folders, what is missing)."""
    head = git_commit()[0] if commit is None else commit
    data, folders, missing = [], {}, []
    for arm in arms:
        found = [find_result(root, exp, arm, s, arm_config(exp, arm, s, scale, extra), head, any_commit) for s in seeds]
        missing += [f"{arm} seed {s}" for s, f in zip(seeds, found) if f is None]
        done = [f for f in found if f is not None]
        if done:
            folders[arm] = done
            data.append(ArmData.of(arm, [json.loads((f / "result.json").read_text()) for f in done], done))
    return data, folders, missing


def render(exp: Experiment, arms: list[str], seeds: list[int], *, root: str | Path = "runs/experiments",
           md_path: str | Path | None = "EXPERIMENTS.md", scale: float = 1.0, extra: tuple[str, ...] = (),
           command: str = "", commit: str | None = None, any_commit: bool = False, n_boot: int = 2000,
           n_boot_fd: int = 200) -> dict:
    """Summarise the finished arms into runs/experiments/<name>/report.html and, with `md_path`, this experiment's
    section of EXPERIMENTS.md (+ its curve plot under experiments/<name>/). Returns {"summary", "report", ...}."""
    data, folders, missing = collect(exp, arms, seeds, root=root, scale=scale, extra=extra, commit=commit,
                                     any_commit=any_commit)
    if not data:
        raise FileNotFoundError(f"no finished arm of {exp.name!r} under {root} (seeds {seeds}); run "
                                f"`microt2i experiment {exp.name}` first")
    summary = summarize(data, exp.claims, n_boot=n_boot, n_boot_fd=n_boot_fd)
    labels = {a.name: a.label for a in exp.arms}
    results = [r for a in data for r in a.results]
    commits = sorted({r["commit"][:10] + ("+dirty" if r.get("dirty") else "") for r in results})
    devices = sorted({r["device"] for r in results})
    wall = sum(r["train_seconds"] + r["eval_seconds"] for r in results)
    per_arm = max(r["train_seconds"] + r["eval_seconds"] for r in results)
    budget = ", ".join(f"{a.name}: {a.results[0]['nimg']:,} images × {a.results[0]['train_flops_per_image'] / 1e9:.3g} "
                       f"GFLOPs" for a in data)
    meta = [f"command: `{command or f'microt2i experiment {exp.name}'}`", f"commit: {', '.join(commits)}",
            f"preset: {exp.preset} (scale {scale:g}); seeds: {', '.join(map(str, seeds))}",
            f"budget (training images × training FLOPs per image): {budget}",
            f"evaluation: world-GenEval {exp.eval.geneval_per_tag} prompts/tag × {exp.eval.geneval_images} images, "
            f"FD-EffNetLite0 / KID / PRDC (k 5) on {exp.eval.fd_n} held-out scenes; Heun {exp.eval.steps} steps",
            f"device: {'; '.join(devices)}", f"wall time: {wall / 60:.1f} min in all, longest arm-seed "
            f"{per_arm / 60:.1f} min (training + evaluation)"]
    if missing:
        meta.append(f"missing (not in the table): {', '.join(missing)}")
    variant = section_name(exp.name, scale, extra)
    out_dir = Path(root) / exp.name
    keys = [k for k in (TTQ_KEY, "eval/geneval", "eval/FD-EffNetLite0") if any(
        k in st for fs in folders.values() for f in fs for st in read_stats(f / "stats.jsonl"))] or ["eval/geneval"]
    suffix = variant[len(exp.name):]
    curve = _curves(folders, keys, out_dir / f"curves{suffix}.png")
    ttq = time_to_quality(data, folders)
    cols = table_columns(summary)
    html_rows = [{"arm": r["arm"], "images seen": r["nimg"], **{c: fmt_ci(r[c]) for c in cols}} for r in summary.rows]
    body = (f"<p>{html.escape(exp.question)}</p><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in meta) + "</ul>"
            f"<h2>Results (95 % bootstrap intervals)</h2>{html_table(html_rows)}<h2>Paper's direction</h2><ul>"
            + "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in claim_lines(summary)) + "</ul>"
            + (f'<h2>Curves</h2><img src="{data_uri(curve)}" style="max-width:100%">' if curve else "")
            + (f"<h2>Time to quality (median over seeds; speed-up in training FLOPs over the first arm)</h2>"
               f"<pre>{html.escape(ttq_markdown(ttq, labels))}</pre>" if ttq else "")
            + "<h2>Arm-seed folders</h2><ul>" + "".join(f"<li><code>{html.escape(str(f))}</code></li>"
                                                         for fs in folders.values() for f in fs) + "</ul>")
    report = out_dir / f"report{suffix}.html"
    atomic_write_text(report, html_page(f"microt2i experiment {exp.name}", body))
    out = {"summary": summary, "report": report, "missing": missing}
    if md_path:
        md_path = Path(md_path)
        plot = None
        if curve is not None:
            plot = md_path.parent / "experiments" / exp.name / f"curves{suffix}.png"
            atomic_write_bytes(plot, curve.read_bytes())
        section = [f"### `{variant}`", "", exp.question, "", *[f"- {m}" for m in meta], "",
                   markdown_table(summary, labels), "", *claim_lines(summary)]
        if ttq:
            section += ["", "Time to quality (images and training FLOPs until the in-training class accuracy first "
                        "reaches the threshold; median over seeds, each seed in brackets; speed-up in FLOPs over the "
                        "first arm):", "", ttq_markdown(ttq, labels)]
        if plot is not None:
            section += ["", f"![{exp.name}: metric vs images seen]({plot.relative_to(md_path.parent).as_posix()})"]
        write_section(md_path, variant, "\n".join(section))
        out["markdown"] = md_path
    return out


def section_name(name: str, scale: float = 1.0, extra: tuple[str, ...] = ()) -> str:
    """The EXPERIMENTS.md section (and report/plot suffix) of a run: the experiment's name at the default scale
    without extra overrides, else e.g. `captions@scale2` or `masking@3f1c0a9b` (a hash of the overrides), so a
    larger or modified run never replaces the default-scale table."""
    if scale != 1.0:
        name += f"@scale{scale:g}"
    runtime = {".".join(k) for k in RUNTIME_KEYS}  # where and how fast it runs, not what is measured
    extra = tuple(o for o in extra if o.split("=", 1)[0] not in runtime)
    if extra:
        name += "@" + hashlib.sha1("\n".join(extra).encode()).hexdigest()[:8]
    return name


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace (or append) the generated section of experiment `name` in the markdown file, between markers; text
    outside the markers (hand-written notes) is kept."""
    path = Path(path)
    start, end = f"<!-- experiment:{name}:start (generated) -->", f"<!-- experiment:{name}:end -->"
    doc = path.read_text() if path.is_file() else "# Experiments\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, doc)


def run_experiment(name: str, *, scale: float = 1.0, seeds: int = 2, arms: str | list[str] | None = None,
                   render_only: bool = False, root: str | Path = "runs/experiments",
                   md_path: str | Path | None = "EXPERIMENTS.md", extra: tuple[str, ...] = (),
                   any_commit: bool = False, keep_checkpoints: bool = False, command: str = "", progress: bool = False,
                   log=print) -> dict:
    """Run every missing (arm, seed) of experiment `name` (seeds outer, arms inner: after each seed all arms are
    comparable), then render. `extra` overrides apply to every arm (e.g. train.threads=1, train.device=cuda)."""
    exp = get(name)
    chosen = select_arms(exp, arms)
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} must be >= 1 (2 by default)")
    seed_list = list(range(seeds))
    commit = git_commit()[0]
    if not render_only:
        with Progress(len(seed_list) * len(chosen), desc="experiment", unit="arm", enabled=progress, bar=False,
                      heartbeat=False, work=f"{len(chosen)} arms × {len(seed_list)} seeds, {exp.name}") as bar:
            for s in seed_list:
                for arm in chosen:
                    run_arm(exp, arm, s, root=root, scale=scale, extra=extra, commit=commit, any_commit=any_commit,
                            keep_checkpoints=keep_checkpoints, progress=progress, log=log)
                    bar.update(1)
    out = render(exp, chosen, seed_list, root=root, md_path=md_path, scale=scale, extra=extra, command=command,
                 commit=commit, any_commit=any_commit)
    log(f"[experiment] {out['report']}" + (f", {out['markdown']}" if out.get("markdown") else ""))
    return out
