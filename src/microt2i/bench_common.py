"""What the benchmarks share: the device, interleaved timing of compared steps, one training step, the device's
name, and appending dated rows to a BENCHMARKS.md table."""

from __future__ import annotations

import platform
import time
from pathlib import Path
import torch
import torch.nn.functional as F
from .io import atomic_write_text


def bench_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(steps_fns: dict, batch: int, steps: int, repeats: int, device: torch.device) -> dict:
    """img/s of each `steps_fns[key]()` (one step of `batch` images) over `repeats` rounds that alternate the order
    (A B C, C B A, ...); each round times `steps` consecutive steps of one key. Returns {key: [img/s per round]}."""
    runs: dict[str, list[float]] = {key: [] for key in steps_fns}
    order = list(steps_fns)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                steps_fns[key]()
            sync(device)
            runs[key].append(batch * steps / (time.perf_counter() - t0))
    return runs


def train_step(forward, model, opt, target, precision: str, device: torch.device) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = forward(model)
    F.mse_loss(out.float(), target).backward()
    opt.step()


def device_string(device: torch.device | str = "auto") -> str:
    """Human-readable device name: GPU model, or CPU model and torch's intra-op thread count."""
    device = bench_device(str(device))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def append_rows(path: str | Path, section: str, header: str, rows: str, intro: str = "") -> None:
    """Append `rows` to the table of the Markdown section `section` (its heading line), after the table's last row,
    even if other sections follow it. A missing file, section or table is created (the section at the end of the
    file, with `intro` under its heading); other sections are left as they are."""
    p = Path(path)
    text = p.read_text() if p.is_file() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n" + (f"{intro}\n\n" if intro else "") + header
    start = text.index(section) + len(section)
    if text.find(header, start) < 0:  # the section exists without this table: put it under the heading
        nl = text.find("\n", start)
        at = len(text) if nl < 0 else nl + 1
        text = text[:at] + "\n" + header + text[at:]
    end = text.index(header, start) + len(header)
    while text.startswith("|", end):
        nl = text.find("\n", end)
        end = len(text) if nl < 0 else nl + 1
    head = text[:end] if text[:end].endswith("\n") else text[:end] + "\n"
    atomic_write_text(p, head + rows + text[end:])
