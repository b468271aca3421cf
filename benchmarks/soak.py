"""Kill-anywhere soak: SIGKILL `microt2i precompute` and `microt2i train` at random moments, restart the
same command each time, and check the result equals an uninterrupted run bit for bit.

    .venv/bin/python benchmarks/soak.py --kills 24 --json soak.json

Each job runs the real CLI in a child process (`soak.py child ...`) whose atomic writes (`microt2i.io`) are
announced on stdout. A kill is aimed either into the middle of a checkpoint / shard write (that child writes those
files in 8 chunks with pauses), or at a random moment of start-up, or of the working job (full-speed writes, so it
lands where the time goes: training steps, encoding, sometimes a write). Checkpoints are written at every step.
At the end:
- training: the exported EMA weights, the last checkpoint (weights, EMA, optimizer) and the loss / grad-norm / lr
  columns of stats.jsonl equal those of an uninterrupted run, and no temp file is left;
- precompute: every file of the store equals the uninterrupted store's, and no temp file is left.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TRAIN = ["world-tiny", "data.num_images=32", "train.batch_size=8", "train.log_every_nimg=8", "train.ckpt_every_nimg=8",
         "train.threads=1", "train.ema_decay=0.9"]
PRECOMPUTE = ["world-tiny", "data.num_images=64", "data.shard_size=8"]
SLOW = re.compile(r"^(training-state-|shard-)")  # writes slowed down (8 chunks with pauses), so kills land inside
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------------------------------------------- child side

def child(argv: list[str], pause: float) -> int:
    """Run `microt2i <argv>` with every atomic write announced ("SOAK write-begin/-end <name>") and checkpoint /
    shard writes slowed down: the real `atomic_write_bytes` runs, only its file object writes in paused chunks."""
    import microt2i.data.precompute  # noqa: F401  (import every writer before patching the names they imported)
    import microt2i.io as mio
    import microt2i.train.loop  # noqa: F401  (imports state, logger, models, config)
    from microt2i.cli import main

    real_bytes, real_fdopen = mio.atomic_write_bytes, os.fdopen

    class SlowFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            step = max(1, len(data) // 8)
            for i in range(0, len(data), step):
                self.f.write(data[i:i + step])
                self.f.flush()
                time.sleep(pause)
            return len(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def announced(path, data):
        name = Path(path).name
        print(f"SOAK write-begin {name}", flush=True)
        slow = bool(SLOW.match(name))
        if slow:
            os.fdopen = lambda fd, mode="r", *a, **k: SlowFile(real_fdopen(fd, mode, *a, **k))
        try:
            real_bytes(path, data)
        finally:
            os.fdopen = real_fdopen
        print(f"SOAK write-end {name}", flush=True)

    def announced_text(path, text):
        announced(path, text.encode())

    for mod in [m for n, m in list(sys.modules.items()) if n.startswith("microt2i") and m is not mio]:
        for attr, fn in (("atomic_write_bytes", announced), ("atomic_write_text", announced_text)):
            if getattr(mod, attr, None) is getattr(mio, attr):
                setattr(mod, attr, fn)
    return main(argv)


# --------------------------------------------------------------------------------------------------- parent side

class Job:
    """One child process; its output lines (with arrival times) are read by a thread into a queue."""

    def __init__(self, argv: list[str], pause: float, log_path: Path):
        self.lines: queue.Queue = queue.Queue()
        self.t0 = time.perf_counter()
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen([sys.executable, __file__, "child", f"--pause={pause}", "--", *argv], env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.phase, self.writing = "start-up", None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _track(self, line: str) -> None:
        if line.startswith("SOAK write-begin "):
            self.writing = line.split()[-1]
        elif line.startswith("SOAK write-end "):
            self.writing = None
        elif line.startswith(("[train] ", "[resume]")):
            self.phase = "training steps"
        elif line.startswith("[precompute] ") and "items →" in line:
            self.phase = "encoding shards"

    def wait_for(self, pattern: str | None, timeout: float) -> bool:
        """Consume output until a line matches `pattern` (True), the child ends or `timeout` passes (False)."""
        end = time.perf_counter() + timeout
        while (left := end - time.perf_counter()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                return False
            self._track(line)
            if pattern and re.search(pattern, line):
                return True
        return False

    def kill(self) -> str | None:
        """SIGKILL the child; where it was (from its output so far), or None when it had already finished."""
        if self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.wait_for(None, 0.2)  # the lines written before the kill
        if self.writing:
            kind = "checkpoint" if "training-state" in self.writing else "shard" if "shard-" in self.writing else "file"
            return f"mid-write of a {kind} ({self.writing})"
        return self.phase

    def finish(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.wait_for(None, 0.5)
        self.log.close()
        return rc


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.is_dir() else []


def _run_to_end(argv: list[str], pause: float, log: Path) -> None:
    job = Job(argv, pause, log)
    if job.finish() != 0:
        raise RuntimeError(f"`microt2i {' '.join(argv)}` failed; see {log}")


def soak(argv: list[str], kills: int, modes: list[tuple[str, float]], rng: random.Random, pause: float, log: Path,
         watch: Path) -> dict:
    """Kill the job `kills` times (mode picked by weight), restarting it each time, then let it finish."""
    events, max_temp = [], 0
    while len(events) < kills:
        mode = rng.choices([m for m, _ in modes], [w for _, w in modes])[0]
        job = Job(argv, pause if mode == "mid-write" else 0.0, log)  # only kills aimed at a write slow writes down
        if mode == "start-up":  # anywhere in the first seconds: imports, config, store / encoder loading
            job.wait_for(None, rng.uniform(0.2, 3.0))
        elif mode == "random":  # a random moment once the job works
            job.wait_for(r"^\[(train|resume|precompute)\]", 120)
            job.wait_for(None, rng.uniform(0.0, 1.5))
        else:  # "mid-write": inside the 1st-3rd checkpoint / shard write, a random fraction of the way through
            for _ in range(rng.randint(1, 3)):
                job.wait_for(r"^SOAK write-begin (training-state|shard-\d+\.safetensors)", 120)
            job.wait_for(None, rng.uniform(0.0, 7 * pause))
        where = job.kill()
        if job.finish() == 0 and where is None:  # the job ended before this kill: nothing left to interrupt
            break
        max_temp = max(max_temp, len(_temp_files(watch)))
        events.append({"mode": mode, "landed": where, "t_s": round(time.perf_counter() - job.t0, 2)})
    job = Job(argv, 0.0, log)
    if job.finish() != 0:
        raise RuntimeError(f"the resumed `microt2i {' '.join(argv)}` failed; see {log}")
    return {"events": events, "max_temp_files_between_runs": max_temp, "temp_files_at_end": _temp_files(watch)}


def _tensors_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _checkpoint_equal(a: Path, b: Path) -> bool:
    import torch

    from microt2i.train.state import list_checkpoints

    pa, pb = (torch.load(list_checkpoints(d)[-1], weights_only=True) for d in (a, b))

    def same(u, v):
        if isinstance(u, torch.Tensor):
            return isinstance(v, torch.Tensor) and torch.equal(u, v)
        if isinstance(u, dict):
            return isinstance(v, dict) and u.keys() == v.keys() and all(same(u[k], v[k]) for k in u)
        if isinstance(u, (list, tuple)):
            return len(u) == len(v) and all(map(same, u, v))
        return u == v

    return all(same(pa[k], pb[k]) for k in ("model", "ema", "optimizer", "nimg", "step", "nan_skips"))


def _stats_equal(a: Path, b: Path) -> bool:
    """Same report lines: nimg, step, grad norm, lr, NaN skips exactly; the loss to 1e-6 relative (the float32 mean
    of the batch loss may round differently when the store was built in-process rather than loaded from the
    cache, a memory-alignment effect on the reduction order; the gradients, hence the weights, are bit-equal)."""
    cols = ("nimg", "step", "grad_norm", "lr", "nan_skips")
    ra, rb = ([json.loads(ln) for ln in (d / "stats.jsonl").read_text().splitlines()] for d in (a, b))
    return len(ra) == len(rb) and all([x.get(c) for c in cols] == [y.get(c) for c in cols]
                                      and abs(x["loss"] - y["loss"]) <= 1e-6 * max(1.0, abs(y["loss"]))
                                      for x, y in zip(ra, rb))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def run(kills: int = 24, precompute_kills: int = 6, seed: int = 0, total_nimg: int = 1200, pause: float = 0.05,
        workdir: str | Path | None = None, log=print) -> dict:
    """The whole soak; returns the summary (also printed)."""
    rng = random.Random(seed)
    root = Path(workdir or tempfile.mkdtemp(prefix="microt2i-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "child.log"
    cache = root / "cache"
    train_args = [*TRAIN, f"train.total_nimg={total_nimg}", f"data.cache_dir={cache}", "--no-progress"]
    pre_args = [*PRECOMPUTE, f"data.cache_dir={cache}"]
    t0 = time.perf_counter()

    log("[soak] uninterrupted reference runs")
    _run_to_end(["precompute", *pre_args, f"data.store_dir={root / 'store-ref'}"], 0.0, logs)
    _run_to_end(["train", *train_args, "--run-dir", str(root / "ref")], 0.0, logs)
    t_ref = time.perf_counter() - t0

    log(f"[soak] precompute: {precompute_kills} kills")
    pre = soak(["precompute", *pre_args, f"data.store_dir={root / 'store'}"], precompute_kills,
               [("start-up", 1), ("random", 2), ("mid-write", 3)], rng, pause, logs, root / "store")
    log(f"[soak] train: {kills - precompute_kills} kills")
    tr = soak(["train", *train_args, "--run-dir", str(root / "run")], kills - precompute_kills,
              [("start-up", 1), ("random", 3), ("mid-write", 4)], rng, pause, logs, root / "run")

    checks = {
        "store_files_equal": _files(root / "store") == _files(root / "store-ref"),
        "ema_weights_equal": _tensors_equal(root / "run" / "ema" / "model.safetensors",
                                            root / "ref" / "ema" / "model.safetensors"),
        "checkpoint_equal": _checkpoint_equal(root / "run", root / "ref"),
        "stats_equal": _stats_equal(root / "run", root / "ref"),
        "no_temp_files": not pre["temp_files_at_end"] and not tr["temp_files_at_end"],
    }
    events = [{"job": "precompute", **e} for e in pre["events"]] + [{"job": "train", **e} for e in tr["events"]]
    landed: dict[str, int] = {}
    for e in events:
        key = f"{e['job']}: " + re.sub(r" \(.*\)$", "", e["landed"])
        landed[key] = landed.get(key, 0) + 1
    summary = {"kills": len(events), "landed": landed, "checks": checks, "equal": all(checks.values()),
               "max_temp_files_between_runs": max(pre["max_temp_files_between_runs"],
                                                  tr["max_temp_files_between_runs"]),
               "total_s": round(time.perf_counter() - t0, 1), "reference_runs_s": round(t_ref, 1),
               "train": {"total_nimg": total_nimg, "batch": 8, "checkpoint_every_nimg": 8},
               "precompute": {"images": 64, "shard_size": 8}, "seed": seed, "events": events, "workdir": str(root)}
    log(f"[soak] {summary['kills']} kills in {summary['total_s']} s; landed: "
        + ", ".join(f"{k} ×{n}" for k, n in sorted(landed.items())))
    log("[soak] checks: " + ", ".join(f"{k}={v}" for k, v in checks.items())
        + f"; at most {summary['max_temp_files_between_runs']} temp file(s) between runs (removed on restart)")
    log(f"[soak] {'PASS' if summary['equal'] else 'FAIL'}: the killed runs "
        f"{'equal' if summary['equal'] else 'DIFFER from'} the uninterrupted ones")
    return summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        p = argparse.ArgumentParser()
        p.add_argument("--pause", type=float, default=0.05)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        a = p.parse_args(argv[1:])
        return child([x for x in a.rest if x != "--"], a.pause)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=24, help="SIGKILLs in all (precompute + train)")
    p.add_argument("--precompute-kills", type=int, default=6)
    p.add_argument("--total-nimg", type=int, default=1200, help="training length (batch 8, a checkpoint every step)")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between the 8 chunks of a slowed write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="default: a new temp folder (kept; it holds child.log)")
    p.add_argument("--json", default=None, help="write the summary here")
    a = p.parse_args(argv)
    if a.precompute_kills > a.kills:
        p.error("--precompute-kills must be <= --kills")
    out = run(a.kills, a.precompute_kills, a.seed, a.total_nimg, a.pause, a.workdir)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    if a.workdir is None and out["equal"]:
        shutil.rmtree(out["workdir"], ignore_errors=True)
    return 0 if out["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
