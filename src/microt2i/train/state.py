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
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:  # disk full, quota, permissions: the temp file is gone, older checkpoints are untouched
        older = [p.name for p in list_checkpoints(run_dir)]
        raise OSError(e.errno, f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoints "
                               f"{older or '(none)'} are intact. Free space in {Path(run_dir)} and re-run the same "
                               f"command: it resumes from the newest one") from e
    prune_checkpoints(run_dir, keep)
    return path


def remove_stale_temp(run_dir: str | Path) -> list[str]:
    """Delete temp files / folders that killed checkpoint writes left behind (`.training-state-*.tmp`,
    `training-state-*.dcp.tmp`), so repeated kills cannot fill the disk. Call before any checkpoint is written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.iterdir() if p.name.endswith(".tmp") and p.name.lstrip(".").startswith(
        "training-state-")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return [p.name for p in stale]


TRAINING_KEYS = ("model", "ema", "optimizer", "nimg", "step", "elapsed", "nan_skips", "config")  # what train writes


def load_latest(run_dir: str | Path, map_location="cpu", log=print, require: tuple[str, ...] = ()) -> dict | None:
    """The newest readable `.pt` checkpoint's payload holding every key in `require`, or None when there is none
    (sharded `.dcp` folders are loaded into a live model by `dist.load_sharded`). An unreadable or incomplete newest
    file (a damaged disk, a foreign file, no EMA; a killed write never gets the final name) falls back to the
    previous one with a warning."""
    for path in reversed([p for p in list_checkpoints(run_dir) if p.suffix == ".pt"]):
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:
            log(f"[resume] warning: skipping unreadable checkpoint {path.name}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}")
            continue
        missing = [k for k in require if not isinstance(payload, dict) or k not in payload]
        if missing:
            log(f"[resume] warning: skipping checkpoint {path.name}: it lacks {', '.join(missing)}")
            continue
        return payload
    return None
