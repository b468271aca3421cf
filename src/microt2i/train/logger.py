"""Training logs: stats.jsonl always (one JSON object per report, EDM2 habit); TensorBoard and / or W&B on request
(`train.tensorboard=true`, `train.wandb=<project>`), each only if its package is installed — asking for one that
is not is an error before training starts, never a silently missing log.

Resuming truncates stats.jsonl to the checkpoint's nimg (reports written after it are replayed by the resumed run);
TensorBoard events are keyed by nimg, and a W&B run keeps its id in `<run>/wandb_id.txt` and resumes it. In-training
evaluation lines (eval/live.py) carry `eval/grid`, the grid PNG's path: it is logged as an image.
Only rank 0 constructs a logger.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError
from ..io import atomic_write_text
import numpy as np
from PIL import Image


def _report_nimg(line: str) -> float:
    """The nimg of one stats.jsonl line; inf for a blank or torn line (a write cut by a crash), so it is dropped."""
    try:
        return json.loads(line)["nimg"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class StatsLog:
    """Appends one JSON object per report to stats.jsonl (every stat, EDM2 habit)."""

    def __init__(self, path: Path, resume_nimg: int):
        self.path = path
        if path.exists():  # drop reports written after the checkpoint we resume from, and a line torn by a crash
            keep = [ln for ln in path.read_text().splitlines() if _report_nimg(ln) <= resume_nimg]
            atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def append(self, stats: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(stats) + "\n")


def _scalars(stats: dict) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("nimg", "step")}


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: `pip install tensorboard` "
                          "(or set train.tensorboard=false)") from None
    return SummaryWriter(str(log_dir))


def _wandb_run(project: str, run_dir: Path, config: dict | None):
    try:
        import wandb  # optional: only when W&B logging is on
    except ImportError:
        raise ConfigError(f"train.wandb={project!r} needs the wandb package: `pip install wandb` (or set "
                          f"train.wandb='' to log to stats.jsonl only; WANDB_MODE=offline logs without a server)") from None
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
    atomic_write_text(id_file, run_id + "\n")
    run = wandb.init(project=project, id=run_id, resume="allow", dir=str(run_dir), name=run_dir.name, config=config)
    run.define_metric("nimg")
    run.define_metric("*", step_metric="nimg")  # x axis = images seen, so a resumed run may re-log earlier nimg
    return run


class RunLogger:
    """`append(stats)` writes the JSONL line and mirrors scalars (and eval grids) to TensorBoard / W&B."""

    def __init__(self, run_dir: str | Path, resume_nimg: int, *, tensorboard: bool = False, wandb: str = "",
                 config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.jsonl = StatsLog(self.run_dir / "stats.jsonl", resume_nimg)
        self.tb = _tensorboard_writer(self.run_dir / "tensorboard") if tensorboard else None
        self.wandb = _wandb_run(wandb, self.run_dir, config) if wandb else None

    def append(self, stats: dict) -> None:
        self.jsonl.append(stats)
        nimg = int(stats["nimg"])
        scalars = _scalars(stats)
        grid = stats.get("eval/grid")
        grid_path = self.run_dir / grid if isinstance(grid, str) and (self.run_dir / grid).is_file() else None
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, nimg)
            if grid_path is not None:
                self.tb.add_image("eval/grid", np.asarray(Image.open(grid_path).convert("RGB")), nimg, dataformats="HWC")
            self.tb.flush()
        if self.wandb is not None:
            payload = {**scalars, "nimg": nimg}
            if grid_path is not None:
                import wandb  # optional: only when W&B logging is on

                payload["eval/grid"] = wandb.Image(str(grid_path), caption=f"EMA samples at {nimg} images")
            self.wandb.log(payload)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
