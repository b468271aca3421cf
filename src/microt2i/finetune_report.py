"""The fine-tune's before/after comparison (`microt2i train … train.init=…`): the init model and the fine-tuned EMA
sampled on the same prompts and noise seeds, as grids in the run folder, plus `finetune.json` (with the world's
background statistics when the fine-tune data came from the world)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .diffusion.generate import generate
from .encoders import TextEncoder, codec_of
from .eval.pages import save_grid
from .eval.references import REFERENCE_SEED
from .io import atomic_write_text
from .train.artifacts import load_run
from .train.finetune import init_sampler
from .world import make_dataset
from .world.grid import world_background_share


def before_after(run_dir: str | Path, prompts: list[str], *, seed: int = 0, steps: int | None = None,
                 device="cpu", upscale: int = 4, log=print) -> dict:
    """Sample the init model and the fine-tuned EMA on the same prompts and noise seeds; write
    `finetune_before.png` / `finetune_after.png` into the run folder. Returns {"before", "after": uint8 images}."""
    run_dir = Path(run_dir)
    cfg, net, null_tokens, null_mask = load_run(run_dir, device=device)
    text = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device)
    emb = text.encode(list(prompts))
    codec = codec_of(cfg.data, device=device)
    src_cfg, src_net = init_sampler(cfg, run_dir, device)
    out = {}
    for tag, c, n in (("before", src_cfg, src_net), ("after", cfg, net)):
        images = generate(n, c, emb.tokens, emb.mask, null_tokens, null_mask, codec=codec, steps=steps, seed=seed,
                          device=device)
        save_grid(images, run_dir / f"finetune_{tag}.png", nrow=int(np.ceil(np.sqrt(len(images)))), upscale=upscale)
        out[tag] = images
    log(f"[finetune] before/after grids → {run_dir / 'finetune_before.png'}, {run_dir / 'finetune_after.png'}")
    return out


def finetune_report(run_dir: str | Path, store, *, n: int = 16, device="cpu", log=print) -> dict:
    """Before/after grids of a finished fine-tune (`before_after`) and `finetune.json`. Prompts: held-out world
    captions of every background when the fine-tune data came from the world (keys `world-…`: the style shift shows
    on prompts that were not in it), else the fine-tune set's first captions. World runs also get the border
    statistics of `world_background_share` before and after."""
    run_dir = Path(run_dir)
    cfg = load_run(run_dir)[0]
    keys = list(getattr(store, "keys", []) or [])
    world = bool(keys) and all(str(k).startswith("world-") for k in keys[:n])
    if world:
        _, prompts, _ = make_dataset(n, seed=REFERENCE_SEED, resolution=cfg.data.resolution)
    else:
        prompts = list(store.captions[:n])
    images = before_after(run_dir, prompts, seed=cfg.eval.seed, device=device, log=log)
    report = {"prompts": "held-out world captions" if world else "fine-tune captions", "n": len(prompts),
              "grids": {"before": "finetune_before.png", "after": "finetune_after.png"}}
    if world:
        report |= {tag: world_background_share(images[tag], ()) for tag in ("before", "after")}
    atomic_write_text(run_dir / "finetune.json", json.dumps(report, indent=1))
    return report
