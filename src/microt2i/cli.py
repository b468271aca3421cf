"""The `microt2i` command. Every command defaults to the embedded world, so it runs offline in minutes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying a hub for ~45 s
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _resolve_config(spec: str, overrides: list[str]):
    from . import presets
    from .config import apply_overrides, load_yaml

    base = load_yaml(spec) if spec.endswith((".yaml", ".yml")) else presets.get(spec)
    return apply_overrides(base, overrides)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.run_dir, preset=args.preset, overrides=args.overrides, progress=not args.no_progress)
    return 0


def cmd_train(args) -> int:
    import yaml

    from .config import _plain, to_dict
    from .train.loop import train

    cfg = _resolve_config(args.config, args.overrides)
    if args.dry_run:
        print(yaml.safe_dump(_plain(to_dict(cfg)), sort_keys=False))
        return 0
    out = train(cfg, args.run_dir or Path("runs") / cfg.name, progress=not args.no_progress,
                stop_nimg=args.stop_nimg)
    print(f"[train] {'finished' if out['finished'] else 'stopped'} at {out['nimg']} images")
    return 0


def cmd_sample(args) -> int:
    from .encoders import TextEncoder, load_codec
    from .report import save_grid
    from .sample import generate, load_run

    cfg, net, null_tokens, null_mask = load_run(args.run_dir)
    if not (args.prompt or args.prompts_file):
        raise FileNotFoundError("no prompts: pass --prompt \"a red star …\" (repeatable) or --prompts-file FILE")
    prompts = args.prompt or [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    emb = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len).encode(prompts)
    images = generate(net, cfg, emb.tokens, emb.mask, null_tokens, null_mask, codec=load_codec(cfg.data.codec),
                      sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed)
    out = Path(args.out)
    save_grid(images, out, nrow=min(len(prompts), args.nrow), upscale=args.upscale)
    print(f"[sample] {len(prompts)} images → {out}")
    return 0


def cmd_world(args) -> int:
    from .report import save_grid
    from .world import detect, make_dataset

    images, captions, _ = make_dataset(args.n, seed=args.seed, resolution=args.resolution, captions=args.captions,
                                       max_objects=args.max_objects)
    save_grid(images, args.out, nrow=int(args.n ** 0.5 + 0.999), upscale=max(1, 256 // args.resolution))
    for i, (img, cap) in enumerate(zip(images, captions)):
        dets = ", ".join(f"{d.color} {d.cls}" for d in detect(img))
        print(f"{i:3d}  {cap}\n     detected: {dets}")
    print(f"[world] {args.n} images → {args.out}")
    return 0


def cmd_bench(args) -> int:
    from . import presets
    from .bench import bench_train, write_benchmarks_md

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = presets.get(args.preset).model
    res = bench_train(cfg, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, precision=args.precision,
                      repeats=args.repeats, text_len=args.text_len, device=args.device, name=args.preset)
    for k, v in res.items():
        print(f"{k:>28}: {v}")
    if not args.no_write:
        write_benchmarks_md(res, args.out)
        print(f"[bench] appended to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="microt2i", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a world preset on CPU, sample a grid, write runs/demo/report.html")
    d.add_argument("--run-dir", default="runs/demo")
    d.add_argument("--preset", default="world-s")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.total_nimg=8192")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="train a preset or a config.yaml; resumes from the run folder")
    t.add_argument("config", help="preset name (see `microt2i presets`) or a config .yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.depth=4")
    t.add_argument("--run-dir", default=None, help="default: runs/<name>")
    t.add_argument("--stop-nimg", type=int, default=None, help="checkpoint and stop after this many images")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="sample images from a finished run's EMA weights")
    s.add_argument("run_dir")
    s.add_argument("--prompt", action="append", help="a caption (repeatable)")
    s.add_argument("--prompts-file", help="one caption per line")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--sampler", default=None)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--cfg-scale", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--nrow", type=int, default=8)
    s.add_argument("--upscale", type=int, default=4)
    s.set_defaults(fn=cmd_sample)

    w = sub.add_parser("world", help="render embedded-world images with captions and detections")
    w.add_argument("--n", type=int, default=16)
    w.add_argument("--resolution", type=int, default=64)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--captions", choices=["long", "aio"], default="long")
    w.add_argument("--max-objects", type=int, default=3)
    w.add_argument("--out", default="world.png")
    w.set_defaults(fn=cmd_world)

    b = sub.add_parser("bench", help="benchmarks; `bench train` measures training img/s vs diffusers PixArt")
    b.add_argument("what", choices=["train"])
    b.add_argument("--preset", default="world-s")
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; the median is reported")
    b.add_argument("--text-len", type=int, default=64)
    b.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU; 0 = leave as is")
    b.add_argument("--device", default="auto")
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    b.add_argument("--out", default="BENCHMARKS.md")
    b.add_argument("--no-write", action="store_true")
    b.set_defaults(fn=cmd_bench)

    pr = sub.add_parser("presets", help="list the named presets")
    pr.set_defaults(fn=lambda a: print("\n".join(__import__("microt2i.presets", fromlist=["names"]).names())) or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    try:  # transformers ≥ 5 draws a "Loading weights" bar for every model it loads
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"microt2i {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
