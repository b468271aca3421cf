"""Training-state checkpoints: atomic write, keep the newest few, auto-resume from the run folder (EDM2 habit).

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`:
nothing in it can run code. Inference weights go out separately as safetensors (`models.save_pretrained`).
Sharded (FSDP2) runs write `training-state-<nimg>.dcp/` folders instead (`train/dist.py`, torch.distributed
.checkpoint); both kinds share the numbering, so the newest intact one of either is the resume point.

Integrity: a `.pt` is torch's zip archive, which stores a CRC-32 of every record; a `.dcp` folder holds
`checksums.json` (SHA-256 of each file). Both are verified before a checkpoint is used (`checkpoint_problem`); a
damaged one is skipped for the previous intact one with a warning naming both. `run_lock` keeps a second
process out of a run folder that a live run is writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path

import torch

from ..io import atomic_write_bytes, file_sha256

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


DCP_CHECKSUMS = "checksums.json"


def write_dcp_checksums(folder: str | Path) -> None:
    """SHA-256 of every file of a sharded checkpoint folder, into its `checksums.json` (before the final rename)."""
    folder = Path(folder)
    sums = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != DCP_CHECKSUMS}
    (folder / DCP_CHECKSUMS).write_text(json.dumps(sums, indent=1))


def checkpoint_problem(path: str | Path) -> str | None:
    """None when checkpoint `path` is intact, else what is wrong: a `.pt` whose zip records fail their CRC-32 (flipped
    bytes, truncation), a `.dcp` folder whose files differ from its `checksums.json`."""
    path = Path(path)
    if path.suffix == ".dcp":
        sums_file = path / DCP_CHECKSUMS
        if not sums_file.is_file():
            return None  # written before checksums existed; a torn write never gets the final name
        try:
            sums = json.loads(sums_file.read_text())
        except (OSError, ValueError) as e:
            return f"unreadable {DCP_CHECKSUMS} ({e})"
        for name, digest in sums.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if file_sha256(f) != digest:
                return f"SHA-256 mismatch in {name}"
        return None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"not a complete checkpoint archive ({type(e).__name__}: {e})"
    return f"CRC-32 mismatch in record {bad}" if bad else None


def _load_pt(path: Path, map_location, require: tuple[str, ...]) -> tuple[dict | None, str | None]:
    """(payload, None) or (None, why it cannot be used)."""
    problem = checkpoint_problem(path)
    if problem:
        return None, f"damaged ({problem})"
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        return None, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    missing = [k for k in require if not isinstance(payload, dict) or k not in payload]
    if missing:
        return None, f"incomplete (it lacks {', '.join(missing)})"
    return payload, None


def resume_point(run_dir: str | Path, map_location="cpu", log=print, require: tuple[str, ...] = (),
                 kinds: tuple[str, ...] = (".pt", ".dcp")) -> tuple[Path | None, dict | None]:
    """The newest intact checkpoint of `kinds`: (path, payload) for a `.pt`, (path, None) for a `.dcp` folder (it
    loads into a live model, `dist.load_sharded`), (None, None) when there is none. Each damaged, unreadable or
    incomplete newer one is skipped with a warning naming it and the one used instead."""
    skipped = []
    for path in reversed([p for p in list_checkpoints(run_dir) if p.suffix in kinds]):
        if path.suffix == ".dcp":
            problem = checkpoint_problem(path)
            payload, why = None, f"damaged ({problem})" if problem else None
        else:
            payload, why = _load_pt(path, map_location, require)
        if why:
            skipped.append((path.name, why))
            continue
        for name, why in skipped:
            log(f"[resume] warning: skipping checkpoint {name}: {why}; resuming from {path.name} instead")
        return path, payload
    for name, why in skipped:
        log(f"[resume] warning: skipping checkpoint {name}: {why}; no older intact checkpoint")
    return None, None


def load_latest(run_dir: str | Path, map_location="cpu", log=print, require: tuple[str, ...] = ()) -> dict | None:
    """The newest intact `.pt` checkpoint's payload holding every key in `require`, or None when there is none
    (sharded `.dcp` folders are loaded into a live model by `dist.load_sharded`). A damaged, unreadable or incomplete
    newest file (flipped bytes, a full disk, a foreign file, no EMA; a killed write never gets the final name) falls
    back to the previous one with a warning naming both."""
    return resume_point(run_dir, map_location, log, require, kinds=(".pt",))[1]


def non_finite(*state_dicts: dict) -> list[str]:
    """Names of the floating-point tensors holding a NaN or Inf (a diverged state is never checkpointed)."""
    return [k for sd in state_dicts for k, v in sd.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


# ---- the run-folder lock ----

LOCK_NAME = "run.lock"
_HELD: dict[str, list] = {}  # resolved run folder → [fd, depth]: re-entrant within a process (fine-tune → train)


class RunLockedError(FileExistsError):
    """Another live process holds the run folder."""


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks (Linux), to tell a live holder from a reused pid; "" elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder_alive(h: dict) -> bool:
    if h.get("host") != socket.gethostname() or h.get("pid") == os.getpid():
        return False  # another host: only its flock can tell (held → we never got here)
    try:
        os.kill(int(h["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        pass
    return not h.get("start") or _proc_start(int(h["pid"])) == h.get("start")


def _describe(h: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if h.get("since") else "?"
    return f"pid {h.get('pid', '?')} on host {h.get('host', '?')} (since {since}: {h.get('command', '?')})"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, log=print):
    """Hold `run_dir/run.lock` (an advisory `flock`, with the holder's host, pid and command) while a run writes the
    folder. A second writer fails at once with `RunLockedError`, before touching any file. A lock left by a crashed
    process is stale (the kernel dropped its flock; a same-host pid that no longer runs) and is taken over."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path = run_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"run folder {run_dir} is in use by {_describe(holder)}; wait for that run to end "
                                 f"or stop it, or pass another --run-dir") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and flock: take the new one
    holder = _read_holder(fd)
    if holder and _holder_alive(holder):  # a filesystem whose flock is a no-op (some network mounts)
        os.close(fd)
        raise RunLockedError(f"run folder {run_dir} is in use by {_describe(holder)}; wait for that run to end or "
                             f"stop it, or pass another --run-dir")
    if holder:
        log(f"[lock] taking over the stale lock of {_describe(holder)}: that process is gone")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid()), "since": time.time(),
          "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        path.unlink(missing_ok=True)  # unlinked before unlocking: a waiting opener re-checks the inode
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}
