"""Training: `demo`, `train` (a preset, a config, a fine-tune or a recipe) and `recipe`. Each command's parser sits next
to the command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .common import POS, resolve_config


def cmd_demo(args) -> int:
    from .. import presets  # lazy: CLI startup (each command loads only what it runs)
    from ..demo import run_demo  # lazy: CLI startup (diffusers)

    preset = presets.world_preset(args.preset, args.model) if args.model else args.preset
    overrides = ([f"objective.kind={args.objective}"] if args.objective else []) + list(args.overrides)
    run_demo(args.run_dir, preset=preset, overrides=overrides, progress=not args.no_progress)
    return 0


def cmd_train(args) -> int:
    from ..config import ConfigError, plain, to_dict  # lazy: CLI startup (torch)
    from ..eval.live import LiveEval  # lazy: CLI startup
    from ..finetune_report import finetune_report  # lazy: CLI startup
    from ..report import final_grid, run_report  # lazy: CLI startup (diffusers)
    from ..train.finetune import finetune  # lazy: CLI startup
    from ..train.loop import resolve_device, train  # lazy: CLI startup

    if args.recipe:  # `train --recipe NAME` ≡ `recipe NAME`: every stage, in order, in one run folder
        if args.config:
            args.overrides = [args.config, *args.overrides]  # the positional slot held the first override
        args.name, args.root = args.recipe, args.run_dir
        return cmd_recipe(args)
    if not args.config:
        raise ConfigError("train needs a preset name or a config .yaml (or --recipe NAME); see `microt2i presets`")
    cfg = resolve_config(args.config, args.overrides, model=args.model, objective=args.objective)
    if args.init:  # fine-tune (train/finetune.py): the run's first checkpoint comes from this run / export folder
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init=args.init))
    if args.dry_run:
        print(yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False))
        return 0
    run_dir = args.run_dir or Path("runs") / cfg.name
    if cfg.train.init:
        out = finetune(cfg, run_dir, progress=not args.no_progress, stop_nimg=args.stop_nimg, evaluate=LiveEval)
        if out["finished"] and out["rank"] == 0:  # before/after grids (+ world style statistics) in the run folder
            finetune_report(run_dir, out["store"])

            print(f"[train] report with the before/after grids: {run_report(run_dir)}")
    else:
        out = train(cfg, run_dir, progress=not args.no_progress, stop_nimg=args.stop_nimg, evaluate=LiveEval)
        if out["finished"] and out["rank"] == 0:  # the final fixed-prompt grid, so the run report always shows one

            grid = final_grid(run_dir, device=resolve_device(cfg.train.device), progress=not args.no_progress)
            print(f"[train] final grid {grid}; report: microt2i report {run_dir}")
    if out["rank"] == 0:
        print(f"[train] {'finished' if out['finished'] else 'stopped'} at {out['nimg']} images")
    return 0


def cmd_recipe(args) -> int:
    from .. import presets  # lazy: CLI startup (each command loads only what it runs)
    from ..config import apply_overrides  # lazy: CLI startup (torch)
    from ..eval.live import LiveEval  # lazy: CLI startup
    from ..train.dist import print0  # lazy: CLI startup
    from ..train.recipe import describe, run_recipe, stage_dirs  # lazy: CLI startup

    stages = [apply_overrides(s, args.overrides) for s in presets.recipe(args.name)]
    root = Path(args.root or Path("runs") / args.name)
    print(describe(stages))
    if args.dry_run:
        print("\n".join(f"stage {i + 1} → {d}" for i, d in enumerate(stage_dirs(stages, root))))
        return 0
    out = run_recipe(stages, root, progress=not args.no_progress, evaluate=LiveEval)

    print0(f"[recipe] {'finished' if out[-1]['finished'] and len(out) == len(stages) else 'stopped'}: "
          f"{len(out)} of {len(stages)} stages; final weights in {out[-1]['dir'] / 'ema'}")
    return 0


def add_parsers(sub) -> None:
    d = sub.add_parser("demo", help="train a world preset on CPU, sample a grid, write runs/demo/report.html")
    d.add_argument("--run-dir", default="runs/demo")
    d.add_argument("--preset", default="world-s")
    d.add_argument("--model", choices=["dit-i", "cad-i", "microdit"],
                   help="the world preset's network (world-s → world-cad-s; microdit runs its 4-stage world recipe)")
    d.add_argument("--objective", choices=["edm", "vp", "flow"], help="shorthand for objective.kind=…")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.total_nimg=8192")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="train a preset or a config.yaml; resumes from the run folder")
    t.add_argument("config", nargs="?", help="preset name (see `microt2i presets`) or a config .yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.depth=4")
    t.add_argument("--run-dir", default=None, help="default: runs/<name>")
    t.add_argument("--stop-nimg", type=POS, default=None, help="checkpoint and stop after this many images")
    t.add_argument("--recipe", default=None, help="train a multi-stage recipe instead (same as `microt2i recipe NAME`)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--model", choices=["dit-i", "cad-i", "microdit"],
                   help="a world preset's network (world-s → world-cad-s)")
    t.add_argument("--objective", choices=["edm", "vp", "flow"], help="shorthand for objective.kind=…")
    t.add_argument("--init", default=None, help="fine-tune from a run folder, an exported model folder or a Hugging "
                                                "Face Hub id owner/name (sets train.init; see train.init_mode, "
                                                "train.freeze)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("recipe", help="train a multi-stage recipe (e.g. microdit-xl-2: Table 3's four stages)")
    r.add_argument("name", help="recipe name: " + "microdit-xl-2, world-microdit-s, world-microdit-tiny, dit-i")
    r.add_argument("overrides", nargs="*", help="dotted overrides applied to every stage")
    r.add_argument("--root", default=None, help="stage folders go under it; default: runs/<name>")
    r.add_argument("--dry-run", action="store_true", help="print the stages and their folders and exit")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_recipe)
