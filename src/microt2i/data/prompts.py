"""The prompts of a run's sample grid (`eval.prompts`; diffusers' `--validation_prompts`, kohya's `--sample_prompts`).

Which prompts the in-training grid (eval/live.py) and the final grid (report.final_grid) sample, on any data source:
- `eval.prompts` set: those prompts, in order — a list in the config, or a file with one prompt per non-empty line
  (a `.jsonl` file: each line's "prompt" field);
- world data (`data.source=world`), nothing set: the world's fixed single-object grid (world/grid.py), as before;
- any other source, nothing set: `grid_size²` distinct captions of the data set itself, evenly spaced over it (for
  ImageNet / folder stores these are the class prompts precompute wrote, "An image of a <class>"); with a held-out
  split (`data.val_fraction`) they come from the held-out samples, so the grid shows prompts never trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..world.grid import grid_prompts as world_grid
from .captions import read_text_utf8
from .holdout import split_indices
from .mix import open_mixture
from .store import open_store


def read_prompts_spec(spec, key: str = "eval.prompts") -> list[str]:
    """The prompts of a list or of a prompts file (`spec` a path); one ConfigError for a missing / empty file or a
    blank prompt."""
    if isinstance(spec, str):
        p = Path(spec).expanduser()
        if not p.is_file():
            raise ConfigError(f"{key}={spec!r}: no such prompts file; write one prompt per line (or pass a list: "
                              f"{key}='[\"a red cube\", \"two blue spheres\"]')")
        lines = [ln.strip() for ln in read_text_utf8(p).splitlines() if ln.strip()]
        if p.suffix == ".jsonl":
            try:
                lines = [str(json.loads(ln)["prompt"]).strip() for ln in lines]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{key}={spec!r}: every .jsonl line needs a \"prompt\" field") from None
        prompts = lines
        if not prompts:
            raise ConfigError(f"{key}={spec!r} holds no prompts; write one prompt per line")
    else:
        prompts = [str(s).strip() for s in spec]
        if not prompts or not all(prompts):
            raise ConfigError(f"{key}={list(spec)!r} must list non-empty prompts (or be a prompts file)")
    return [s for s in prompts if s]


def caption_prompts(captions: list[str], n: int, indices=None) -> list[str]:
    """Up to `n` distinct captions, evenly spaced over `captions` (or over its entries `indices`)."""
    idx = np.arange(len(captions)) if indices is None else np.asarray(indices)
    seen: dict[str, None] = {}
    for i in idx[np.unique(np.linspace(0, len(idx) - 1, num=min(len(idx), 4 * n)).round().astype(int))]:
        c = (captions[int(i)] or "").strip()
        if c:
            seen.setdefault(c, None)
        if len(seen) == n:
            break
    if not seen:
        raise ConfigError("the data set has no captions to sample a grid from; set eval.prompts=<prompts file>")
    return list(seen)


def grid_prompts(cfg, captions=None) -> tuple[list[str], str]:
    """(prompts, where they come from: "eval.prompts" | "world" | "captions") of `cfg`'s sample grid. `captions` is
    the training data's caption list (or a callable returning it), read only for the captions default."""
    e = cfg.eval
    if e.prompts:
        return read_prompts_spec(e.prompts), "eval.prompts"
    if cfg.data.source == "world":
        return [s["prompt"] for s in world_grid(e.grid_size ** 2, e.seed)], "world"
    caps = captions() if callable(captions) else captions
    if caps is None:
        caps = data_captions(cfg)
    held = None
    if getattr(cfg.data, "val_fraction", 0.0):
        held = split_indices(len(caps), cfg.data.val_fraction, cfg.data.seed)[1]
    return caption_prompts(caps, e.grid_size ** 2, held), "captions"


def data_captions(cfg) -> list[str]:
    """The captions of the run's training store (`data.store_dir`, or the mixture of `data.mix`)."""
    if cfg.data.mix:
        return open_mixture(cfg.data, seed=cfg.train.seed, text_encoder=lambda: None, log=lambda *a, **k: None).captions
    if not cfg.data.store_dir:
        raise ConfigError(f"data.source={cfg.data.source!r} without data.store_dir has no captions for the sample "
                          f"grid; set eval.prompts=<prompts file>")
    return open_store(cfg.data.store_dir).captions


def grid_nrow(n: int, grid_size: int) -> int:
    """Images per row of a grid of n prompts: `grid_size` for the usual grid_size² prompts, else ≈ √n."""
    return grid_size if n == grid_size ** 2 else max(1, int(np.ceil(np.sqrt(n))))
