"""`microt2i demo`: train a world preset on the CPU, sample a fixed-prompt, fixed-seed grid with the EMA weights,
score it with the world's detector, and write runs/demo/ (grid, loss curve, EMA safetensors, config, report).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


from . import presets
from .config import RunConfig, apply_overrides
from .eval.live import LiveEval
from .io import atomic_write_text
from .progress import heartbeat
from .world.grid import grid_prompts, score_samples  # noqa: F401  (the demo's prompts and scoring live in world/)
import shutil
import torch
from .augment.cutmix import describe as describe_augment
from .config import save_yaml
from .diffusion.generate import generate
from .encoders import TextEncoder, codec_of
from .eval.pages import loss_plot, read_stats, save_grid, write_report
from .eval.runner import mini_geneval
from .train.loop import resolve_device, train
from .train.recipe import run_recipe


def _run_stages(stages: list[RunConfig], run_dir: Path, *, progress: bool, log) -> dict:
    """Run a recipe under run_dir/stages/ and gather its stages' stats into run_dir/stats.jsonl on one nimg axis."""
    results = run_recipe(stages, run_dir / "stages", progress=progress, log=log, evaluate=LiveEval)
    lines, offset = [], 0
    for cfg, r in zip(stages, results):
        for st in read_stats(r["dir"] / "stats.jsonl"):
            lines.append(json.dumps({**st, "nimg": st["nimg"] + offset, "stage": cfg.name}))
        offset += cfg.train.total_nimg
    atomic_write_text(run_dir / "stats.jsonl", "".join(ln + "\n" for ln in lines))
    last = results[-1]
    finished = last["finished"] and len(results) == len(stages)
    if finished:  # the final stage's inference artifacts next to the demo's, for `microt2i sample run_dir`

        shutil.copytree(last["dir"] / "ema", run_dir / "ema", dirs_exist_ok=True)
        shutil.copy2(last["dir"] / "null_text.safetensors", run_dir / "null_text.safetensors")
    return {**last, "finished": finished, "nimg": offset if finished else last["nimg"]}


def run_demo(run_dir: str | Path = "runs/demo", *, preset: str = "world-s", overrides: list[str] | None = None,
             progress: bool = True, log=print) -> dict:
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if preset in presets.RECIPES:  # a multi-stage recipe (MicroDiT's Table 3 on the world): sample the last stage
        stages = [apply_overrides(s, overrides or []) for s in presets.recipe(preset)]
        result, cfg = _run_stages(stages, run_dir, progress=progress, log=log), stages[-1]
    else:
        cfg: RunConfig = apply_overrides(presets.get(preset), overrides or [])
        log(f"[demo] image augmentation: {describe_augment(cfg.augment)}")
        result = train(cfg, run_dir, progress=progress, log=log, evaluate=LiveEval)
    t_train = time.perf_counter() - t0
    if not result["finished"]:
        raise RuntimeError(f"training in {run_dir} stopped at {result['nimg']} of {cfg.train.total_nimg} images")

    # Sample the fixed grid with the EMA weights.
    device = resolve_device(cfg.train.device)
    specs = grid_prompts(cfg.eval.grid_size ** 2, cfg.eval.seed)
    text = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device)
    emb = text.encode([s["prompt"] for s in specs])
    null_tokens, null_mask = result["store"].null_text(cfg.objective.uncond)
    codec = codec_of(cfg.data, device=device)
    t1 = time.perf_counter()
    with torch.no_grad():
        images = generate(result["ema"], cfg, emb.tokens, emb.mask, null_tokens, null_mask, codec=codec,
                          cfg_scale=cfg.eval.grid_scale, device=device, progress=progress, desc="demo grid")
    t_sample = time.perf_counter() - t1

    metrics, rows = score_samples(images, specs)
    # a mini world-GenEval (eval/geneval.py): 4 prompts per tag, one image each, judged by the world detector
    with heartbeat("demo", "scoring a mini world-GenEval (4 prompts per tag)", enabled=progress):
        metrics.update(mini_geneval(result["ema"], cfg, text, codec, null_tokens, null_mask, device=device))
    save_grid(images, run_dir / "grid.png", nrow=cfg.eval.grid_size, upscale=max(1, 128 // images.shape[1]))
    stats = read_stats(run_dir / "stats.jsonl")
    loss_plot(stats, run_dir / "loss.png")
    final_loss = next((s["loss"] for s in reversed(stats) if s.get("loss") is not None), float("nan"))  # eval: none
    metrics.update({"final_loss": final_loss, "images_seen": result["nimg"],
                    "params": result["params"], "train_seconds": round(t_train, 1), "sample_seconds": round(t_sample, 1),
                    "sampler": f"{cfg.eval.sampler} {cfg.eval.steps} steps, cfg {cfg.eval.cfg_scale}",
                    "augmentation": describe_augment(cfg.augment)})
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    save_yaml(cfg, run_dir / "config.yaml")
    for r, s in zip(rows, specs):
        r["prompt"] = s["prompt"]
    write_report(run_dir, title=f"microt2i demo — {cfg.name}", metrics=metrics,
                 images={"samples (EMA weights, fixed prompts and seeds)": "grid.png", "training loss": "loss.png"},
                 samples=rows, config_text=(run_dir / "config.yaml").read_text())
    log(f"[demo] hit-rate {metrics['hit_rate']:.2f} (class {metrics['class_accuracy']:.2f}, colour "
        f"{metrics['color_accuracy']:.2f}, chance {metrics['chance_hit_rate']:.3f}); mini world-GenEval "
        f"{metrics['geneval']:.2f}; report: {run_dir / 'report.html'}")
    return metrics
