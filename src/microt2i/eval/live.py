"""In-training evaluation every `eval.every_nimg` images (`reference/evaluation.md` §7, §8.4).

With the EMA weights: the fixed-prompt, fixed-seed grid (saved as PNG; its prompts: `eval.prompts`, else the world
grid or the data's own captions, data/prompts.py), and on world data a mini world-GenEval (the
first `eval.geneval_per_tag` world prompts of each tag, one image each, the world detector) and FD-EffNetLite0 of
`eval.fd_n` samples against the cached features of as many held-out world renders. One JSON line per evaluation
is appended to the run's stats.jsonl (and TensorBoard when it is installed).

The evaluation never touches training randomness: it runs inside a fork of the torch, numpy and Python RNG
states (sampling seeds its own generators anyway), so a run with in-training eval trains bit-exactly like one
without, and resumes exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import torch
from .detectors import WorldDetector
from .distribution import frechet_distance
from .features import get_extractor
from .pages import save_grid
from .runner import RunSampler, reference_features, run_geneval, world_geneval_records
from ..data.prompts import grid_nrow, grid_prompts as run_grid_prompts, read_prompts_spec
from ..encoders import TextEncoder, codec_of
from ..train.dist import is_main
from ..world.grid import grid_prompts, score_samples


@contextlib.contextmanager
def isolated_rng():
    """Restore the global torch / numpy / Python RNG states on exit."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class LiveEval:
    """`due(nimg, batch_size)` says when; `__call__(net, nimg, null_tokens, null_mask)` returns the stats line."""

    def __init__(self, cfg, run_dir: str | Path, device, log=print, captions=None):
        """`captions`: the training data's captions (or a callable giving them), the grid's prompts on non-world
        data without `eval.prompts` (data/prompts.py)."""
        self.cfg, self.run_dir, self.device, self.log = cfg, Path(run_dir), device, log
        self.captions = captions
        self._parts = None  # TensorBoard / W&B mirroring of these stats: train/logger.py
        if cfg.eval.prompts:  # a missing / empty prompts file fails before training, not at the first evaluation
            read_prompts_spec(cfg.eval.prompts)

    def due(self, nimg: int, batch_size: int) -> bool:
        every = self.cfg.eval.every_nimg
        crossed = nimg // every != (nimg - batch_size) // every
        return crossed or nimg >= self.cfg.train.total_nimg

    def _setup(self) -> dict:
        """Text encoder, codec, prompts and reference features, built on the first evaluation only."""
        e, d = self.cfg.eval, self.cfg.data
        text = TextEncoder(d.text_encoder, max_length=d.text_len, device=self.device)
        grid, where = run_grid_prompts(self.cfg, self.captions)
        parts = {"sampler": RunSampler(None, self.cfg, text, codec_of(d, device=self.device), None, None,
                                       self.device),
                 "grid": grid, "nrow": grid_nrow(len(grid), e.grid_size),
                 "records": world_geneval_records(n=e.geneval_per_tag, per_tag=e.geneval_per_tag),
                 "detector": WorldDetector()}
        world = d.source == "world"  # the world detector and world references score world prompts only
        parts["world"] = world
        if not world and (e.class_n or e.geneval_per_tag or e.fd_n):
            self.log(f"[eval] data.source={d.source!r}: grid of {len(grid)} prompts ({where}); world GenEval, class "
                     f"accuracy and world-reference FD are skipped (they score world prompts only)")
        if e.class_n and world:  # the time-to-quality curve: class / colour accuracy of class_n single-object prompts
            parts["class_specs"] = grid_prompts(e.class_n, e.seed)
        if e.fd_n and world:
            parts["extractor"] = get_extractor("effnet-lite0", device=self.device)
            parts["real"], parts["captions"] = reference_features(self.cfg, e.fd_n, parts["extractor"])
        return parts

    @torch.no_grad()
    def __call__(self, net, nimg: int, null_tokens, null_mask) -> dict:
        t0 = time.perf_counter()
        e = self.cfg.eval
        with isolated_rng():
            p = self._parts = self._parts or self._setup()
            sample = p["sampler"]
            sample.net, sample.null_tokens, sample.null_mask = net, null_tokens, null_mask
            stats: dict = {"nimg": nimg}
            grid = dataclasses.replace(sample, cfg_scale=e.grid_scale)(p["grid"], seed=e.seed)  # qualitative: grid CFG
            path = self.run_dir / "eval" / f"grid-{nimg:012d}.png"
            if is_main():  # every rank samples (a sharded EMA needs them all); one writes
                save_grid(grid, path, nrow=p["nrow"], upscale=max(1, 128 // grid.shape[1]))
            stats["eval/grid"] = str(path.relative_to(self.run_dir))
            if e.class_n and p["world"]:
                specs = p["class_specs"]
                metrics, _ = score_samples(sample([s["prompt"] for s in specs], seed=e.seed), specs)
                stats["eval/class_accuracy"] = metrics["class_accuracy"]
                stats["eval/color_accuracy"] = metrics["color_accuracy"]
            if e.geneval_per_tag and p["world"]:
                summary, _, _ = run_geneval(sample, p["records"], p["detector"], images_per_prompt=1, seed=e.seed)
                stats["eval/geneval"] = summary["overall"]
                stats.update({f"eval/geneval/{tag}": s["score"] for tag, s in summary["tags"].items()})
            if e.fd_n and p["world"]:
                fake = p["extractor"](sample(p["captions"], seed=e.seed))
                stats[f"eval/{p['extractor'].metric_name}"] = frechet_distance(p["real"], fake)
                stats["eval/fd_n"] = e.fd_n
        stats["eval/seconds"] = round(time.perf_counter() - t0, 2)
        shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in stats.items() if isinstance(v, float) and k != "eval/seconds")
        self.log(f"[eval] {nimg} images: {shown} ({stats['eval/seconds']} s)")
        return stats
