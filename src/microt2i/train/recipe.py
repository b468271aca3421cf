"""Multi-stage recipes: RunConfigs trained one after the other, each stage starting from the weights the previous
one ended with — MicroDiT's Table 3 (256² masked → 256² unmasked → 512² masked → 512² unmasked), DiT-I's 256²→512².

`run_recipe(stages, root_dir)` trains stage i in `root_dir/<i>-<stage name>/` with the ordinary trainer, so each
stage checkpoints and resumes in its own folder: run it again after an interruption and finished stages are
skipped, the interrupted one resumes bit-exactly, the rest follow (no `pkill`, no wiped caches between stages).

What carries over (as the reference configs load the previous checkpoint, micro_diffusion's configs):
- **same resolution** (stage 1 → 2, 3 → 4): weights, EMA and the AdamW moments — the reference loads the full
  state and resets only the LR; the new stage's hyper-parameters (lr, betas, weight decay) replace the old ones;
- **new resolution** (stage 2 → 3): weights only (the reference's `load_weights_only`), a fresh optimizer, and the
  EMA restarts from the weights. The 2-D sin-cos positions are not weights: they are rebuilt from the new stage's
  `input_size` and `pos_interp_scale` (2 at 512², so the 64×64 grid spans the 32×32 grid's range of positions at
  twice the density — position interpolation, PixArt-α §2.4).

The carried state is written into the new stage's folder as its checkpoint at 0 images, so the trainer starts from
it exactly as it resumes any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..config import RunConfig, to_dict
from ..models import build
from ..progress import Progress
from .dist import broadcast_object, is_main, load_sharded
from .loop import train
from .optim import make_optimizer
from .state import list_checkpoints, resume_point, save_checkpoint


def stage_dirs(stages: list[RunConfig], root_dir: str | Path) -> list[Path]:
    return [Path(root_dir) / f"{i + 1}-{cfg.name}" for i, cfg in enumerate(stages)]


def _checkpoint_nimg(run_dir: Path) -> int:
    """Images seen by the newest checkpoint in run_dir (its file name encodes them), 0 if none."""
    ckpts = list_checkpoints(run_dir)
    return int(ckpts[-1].stem.rsplit("-", 1)[1]) if ckpts else 0


def stage_finished(cfg: RunConfig, run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return _checkpoint_nimg(run_dir) >= cfg.train.total_nimg and (run_dir / "ema" / "model.safetensors").is_file()


def latest_payload(cfg: RunConfig, run_dir: Path) -> dict | None:
    """The newest checkpoint as a plain payload; a sharded (FSDP2) `.dcp` folder is loaded into a CPU copy."""
    path, payload = resume_point(run_dir)  # the newest intact checkpoint of either kind
    if path is None or path.suffix != ".dcp":
        return payload
    net, ema = build(cfg.model), build(cfg.model)
    opt = make_optimizer(net, cfg.train)
    meta = load_sharded(path, net, opt, ema)
    return {**meta, "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict()}


def seed_stage(prev_cfg: RunConfig, prev_dir: str | Path, cfg: RunConfig, run_dir: str | Path) -> str:
    """Write the finished previous stage's state into `run_dir` as the new stage's starting checkpoint.

    Returns "state" (weights, EMA, optimizer moments: same resolution) or "weights" (weights only: new resolution).
    """
    payload = latest_payload(prev_cfg, prev_dir)
    if payload is None or payload["nimg"] < prev_cfg.train.total_nimg:
        raise RuntimeError(f"stage {cfg.name!r} starts from {prev_cfg.name!r}, which has not finished in {prev_dir}; "
                           f"run the recipe from the start (it resumes unfinished stages)")
    with torch.device("meta"):  # shapes and the optimizer's parameter groups, without allocating the network
        net = build(cfg.model)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    carried = {k: tuple(v.shape) for k, v in payload["model"].items()}
    if expected != carried:
        diff = sorted(set(expected.items()) ^ set(carried.items()))[:3]
        raise ValueError(f"stage {cfg.name!r} cannot start from {prev_cfg.name!r}: their networks differ ({diff}); "
                         f"a recipe may change resolution, masking and training settings, not the architecture")
    same_res = cfg.model.input_size == prev_cfg.model.input_size
    optimizer = {"state": payload["optimizer"]["state"] if same_res else {},
                 "param_groups": make_optimizer(net, cfg.train).state_dict()["param_groups"]}  # the new stage's lr, wd
    save_checkpoint(run_dir, 0, {
        "model": payload["model"], "ema": payload["ema"] if same_res else payload["model"], "optimizer": optimizer,
        "nimg": 0, "step": 0, "elapsed": 0.0, "nan_skips": 0, "config": to_dict(cfg),
    })
    return "state" if same_res else "weights"


def run_recipe(stages: list[RunConfig], root_dir: str | Path, *, progress: bool = True, log=print,
               store_fn: Callable[[RunConfig], object] | None = None, evaluate=None) -> list[dict]:
    """Train `stages` in order under `root_dir`, carrying weights from each stage to the next; resumable.

    `store_fn(stage_cfg)` may supply each stage's training store (tests); by default the trainer prepares it from
    `stage_cfg.data`. `evaluate` is the trainer's in-training evaluation (`train.loop._train`). Returns one dict per stage reached (name, dir, finished, skipped, nimg); the last entry also
    holds the trainer's summary ("net", "ema", "store", ...). Stops after a stage that did not finish.
    """
    if not stages:
        raise ValueError("a recipe needs at least one stage")
    log = log if is_main() else (lambda *a, **k: None)
    dirs = stage_dirs(stages, root_dir)
    results: list[dict] = []
    total = sum(s.train.total_nimg for s in stages)  # stages weighted by their images (each draws its own bar)
    bar = Progress(total, desc="recipe", unit="img", enabled=progress and is_main(), bar=False, heartbeat=False,
                   work=f"{len(stages)} stages: " + ", ".join(f"{s.name} {s.train.total_nimg}" for s in stages))
    for i, (cfg, run_dir) in enumerate(zip(stages, dirs)):
        if i:
            bar.update(stages[i - 1].train.total_nimg)
        tag = f"[recipe] stage {i + 1}/{len(stages)} {cfg.name}"
        if i < len(stages) - 1 and stage_finished(cfg, run_dir):
            log(f"{tag}: finished, skipped")
            results.append({"name": cfg.name, "dir": run_dir, "finished": True, "skipped": True,
                            "nimg": _checkpoint_nimg(run_dir)})
            continue
        if i > 0 and not list_checkpoints(run_dir):
            mode = seed_stage(stages[i - 1], dirs[i - 1], cfg, run_dir) if is_main() else None
            mode = broadcast_object(mode)  # under torchrun rank 0 writes the seed; the others wait, then read it
            carried = "weights, EMA and optimizer" if mode == "state" else "weights"
            log(f"{tag}: starts from {dirs[i - 1].name} ({carried})")
        out = train(cfg, run_dir, progress=progress, log=log, store=store_fn(cfg) if store_fn else None,
                    evaluate=evaluate)
        results.append({"name": cfg.name, "dir": run_dir, "skipped": False, **out})
        if not out["finished"]:
            break
    else:
        bar.update(stages[-1].train.total_nimg)
    bar.close()
    return results


def _objective(o) -> str:
    """The objective and its noise distribution, e.g. "edm (P_mean, P_std) = (-0.6, 1.2)" or "vp ε, γ linear"."""
    if o.kind == "edm":
        return f"edm (P_mean, P_std) = ({o.p_mean:g}, {o.p_std:g})"
    if o.kind == "vp":
        return f"vp ε, γ {o.schedule}"
    return f"flow, logit(t) ~ N({o.logit_mean:g}, {o.logit_std:g}²)"


def describe(stages: list[RunConfig]) -> str:
    """One line per stage: resolution, masking, images, batch, LR schedule, clip, EMA, noise distribution."""
    rows = ["stage | model | res | mask | images | batch | lr | schedule | warm-up | clip | EMA | objective"]
    for i, s in enumerate(stages):
        t, o = s.train, s.objective
        sched = t.lr_schedule + (f" → {t.min_lr_ratio:g}·lr" if t.lr_schedule == "cosine" else "")
        ema = "none" if t.ema_decay == 0 else f"{t.ema_decay:g} from {t.ema_start_nimg:,}"
        mask = getattr(s.model, "mask_ratio", 0.0)
        rows.append(f"{i + 1} {s.name} | {s.model.family} | {s.data.resolution} | {mask:g} "
                    f"| {t.total_nimg:,} | {t.batch_size} | {t.lr:g} | {sched} | {t.warmup_nimg:,} | {t.grad_clip:g} "
                    f"| {ema} | {_objective(o)}")
    return "\n".join(rows)
