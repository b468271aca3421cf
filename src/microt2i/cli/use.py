"""Using a finished run: `sample`, `export`, `report`, `serve`. Each command's parser sits next to the command."""

from __future__ import annotations

import sys
from pathlib import Path
from ..config import ConfigError
from ..encoders.extender import make_extender
from ..export import export_run
from ..report import run_report
from ..sample import read_prompts, sample_prompts, write_samples
from ..serve import serve
from ..train.artifacts import check_source
from .common import POS


def cmd_sample(args) -> int:
    run = args.run or args.run_dir
    if run and args.model:
        raise ConfigError("sample: pass a run folder (--run / positional) or --model EXPORT, not both")
    check_source(run=run if not args.model else None, model=args.model)
    prompts = originals = read_prompts(args.prompt, args.prompts_file)
    try:
        if args.extend:  # the prompt extender (encoders/extender.py): short prompt → training-style long caption

            prompts = make_extender(args.extend).extend(originals)
            for a, b in zip(originals, prompts):
                print(f"[extend] {a!r} → {b!r}")
        images, settings = sample_prompts(prompts, run=None if args.model else run, model=args.model, n=args.n,
                                          sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                                          seed=args.seed, batch_size=args.batch_size, device=args.device,
                                          progress=not args.no_progress)
    except ValueError as e:  # a prompt the extender cannot read, a bad sampler name or option value: one line
        print(f"microt2i sample: error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir or (Path(args.out).with_suffix("") if args.out else "samples"))
    grid = write_samples(images, prompts, out_dir, settings, grid=args.out, nrow=args.nrow, upscale=args.upscale,
                         originals=originals if args.extend else None)
    print(f"[sample] {len(images)} images ({settings['sampler']}, {settings['steps']} steps, cfg "
          f"{settings['cfg_scale']}, seed {settings['seed']}) → {out_dir}/, grid {grid}")
    return 0


def cmd_export(args) -> int:
    export_run(args.run_dir, args.folder, dtype=args.dtype, grid=not args.no_grid, overwrite=args.overwrite,
               device=args.device, progress=not args.no_progress)
    return 0


def cmd_report(args) -> int:
    print(f"[report] {run_report(args.run_dir, args.out)}")
    return 0


def cmd_serve(args) -> int:
    serve(args.runs, host=args.host, port=args.port, device=args.device)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("sample", help="sample PNGs + a grid from a finished run (EMA weights) or an exported model")
    s.add_argument("run_dir", nargs="?", default=None, help="a finished run folder (same as --run)")
    s.add_argument("--run", default=None, help="a finished run folder (ema/, config.yaml, null_text.safetensors)")
    s.add_argument("--model", default=None, help="an export folder written by `microt2i export` (same images)")
    s.add_argument("--prompt", action="append", help="a caption (repeatable)")
    s.add_argument("--prompts-file", help="one caption per line (.txt) or {\"prompt\": …} per line (.jsonl)")
    s.add_argument("--extend", default=None, metavar="EXTENDER",
                   help="rewrite prompts as long captions first: 'world' (template) or a causal-LM id / folder")
    s.add_argument("--n", type=POS, default=1, help="images per prompt (image k uses the noise of (seed, k))")
    s.add_argument("--sampler", default=None, help="heun | euler | ddim | dpmpp_2m (default: the run's eval.sampler)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's eval.steps)")
    s.add_argument("--cfg", "--cfg-scale", dest="cfg_scale", type=float, default=None,
                   help="CFG scale: uncond + s·(cond − uncond) (default: the run's eval.grid_cfg_scale, else eval.cfg_scale)")
    s.add_argument("--seed", type=int, default=None, help="default: the run's eval.seed")
    s.add_argument("--out-dir", default=None, help="PNGs + samples.jsonl go here (default: --out without .png, "
                                                   "else ./samples)")
    s.add_argument("--out", default=None, help="the grid PNG (default: <out-dir>/grid.png)")
    s.add_argument("--nrow", type=POS, default=8, help="grid columns")
    s.add_argument("--upscale", type=POS, default=4, help="grid nearest-neighbour upscale")
    s.add_argument("--batch-size", type=POS, default=64)
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=cmd_sample)

    ex = sub.add_parser("export", help="write a finished run as a diffusers folder (DiffusionPipeline.from_pretrained)")
    ex.add_argument("run_dir", help="a finished run folder")
    ex.add_argument("folder", help="output folder (written to a temp sibling, then renamed)")
    ex.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="transformer weights' dtype")
    ex.add_argument("--no-grid", action="store_true", help="skip the sample grid of the model card")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    ex.add_argument("--device", default="cpu", help="where the grid is sampled")
    ex.add_argument("--no-progress", action="store_true")
    ex.set_defaults(fn=cmd_export)

    rp = sub.add_parser("report", help="one self-contained HTML page of a run: config, curves, grids per eval "
                                       "point, GenEval, metrics, cost and throughput")
    rp.add_argument("run_dir", help="a run folder (stats.jsonl, config.yaml; finished or not)")
    rp.add_argument("--out", default=None, help="default: <run_dir>/run_report.html")
    rp.set_defaults(fn=cmd_report)

    sv = sub.add_parser("serve", help="a local web page to try prompts on finished runs (seed, CFG, steps, "
                                      "sampler, prompt extender), with each run's grid and metrics")
    sv.add_argument("runs", nargs="+", help="run folders, or a folder of runs (e.g. runs)")
    sv.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    sv.add_argument("--host", default="127.0.0.1", help="127.0.0.1 = this machine only")
    sv.add_argument("--device", default="cpu")
    sv.set_defaults(fn=cmd_serve)
