"""The single-seed lever probes behind EXPERIMENTS.md "time-to-quality" (their rows are probes.jsonl beside this file).

Trains world-s with dotted overrides in chunks of CHUNK images (each chunk resumes the run) and after each chunk
scores the EMA weights on 64 single-object grid prompts with the world detector (class and colour accuracy), the
demo's own scoring (`world/grid.py`). One thread, so several probes share a CPU. The overrides apply to world-s as
it is at the time: session 6's rows in probes.jsonl name the recipe they ran on ("base").

    python experiments/time-to-quality/probe.py NAME NIMG CHUNK [overrides ...]
    python experiments/time-to-quality/probe.py flow 24576 6144 model.width=128 objective.kind=flow
"""

import json
import sys
import time
from pathlib import Path

import torch

from microt2i import presets
from microt2i.config import apply_overrides
from microt2i.encoders import TextEncoder, codec_of
from microt2i.models import build
from microt2i.report import save_grid
from microt2i.sample import generate
from microt2i.train.loop import train
from microt2i.train.state import load_latest
from microt2i.world.grid import grid_prompts, score_samples


def grid_scorer(cfg):
    """score(net, null_tokens, null_mask, grid_png) -> metrics: the 64 single-object grid prompts of seed 0 (encoded
    once) sampled with cfg's sampler and CFG and judged by the world detector; the grid is saved to look at. Shared
    with backbones.py, so both scripts' rows are scored alike."""
    specs = grid_prompts(64, 0)
    emb = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len).encode([s["prompt"] for s in specs])
    codec = codec_of(cfg.data)

    def score(net, null_tokens, null_mask, grid_png: Path) -> dict:
        with torch.no_grad():
            images = generate(net, cfg, emb.tokens, emb.mask, null_tokens, null_mask, codec=codec)
        save_grid(images, grid_png, nrow=8)
        return score_samples(images, specs)[0]

    return score


def main(name: str, total: int, chunk: int, overrides: list[str], root: Path = Path("runs/probes")) -> None:
    torch.set_num_threads(1)
    cfg = apply_overrides(presets.get("world-s"), [f"train.total_nimg={total}", "train.threads=1", *overrides])
    run = root / name
    score = grid_scorer(cfg)
    t0, nimg = time.time(), 0
    while nimg < total:
        nimg = min(total, nimg + chunk)
        r = train(cfg, run, stop_nimg=nimg, progress=False, log=lambda *a, **k: None)
        null_tokens, null_mask = r["store"].null_text(cfg.objective.uncond)
        net = build(cfg.model)
        net.load_state_dict(load_latest(run)["ema"])
        metrics = score(net, null_tokens, null_mask, run / f"grid-{nimg:06d}.png")
        row = {"name": name, "nimg": nimg, "elapsed_s": r["elapsed_s"], "wall": round(time.time() - t0),
               "class": metrics["class_accuracy"], "color": metrics["color_accuracy"]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
