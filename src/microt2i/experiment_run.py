"""Running one (arm, seed) of an experiment: train it (resumable, reused when finished) and evaluate it."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
import numpy as np
from .io import atomic_write_bytes, atomic_write_text
from .progress import heartbeat
from .eval.live import LiveEval
from .bench import device_string
from .cost import count_train_flops
from .encoders.extender import TemplateExtender
from .eval.detectors import WorldDetector
from .eval.distribution import frechet_distance, kid, prdc
from .eval.features import get_extractor
from .eval.runner import GENEVAL_SEED, RunSampler, reference_features, run_geneval, world_geneval_records
from .train.loop import resolve_device, train
from .experiment_defs import EvalSpec, Experiment, arm_config, arm_dir, arm_key, config_hash, find_result, git_commit


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
