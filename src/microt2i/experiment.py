"""`microt2i experiment <name>`: the papers' ablations at micro scale on the embedded world, with error bars.

An experiment is a few arms (dotted overrides of one world preset) trained with identical budgets (images seen, or
training FLOPs for `masking`), for several seeds, then evaluated alike: world-GenEval per tag (the world detector),
FD-EffNetLite0 + KID and PRDC on held-out world scenes. Each arm-seed lives in
`runs/experiments/<name>/<arm>-s<seed>-<key>/`, key = hash(resolved config, eval settings, git commit): a finished
arm (its `result.json`) is reused, an interrupted one resumes from its checkpoints, so an experiment completes across
invocations and re-renders without training (`--render-only`).

Intervals are percentile bootstraps (95 %). GenEval: seeds and prompts resampled independently (prompts within their
tag, a prompt's images together), overall = mean over tags (evaluation.md §1.5). FD: seeds and generated samples
resampled, real statistics fixed. KID / PRDC: seeds only. Arm differences resample both arms with the same indices
(paired: same seeds, same prompts, same noise).

The parts: `experiment_defs` (the experiments and their configs), `experiment_run` (train and evaluate an arm),
`experiment_stats` (bootstrap statistics), `experiment_render` (Markdown, HTML, curves); this module runs a whole
experiment and is the API the CLI and tests use."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError
from .experiment_defs import (EXPERIMENTS, Arm, Claim, EvalSpec, Experiment, arm_config, arm_dir, arm_key, config_hash,
                              get, git_commit, names, same_run, scale_budget, select_arms)
from .experiment_render import (SUMMARY, claim_lines, claim_summary, first_reach, gpu_route, markdown_table, render,
                                render_summary, section_name, summary_markdown, time_to_quality, ttq_markdown,
                                write_section)
from .experiment_run import evaluate_arm, run_arm
from .experiment_stats import ArmData, Summary, fd_resampled, geneval_score, resample, summarize
from .progress import Progress

__all__ = [  # the API the CLI and the tests use; run_experiment looks run_arm / render / git_commit up here
    "EXPERIMENTS", "Arm", "Claim", "EvalSpec", "Experiment", "arm_config", "arm_dir", "arm_key", "config_hash", "get",
    "git_commit", "names", "same_run", "scale_budget", "select_arms", "claim_lines", "first_reach", "markdown_table",
    "render", "section_name", "time_to_quality", "ttq_markdown", "write_section", "evaluate_arm", "run_arm", "ArmData",
    "Summary", "fd_resampled", "geneval_score", "resample", "summarize", "run_experiment", "SUMMARY", "claim_summary",
    "gpu_route", "render_summary", "summary_markdown",
]


def run_experiment(name: str, *, scale: float = 1.0, seeds: int = 2, arms: str | list[str] | None = None,
                   render_only: bool = False, root: str | Path = "runs/experiments",
                   md_path: str | Path | None = "EXPERIMENTS.md", extra: tuple[str, ...] = (),
                   any_commit: bool = False, keep_checkpoints: bool = False, command: str = "", progress: bool = False,
                   log=print) -> dict:
    """Run every missing (arm, seed) of experiment `name` (seeds outer, arms inner: after each seed all arms are
    comparable), then render. `extra` overrides apply to every arm (e.g. train.threads=1, train.device=cuda)."""
    exp = get(name)
    chosen = select_arms(exp, arms)
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} must be >= 1 (2 by default)")
    seed_list = list(range(seeds))
    commit = git_commit()[0]
    if not render_only:
        with Progress(len(seed_list) * len(chosen), desc="experiment", unit="arm", enabled=progress, bar=False,
                      heartbeat=False, work=f"{len(chosen)} arms × {len(seed_list)} seeds, {exp.name}") as bar:
            for s in seed_list:
                for arm in chosen:
                    run_arm(exp, arm, s, root=root, scale=scale, extra=extra, commit=commit, any_commit=any_commit,
                            keep_checkpoints=keep_checkpoints, progress=progress, log=log)
                    bar.update(1)
    out = render(exp, chosen, seed_list, root=root, md_path=md_path, scale=scale, extra=extra, command=command,
                 commit=commit, any_commit=any_commit)
    log(f"[experiment] {out['report']}" + (f", {out['markdown']}" if out.get("markdown") else ""))
    return out

