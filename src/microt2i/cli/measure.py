"""Measuring: `bench`, `cost` (recipe, cutmix, text-encoders) and `presets`. Each command's parser sits next to the
command."""

from __future__ import annotations

import datetime

from .common import NAT, POS


def cmd_bench(args) -> int:
    import torch  # lazy: CLI startup (each command loads only what it runs)

    from .. import presets  # lazy: CLI startup
    from ..bench import (bench_all, bench_loader, bench_microdit, bench_sample, bench_train,  # lazy: CLI startup
                         device_string, report_rows, write_benchmarks_md, write_microdit_md, write_report_md)
    from ..bench_gpu import run_cli  # lazy: CLI startup

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "gpu":  # the one-shot GPU proof (bench_gpu.py)
        return run_cli(args)
    if args.what in ("all", "sample", "loader"):  # the one report, or one of its parts
        if args.what == "all":
            report = bench_all(device=args.device, presets_=tuple(args.preset.split(",")) if args.preset else None)
        else:
            report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                      "device": device_string(args.device), "torch": torch.__version__}
            if args.what == "sample":
                report["sample"] = bench_sample(args.preset or "world-s", batch_size=args.batch_size or 8,
                                                device=args.device, repeats=args.repeats)
            else:
                report["loader"] = bench_loader(num_samples=1024, micro=args.batch_size or 128, epochs=3)
        for row in report_rows(report):
            print(" | ".join(row))
        if not args.no_write:
            write_report_md(report, args.out)
            print(f"[bench] appended to {args.out}")
        return 0
    args.precision, args.batch_size = args.precision or "fp32", args.batch_size or 8
    if args.what == "microdit":
        preset = args.preset or "world-microdit-s"
        res = bench_microdit(presets.get(preset).model, batch_size=args.batch_size, steps=args.steps,
                             warmup=args.warmup, precision=args.precision, repeats=args.repeats,
                             text_len=args.text_len, mask_ratio=args.mask_ratio, device=args.device, name=preset,
                             variants=tuple(args.variants.split(",")))
        write = write_microdit_md
    else:
        preset = args.preset or "world-s"
        res = bench_train(presets.get(preset).model, batch_size=args.batch_size, steps=args.steps,
                          warmup=args.warmup, precision=args.precision, repeats=args.repeats, text_len=args.text_len,
                          device=args.device, name=preset)
        write = write_benchmarks_md
    for k, v in res.items():
        print(f"{k:>28}: {v}")
    if not args.no_write:
        write(res, args.out)
        print(f"[bench] appended to {args.out}")
    return 0


def cmd_cost_recipe(args) -> int:
    from .. import presets  # lazy: CLI startup (each command loads only what it runs)
    from ..config import ConfigError, apply_overrides  # lazy: CLI startup
    from ..cost import PAPER_NOTES, format_cost_table, recipe_cost  # lazy: CLI startup

    try:
        img_s = [float(v) for v in args.img_s.split(",")] if args.img_s else None
    except ValueError:
        raise ConfigError(f"--img-s {args.img_s!r} must be comma-separated numbers (img/s per H100, one per stage)")
    stages = [apply_overrides(s, args.overrides) for s in presets.stages(args.name)]
    costs = recipe_cost(stages, img_s=img_s, mfu=args.mfu)
    print(f"Training cost of recipe {args.name!r} (FLOPs per image counted on the meta device; 8 GPUs)\n")
    print(format_cost_table(costs))
    if all(c.paper is not None for c in costs):
        print("\n" + PAPER_NOTES)
    elif any(c.img_s is None for c in costs):
        print("\nNo throughput known for this recipe: pass --img-s (measured img/s per H100) or --mfu (assumed).")
    return 0


def cmd_cost_cutmix(args) -> int:
    from .. import presets  # lazy: CLI startup (each command loads only what it runs)
    from ..config import ConfigError, apply_overrides  # lazy: CLI startup
    from ..data.precompute import bytes_per_sample  # lazy: CLI startup

    cfg = apply_overrides(presets.get(args.name), args.overrides)
    m, d, cm = cfg.model, cfg.data, cfg.augment.cutmix
    per = bytes_per_sample(d, (m.in_channels, m.input_size, m.input_size), m.text_dim)
    total = sum(per.values())
    print(f"CutMix composites of {args.name} (CM-{cm.setting}, {args.n:,} per setting; ImageNet-T2I App. E: 1,281,167)")
    print("  per composite: " + ", ".join(f"{k} {v:,} B" for k, v in per.items()) + f" = {total:,} B")
    print(f"  disk per setting: {total * args.n / 1e9:,.1f} GB of shards (+ ~1 KB of caption text per composite "
          f"in the sidecars and the caption log)")
    if args.rate:
        if args.rate <= 0:
            raise ConfigError(f"--rate {args.rate} must be > 0 (composites/s per GPU)")
        print(f"  time: {args.n / args.rate / 3600:,.1f} GPU-hours at {args.rate:g} composites/s per GPU")
    else:
        print("  time: pass --rate (composites/s per GPU: every `microt2i cutmix` shard logs its items/s); "
              "docs/data.md derives an H100 floor")
    return 0


def cmd_cost_text_encoders(args) -> int:
    import numpy as np  # lazy: CLI startup (each command loads only what it runs)
    import torch  # lazy: CLI startup

    from ..cost import format_text_cost_table  # lazy: CLI startup
    from ..encoders.hub import MissingModelError  # lazy: CLI startup
    from ..encoders.text import TextEncoder, measure_text_encoder  # lazy: CLI startup
    from ..world.scenes import long_caption, sample_scene  # lazy: CLI startup

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    rng = np.random.default_rng(0)  # the world's long captions (LLaVA-style, often > 77 tokens)
    captions = [long_caption(sample_scene(rng), rng) for _ in range(args.batch_size)]
    costs, skipped = [], []
    for name in args.encoders.split(","):
        try:
            enc = TextEncoder(name, max_length=args.length, device=args.device, storage_dtype=dtype, log=None)
        except (MissingModelError, ValueError) as e:
            skipped.append(f"{name}: {str(e).splitlines()[0]}")
            continue
        costs.append(measure_text_encoder(enc, captions, repeats=args.repeats))
        del enc
    device = args.device if args.device != "cpu" else f"cpu×{torch.get_num_threads()} threads"
    print(f"Text-encoder cost (MicroDiT Table 2), measured here on {device} with batches of {args.batch_size} "
          f"world long captions, extrapolated to 1M captions\n")
    print(format_text_cost_table(costs, device))
    for line in skipped:
        print(f"skipped {line}")
    return 0 if costs else 2


def cmd_presets(args) -> int:
    from .. import presets  # lazy: CLI startup (each command loads only what it runs)

    print("\n".join(presets.names()))
    return 0


def add_parsers(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks; `bench` alone runs the one report (presets, PixArt, sampler, "
                                     "loader) and appends it to BENCHMARKS.md")
    b.add_argument("what", nargs="?", default="all", choices=["all", "train", "microdit", "sample", "loader", "gpu"],
                   help="all (default): the one report; train: DiT-I vs PixArt; microdit: masked vs unmasked and "
                        "MoE vs dense MicroDiT; sample: Heun 30 steps + CFG img/s; loader: samples/s")
    b.add_argument("--preset", default=None, help="default: world-s (train, sample), world-microdit-s (microdit); "
                                                  "all: comma-separated presets (default: every world and paper one)")
    b.add_argument("--mask-ratio", type=float, default=0.75, help="microdit: the masked variants' mask ratio")
    b.add_argument("--variants", default="moe-unmasked,moe-masked,dense-unmasked,dense-masked",
                   help="microdit: comma-separated subset (one XL variant fits a GPU: moe-masked is stage 1)")
    b.add_argument("--batch-size", type=POS, default=None, help="default: 8 (train, microdit, sample), 128 (loader)")
    b.add_argument("--steps", type=POS, default=3, help="timed steps per repetition")
    b.add_argument("--warmup", type=NAT, default=2)
    b.add_argument("--repeats", type=POS, default=5, help="interleaved repetitions; the median is reported")
    b.add_argument("--text-len", type=POS, default=64)
    b.add_argument("--threads", type=NAT, default=0, help="torch intra-op threads on CPU; 0 = leave as is")
    b.add_argument("--device", default="auto")
    b.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="train, microdit; default fp32")
    b.add_argument("--out", default="BENCHMARKS.md")
    b.add_argument("--no-write", action="store_true")
    b.add_argument("--smoke", action="store_true", help="gpu: the same code path on tiny presets, CPU, seconds (CI)")
    b.add_argument("--json", default=None, help="gpu: also write the full record to this JSON file")
    b.add_argument("--budget-s", type=float, default=450.0, help="gpu: skip parts that would overrun (8 min cap)")
    b.set_defaults(fn=cmd_bench)

    c = sub.add_parser("cost", help="cost accounting: `cost recipe` (FLOPs, GPU-days, dollars), "
                                    "`cost text-encoders` (MicroDiT Table 2)")
    csub = c.add_subparsers(dest="what", required=True)
    # each cost subcommand adds its parser to `csub` below
    cr = csub.add_parser("recipe", help="FLOPs per image and per stage, GPU-days and dollars of a recipe; "
                                        "microdit-xl-2 next to MicroDiT's Table 6")
    cr.add_argument("name", help="recipe (microdit-xl-2, world-microdit-s, world-microdit-tiny, dit-i) or a single "
                                 "preset as a one-stage recipe (e.g. cad-i-256)")
    cr.add_argument("overrides", nargs="*", help="dotted overrides applied to every stage, e.g. data.text_len=120")
    cr.add_argument("--img-s", default=None,
                    help="measured or stated training img/s per H100: one value, or one per stage (comma-separated)")
    cr.add_argument("--mfu", type=float, default=None,
                    help="assumed model FLOPs utilisation on an H100 (0-1) when no throughput is given")
    cr.set_defaults(fn=cmd_cost_recipe)
    cc = csub.add_parser("cutmix", help="disk (from the store layout) and GPU-hours (from a measured rate) of a "
                                        "preset's CutMix composites (ImageNet-T2I App. E)")
    cc.add_argument("name", help="preset, e.g. dit-i-256")
    cc.add_argument("overrides", nargs="*", help="e.g. data.text_store=ids data.text_len=256")
    cc.add_argument("--n", type=POS, default=1_281_167, help="composites per setting (default: ImageNet train)")
    cc.add_argument("--rate", type=float, default=None, help="measured composites/s per GPU")
    cc.set_defaults(fn=cmd_cost_cutmix)
    ct = csub.add_parser("text-encoders", help="MicroDiT Table 2: measured time and storage per 1M captions of "
                                               "the text encoders available here")
    ct.add_argument("--encoders", default="minilm,flan-t5-xl,clip-l",
                    help="comma-separated names, hub ids or folders; ones not available offline are skipped")
    ct.add_argument("--length", type=POS, default=None, help="tokens kept (default: CLIP 77, T5 256, else 64)")
    ct.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="storage dtype")
    ct.add_argument("--batch-size", type=POS, default=64)
    ct.add_argument("--repeats", type=POS, default=5, help="timed batches; the median is reported")
    ct.add_argument("--threads", type=NAT, default=0, help="torch intra-op threads on CPU; 0 = leave as is")
    ct.add_argument("--device", default="cpu")
    ct.set_defaults(fn=cmd_cost_text_encoders)

    pr = sub.add_parser("presets", help="list the named presets")
    pr.set_defaults(fn=cmd_presets)
