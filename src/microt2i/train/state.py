"""Training-state checkpoints: atomic write, keep the newest few, auto-resume from the run folder (EDM2 habit).

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`:
nothing in it can run code. Inference weights go out separately as safetensors (`models.save_pretrained`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from ..io import atomic_write_bytes

_NAME = re.compile(r"^training-state-(\d{12})\.pt$")


def checkpoint_path(run_dir: str | Path, nimg: int) -> Path:
    return Path(run_dir) / f"training-state-{nimg:012d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | Path, nimg: int, payload: dict, *, keep: int = 2) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = checkpoint_path(run_dir, nimg)
    atomic_write_bytes(path, buf.getvalue())
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(run_dir: str | Path, map_location="cpu") -> dict | None:
    """The newest readable checkpoint's payload, or None for a fresh run."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # a torn file from a crash mid-write would not be renamed, but be safe
            print(f"[resume] skipping unreadable checkpoint {path.name}: {e}")
    return None
