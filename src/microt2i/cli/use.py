"""Using a finished run: `sample`, `export`, `report`, `serve`. Each command's parser sits next to the command."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import POS


def cmd_sample(args) -> int:
    from ..config import ConfigError  # lazy: CLI startup (each command loads only what it runs)
    from ..encoders.extender import make_extender  # lazy: CLI startup
    from ..sample import read_prompts, sample_prompts, write_samples  # lazy: CLI startup (diffusers)
    from ..train.artifacts import check_source  # lazy: CLI startup

    run = args.run or args.run_dir
    if run and args.model:
        raise ConfigError("sample: pass a run folder (--run / positional) or --model EXPORT, not both")
    check_source(run=run if not args.model else None, model=args.model)
    prompts = originals = read_prompts(args.prompt, args.prompts_file)
    if (args.width is None) != (args.height is None):
        raise ConfigError("sample: pass both --width and --height (an aspect bucket's size), or neither")
    try:
        if args.extend:  # the prompt extender (encoders/extender.py): short prompt → training-style long caption
            prompts = make_extender(args.extend).extend(originals)
            for a, b in zip(originals, prompts):
                print(f"[extend] {a!r} → {b!r}")
        images, settings = sample_prompts(prompts, run=None if args.model else run, model=args.model, n=args.n,
                                          sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                                          seed=args.seed, batch_size=args.batch_size, device=args.device,
                                          progress=not args.no_progress,
                                          size=None if args.width is None else (args.height, args.width))
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
    from ..export import export_run  # lazy: CLI startup (diffusers)
    from ..hub import check_push, push_to_hub  # lazy: CLI startup

    if args.push_to_hub is not None:  # offline or a malformed repo id fails before the export's work
        check_push(args.push_to_hub)
    export_run(args.run_dir, args.folder, dtype=args.dtype, grid=not args.no_grid, overwrite=args.overwrite,
               device=args.device, progress=not args.no_progress)
    if args.push_to_hub is not None:
        push_to_hub(args.folder, args.push_to_hub, license=args.license, private=args.private)
    return 0


def cmd_report(args) -> int:
    from ..report import run_report  # lazy: CLI startup (diffusers)

    print(f"[report] {run_report(args.run_dir, args.out)}")
    return 0


def cmd_serve(args) -> int:
    from ..serve import serve  # lazy: CLI startup (diffusers)

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
    s.add_argument("--width", type=POS, default=None, help="DiT-I: sample at this width × --height pixels (an aspect "
                   "bucket: multiples of VAE factor × patch, width·height <= resolution²); default: the square")
    s.add_argument("--height", type=POS, default=None, help="see --width")
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
    ex.add_argument("--push-to-hub", metavar="REPO", default=None, help="then upload the folder to this Hugging Face "
                    "Hub model repo (owner/name; created if missing; needs the network and `hf auth login`)")
    ex.add_argument("--license", default="other", help="the model card's license with --push-to-hub (e.g. apache-2.0)")
    ex.add_argument("--private", action="store_true", help="create the Hub repo private")
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
