"""Training-state checkpoints: atomic write, keep the newest few, auto-resume from the run folder (EDM2 habit).

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`:
nothing in it can run code. Inference weights go out separately as safetensors (`models.save_pretrained`).
Sharded (FSDP2) runs write `training-state-<nimg>.dcp/` folders instead (`train/dist.py`, torch.distributed
.checkpoint); both kinds share the numbering, so the newest of either is the resume point.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import torch

from ..io import atomic_write_bytes

_NAME = re.compile(r"^training-state-(\d{12})\.(pt|dcp)$")


def checkpoint_path(run_dir: str | Path, nimg: int, *, sharded: bool = False) -> Path:
    return Path(run_dir) / f"training-state-{nimg:012d}.{'dcp' if sharded else 'pt'}"


def checkpoint_nimg(path: str | Path) -> int:
    return int(_NAME.match(Path(path).name).group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first: `.pt` files and `.dcp` folders (a torn write leaves only a `.tmp`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), m.group(2) == "dcp", p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for *_, p in sorted(found)]


def prune_checkpoints(run_dir: str | Path, keep: int = 2) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | Path, nimg: int, payload: dict, *, keep: int = 2) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = checkpoint_path(run_dir, nimg)
    atomic_write_bytes(path, buf.getvalue())
    prune_checkpoints(run_dir, keep)
    return path


def load_latest(run_dir: str | Path, map_location="cpu") -> dict | None:
    """The newest readable `.pt` checkpoint's payload, or None for a fresh run (sharded `.dcp` folders are loaded
    into a live model by `dist.load_sharded`)."""
    for path in reversed([p for p in list_checkpoints(run_dir) if p.suffix == ".pt"]):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # a torn file from a crash mid-write would not be renamed, but be safe
            print(f"[resume] skipping unreadable checkpoint {path.name}: {e}")
    return None
