"""The `microt2i` command. Every command defaults to the embedded world, so it runs offline in minutes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
import dataclasses
import datetime
import json
import numpy as np
import torch
import traceback
import yaml
from collections import Counter
from . import presets
from .augment.cutmix import build_cutmix_shards, cutmix_dir
from .bench import (bench_all, bench_loader, bench_microdit, bench_sample, bench_train, device_string, report_rows,
                    write_benchmarks_md, write_microdit_md, write_report_md)
from .config import ConfigError, plain, apply_overrides, check_device, load_yaml, to_dict
from .cost import PAPER_NOTES, format_cost_table, format_text_cost_table, recipe_cost
from .data import ingest
from .data.captions import read_text_utf8
from .data.filter import filter_dataset
from .data.precompute import bytes_per_sample, precompute
from .data.store import cache_root, open_store, verify_store
from .data.synsets import imagenet_classes
from .demo import run_demo
from .encoders.captioner import folder_source, make_captioner, run_caption_job, world_source
from .encoders.extender import make_extender
from .encoders.hub import MissingModelError
from .encoders.text import TextEncoder, measure_text_encoder
from .eval.aesthetic import register_suites
from .eval.geneval import format_table
from .eval.live import LiveEval
from .eval.pages import save_grid
from .eval.runner import DEFAULT_N, SUITES, run_eval
from .experiment import claim_lines, markdown_table, run_experiment
from .export import export_run
from .finetune_report import finetune_report
from .progress import heartbeat
from .report import final_grid, run_report
from .sample import read_prompts, sample_prompts, write_samples
from .serve import serve
from .train.artifacts import check_source
from .train.dist import print0, shutdown
from .train.finetune import finetune
from .train.loop import prepare_cutmix, resolve_device, train
from .train.recipe import describe, run_recipe, stage_dirs
from .world import CLASSES, detect, make_dataset
from .world.pixels import tensor_to_images
from .world.scenes import long_caption, sample_scene
from .world.vae import train_world_vae

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying a hub for ~45 s
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _resolve_config(spec: str, overrides: list[str], model: str | None = None, objective: str | None = None):
    """A preset or YAML plus overrides; `model` swaps a world preset for the same-size one of that model family,
    `objective` is shorthand for the override objective.kind=…"""
    if spec.endswith((".yaml", ".yml")):
        if model:
            raise ConfigError(f"--model picks a world preset; {spec} is a config file (set model.* in it instead)")
        base = load_yaml(spec)
    else:
        base = presets.get(presets.world_preset(spec, model) if model else spec)
    return apply_overrides(base, ([f"objective.kind={objective}"] if objective else []) + list(overrides))


def cmd_demo(args) -> int:
    preset = presets.world_preset(args.preset, args.model) if args.model else args.preset
    overrides = ([f"objective.kind={args.objective}"] if args.objective else []) + list(args.overrides)
    run_demo(args.run_dir, preset=preset, overrides=overrides, progress=not args.no_progress)
    return 0


def cmd_train(args) -> int:
    if args.recipe:  # `train --recipe NAME` ≡ `recipe NAME`: every stage, in order, in one run folder
        if args.config:
            args.overrides = [args.config, *args.overrides]  # the positional slot held the first override
        args.name, args.root = args.recipe, args.run_dir
        return cmd_recipe(args)
    if not args.config:
        raise ConfigError("train needs a preset name or a config .yaml (or --recipe NAME); see `microt2i presets`")
    cfg = _resolve_config(args.config, args.overrides, model=args.model, objective=args.objective)
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


def cmd_world(args) -> int:
    if args.action == "train-vae":  # the shipped world VAE (world/vae/README.md)

        if args.threads:
            torch.set_num_threads(args.threads)
        train_world_vae(args.vae_dir, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
        return 0
    images, captions, _ = make_dataset(args.n, seed=args.seed, resolution=args.resolution, captions=args.captions,
                                       max_objects=args.max_objects)
    save_grid(images, args.out, nrow=int(args.n ** 0.5 + 0.999), upscale=max(1, 256 // args.resolution))
    for i, (img, cap) in enumerate(zip(images, captions)):
        dets = ", ".join(f"{d.color} {d.cls}" for d in detect(img))
        print(f"{i:3d}  {cap}\n     detected: {dets}")
    print(f"[world] {args.n} images → {args.out}")
    return 0


def cmd_caption(args) -> int:
    if args.source == "world":
        keys, load = world_source(args.n, seed=args.seed, resolution=args.resolution, max_objects=args.max_objects)
    else:
        boxes = None
        if args.boxes:  # CutMix composites: {"key", "box", "pattern"} per line → the CutMix prompt (App. D)

            lines = read_text_utf8(args.boxes).splitlines()
            boxes = {r["key"]: r for r in map(json.loads, filter(str.strip, lines))}
        keys, load = folder_source(args.source, boxes=boxes)
    kind = args.captioner or ("world" if args.source == "world" else "llava")
    opts = {"template": {"classes": args.classes}, "aio": {"classes": args.classes}, "world": {},
            "llava": {"model": args.model, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                      **({"device": args.device} if args.device else {})}}[kind]
    if kind == "world" and args.source != "world":
        raise FileNotFoundError("--captioner world needs --source world (oracle captions come from scene specs)")
    try:
        out = run_caption_job(keys, load, make_captioner(kind, **opts), args.out, num_shards=args.num_shards,
                              shard_index=args.shard_index, batch_size=args.batch_size, progress=not args.no_progress)
    except ValueError as e:  # bad shard/batch options, a malformed existing caption file: one line
        print(f"microt2i caption: error: {e}", file=sys.stderr)
        return 2
    print(f"[caption] {out['captioned']} captioned, {out['skipped_done']} already done, {len(out['failed'])} "
          f"unreadable, in {out['seconds']:.1f} s → {out['path']}")
    return 1 if out["failed"] else 0


def cmd_cutmix(args) -> int:
    cfg = _resolve_config(args.config, args.overrides)
    cfg = apply_overrides(cfg, ["augment.cutmix.enabled=true"])
    cm = cfg.augment.cutmix
    if cfg.data.store_dir:  # any labelled source's sharded store: composites through the precompute engine

        if args.verify:
            problems = verify_store(cutmix_dir(cfg.data, cm))
            print("\n".join(problems) or f"[cutmix] {cutmix_dir(cfg.data, cm)}: every shard checks out")
            return 1 if problems else 0
        out = build_cutmix_shards(cfg.data, cm, model=args.model, max_new_tokens=args.max_new_tokens,
                                  num_shards=args.num_shards, shard_index=args.shard_index, workers=args.workers,
                                  device=args.device, batch_size=args.batch_size,
                                  caption_batch_size=args.caption_batch_size)
        print(f"[cutmix] {len(out['done'])} shards written, {len(out['skipped_shards'])} already done")
        if not out["manifest"]:
            return 0
        store = open_store(out["store_dir"])
        describe = [f"{r['pattern']} of {r['key'].rsplit('#', 1)[0]}, partner {r['partner_key']}"
                    for r in store.records[:args.show]]
    else:
        if args.num_shards > 1 or args.verify:
            raise ConfigError("--num-shards / --verify work on a sharded store: add data.store_dir=<store> (built "
                              "with `microt2i precompute`)")

        with heartbeat("cutmix", f"building {cm.setting} composites", enabled=not args.no_progress):
            store = prepare_cutmix(cfg, resolve_device(cfg.train.device))
        boxes = store.meta["boxes"]
        describe = [f"{b['pattern']} of source {b['source']}, partner {b['partner']}" for b in boxes[:args.show]]
    for i, d in enumerate(describe):
        print(f"{i:3d}  [{d}] {store.captions[i]}")
    if args.out and cfg.data.codec == "pixel":  # a preview grid of the first composites (pixel codec: no decoder)

        n = min(args.show, len(store))
        save_grid(tensor_to_images(store.latents[:n]), args.out, nrow=int(n ** 0.5 + 0.999),
                  upscale=max(1, 128 // cfg.data.resolution))
        print(f"[cutmix] preview → {args.out}")
    print(f"[cutmix] {len(store)} composites ({cm.setting}, ×{cm.times})")
    return 0


def cmd_precompute(args) -> int:
    if args.verify:  # a store folder, or the data.store_dir of a config
        store_dir = args.config if Path(args.config).is_dir() else _resolve_config(args.config, args.overrides).data.store_dir
        problems = verify_store(store_dir)
        print("\n".join(problems) or f"[precompute] {store_dir}: every shard checks out")
        return 1 if problems else 0
    cfg = _resolve_config(args.config, args.overrides)
    out = precompute(cfg.data, num_shards=args.num_shards, shard_index=args.shard_index, workers=args.workers,
                     device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    rep = out["report"]
    first = {}
    for key, reason in rep["examples"]:
        first.setdefault(reason, key)
    skipped = ", ".join(f"{reason} ×{n}" + (f" (e.g. {first[reason]})" if reason in first else "")
                        for reason, n in sorted(rep["skipped"].items())) or "none"
    print(f"[precompute] {len(out['done'])} shards written, {len(out['skipped_shards'])} already done; "
          f"{rep['kept']} of {rep['total']} images kept, skipped {skipped}")
    return 0


def cmd_ingest(args) -> int:
    if args.action == "world":  # a background subset of the world as a sidecar folder (fine-tuning example)
        backgrounds = tuple(b for b in args.backgrounds.split(",") if b)
        keys = ingest.write_world_folder(args.out, args.n, seed=args.seed, resolution=args.resolution,
                                         backgrounds=backgrounds, max_objects=args.max_objects)
        print(f"[ingest] {len(keys)} world images ({', '.join(backgrounds) or 'all backgrounds'}) with .txt captions "
              f"→ {args.out}; next: microt2i precompute <preset> data.source=sidecar data.root={args.out} "
              f"data.store_dir=<store>")
        return 0
    cfg = _resolve_config(args.config, args.overrides)  # list: what precompute would read, without encoding
    listed = ingest.list_ingest(cfg.data)
    items = [it for it in listed if it.ref[0] != "skip"]
    n_caps = Counter(len(it.captions) for it in items)
    print(f"[ingest] {cfg.data.source} {cfg.data.root}: {len(items)} images; captions per image {dict(n_caps)}")
    for it in listed:
        if it.ref[0] == "skip":  # e.g. a truncated archive: precompute counts it under this reason too
            print(f"[ingest] warning: {it.ref[1]}: {it.key}")
    for it in items[:args.show]:
        cap = it.captions[0] if it.captions else "(none)"
        print(f"  {it.key}  {ingest.clean_caption(cap) if cfg.data.clean_captions and it.captions else cap}")
    return 0


def cmd_filter(args) -> int:
    cfg = _resolve_config(args.config, args.overrides)
    spec = args.classes or ("world" if cfg.data.source == "world" else "")
    if spec == "world":
        classes = CLASSES
    elif spec == "imagenet":
        classes = [name for _, name in imagenet_classes()]
    elif spec == "cifar10":  # CIFAR-Captions' ten classes (paper 003 §4)
        classes = "airplane,car,bird,cat,deer,dog,frog,horse,ship,truck".split(",")
    else:
        classes = [c.strip() for c in spec.split(",") if c.strip()]

    with heartbeat("filter", f"scoring images with {args.scorer}"):
        filter_dataset(cfg.data, args.out, classes=list(classes), scorer=args.scorer, threshold=args.threshold,
                       batch_size=args.batch_size, device=args.device)
    return 0


def cmd_bench(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what in ("all", "sample", "loader"):  # the one report (issue 11), or one of its parts

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


def cmd_recipe(args) -> int:
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


def cmd_cost_recipe(args) -> int:
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
    cfg = apply_overrides(presets.get(args.name), args.overrides)
    m, d, cm = cfg.model, cfg.data, cfg.augment.cutmix
    per = bytes_per_sample(d, (m.in_channels, m.input_size, m.input_size), m.text_dim)
    total = sum(per.values())
    print(f"CutMix composites of {args.name} (CM-{cm.setting}, {args.n:,} per setting; paper 000 App. E: 1,281,167)")
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
    print(f"Text-encoder cost (paper 003 Table 2), measured here on {device} with batches of {args.batch_size} "
          f"world long captions, extrapolated to 1M captions\n")
    print(format_text_cost_table(costs, device))
    for line in skipped:
        print(f"skipped {line}")
    return 0 if costs else 2


def cmd_eval(args) -> int:
    world = args.detector == "world"  # world defaults finish in minutes on a CPU; the official suite is 100 × 4
    if args.per_tag is None:
        args.per_tag = 10 if world else 100
    if args.images_per_prompt is None:
        args.images_per_prompt = 1 if world and args.metric == "geneval" else 4
    if args.metric == "geneval":
        print(f"[eval geneval] {args.per_tag} draws per tag × {args.images_per_prompt} images per prompt"
              + (" (world default; the official suite: --per-tag 100 --images-per-prompt 4)" if world else ""))
    elif args.metric in DEFAULT_N and args.n is None:
        print(f"[eval {args.metric}] N = {DEFAULT_N[args.metric]} (default, minutes on a CPU for world runs; "
              f"the papers' N: --n 30000)")

    ref = dict(reference=args.reference, captions=args.captions, labels_file=args.labels_file)
    fd = dict(features=args.features, weights=args.weights, resize=args.resize, **ref)
    opts = {"fid": fd, "fd": fd, "kid": fd,
            "prdc": dict(fd, k=args.k, splits=args.splits),
            "clipscore": dict(model=args.model, **ref),
            "geneval": dict(detector=args.detector, images_per_prompt=args.images_per_prompt,
                            per_tag_draws=args.per_tag, color_model=args.color_model, extend=args.extend),
            "dpg": dict(model=args.model, csv=args.csv, tiles=args.images_per_prompt, extend=args.extend),
            "aesthetic": dict(head=args.head, model=args.model, prompts=args.prompts),
            "pickscore": dict(model=args.model, prompts=args.prompts),
            "preference": dict(against=args.against, judge=args.judge, prompts=args.prompts)}[args.metric]
    if args.metric in ("aesthetic", "pickscore", "preference"):  # eval/aesthetic.py, eval/preference.py

        register_suites(SUITES)
        DEFAULT_N.setdefault(args.metric, 64)
    try:
        report = run_eval(args.metric, args.run_dir, out=args.out, seed=args.seed, n=args.n, steps=args.steps,
                          cfg_scale=args.cfg_scale, batch_size=args.batch_size, device=args.device,
                          progress=not args.no_progress, **opts)
    except ValueError as e:  # bad option values: one line, like config errors
        print(f"microt2i eval: error: {e}", file=sys.stderr)
        return 2
    if args.metric == "geneval":
        print(format_table(report["summary"]))
    else:
        m = report["metrics"]
        at = f"  [N={m['n']:,}]" if isinstance(m.get("n"), int) else ""  # a smaller N than the papers' is visible
        for key, value in m.items():
            print(f"{key:>28}: {value:.4f}{at}" if isinstance(value, float) else f"{key:>28}: {value}")
    return 0


def cmd_serve(args) -> int:
    serve(args.runs, host=args.host, port=args.port, device=args.device)
    return 0


def cmd_experiment(args) -> int:
    extra = tuple(args.overrides) + ((f"train.threads={args.threads}",) if args.threads else ())
    flags = [f"--scale {args.scale:g}" if args.scale != 1 else "", f"--seeds {args.seeds}",
             f"--arms {args.arms}" if args.arms else "", f"--threads {args.threads}" if args.threads else "",
             "--any-commit" if args.any_commit else ""]
    command = " ".join(["microt2i experiment", args.name, *args.overrides, *filter(None, flags)])
    out = run_experiment(args.name, scale=args.scale, seeds=args.seeds, arms=args.arms, render_only=args.render_only,
                         root=args.root, md_path=args.md or None, extra=extra, any_commit=args.any_commit,
                         keep_checkpoints=args.keep_checkpoints, command=command, progress=not args.no_progress)

    print(markdown_table(out["summary"]))
    print("\n".join(claim_lines(out["summary"])))
    return 0


def _bounded(kind, low: float, strict: bool = False):
    """An argparse type: a `kind` number >= low (> low with `strict`); else argparse's one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value
    return parse


_POS, _NAT, _POS_FLOAT = _bounded(int, 1), _bounded(int, 0), _bounded(float, 0, strict=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="microt2i", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  microt2i demo\n  microt2i train world-s\n  microt2i sample --run "
                                       "runs/world-s --prompt \"A red star.\"\n  microt2i COMMAND --help")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no log lines (errors only)")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback (anywhere on the "
                                                        "command line; by default it goes to a log file)")
    sub = p.add_subparsers(dest="command", required=True)

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
    t.add_argument("--stop-nimg", type=_POS, default=None, help="checkpoint and stop after this many images")
    t.add_argument("--recipe", default=None, help="train a multi-stage recipe instead (same as `microt2i recipe NAME`)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--model", choices=["dit-i", "cad-i", "microdit"],
                   help="a world preset's network (world-s → world-cad-s)")
    t.add_argument("--objective", choices=["edm", "vp", "flow"], help="shorthand for objective.kind=…")
    t.add_argument("--init", default=None, help="fine-tune from a run folder or an exported model folder (sets "
                                                "train.init; see train.init_mode, train.freeze)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="sample PNGs + a grid from a finished run (EMA weights) or an exported model")
    s.add_argument("run_dir", nargs="?", default=None, help="a finished run folder (same as --run)")
    s.add_argument("--run", default=None, help="a finished run folder (ema/, config.yaml, null_text.safetensors)")
    s.add_argument("--model", default=None, help="an export folder written by `microt2i export` (same images)")
    s.add_argument("--prompt", action="append", help="a caption (repeatable)")
    s.add_argument("--prompts-file", help="one caption per line (.txt) or {\"prompt\": …} per line (.jsonl)")
    s.add_argument("--extend", default=None, metavar="EXTENDER",
                   help="rewrite prompts as long captions first: 'world' (template) or a causal-LM id / folder")
    s.add_argument("--n", type=_POS, default=1, help="images per prompt (image k uses the noise of (seed, k))")
    s.add_argument("--sampler", default=None, help="heun | euler | ddim | dpmpp_2m (default: the run's eval.sampler)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's eval.steps)")
    s.add_argument("--cfg", "--cfg-scale", dest="cfg_scale", type=float, default=None,
                   help="CFG scale: uncond + s·(cond − uncond) (default: the run's eval.grid_cfg_scale, else eval.cfg_scale)")
    s.add_argument("--seed", type=int, default=None, help="default: the run's eval.seed")
    s.add_argument("--out-dir", default=None, help="PNGs + samples.jsonl go here (default: --out without .png, "
                                                   "else ./samples)")
    s.add_argument("--out", default=None, help="the grid PNG (default: <out-dir>/grid.png)")
    s.add_argument("--nrow", type=_POS, default=8, help="grid columns")
    s.add_argument("--upscale", type=_POS, default=4, help="grid nearest-neighbour upscale")
    s.add_argument("--batch-size", type=_POS, default=64)
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

    w = sub.add_parser("world", help="render embedded-world images with captions and detections; "
                                     "`world train-vae` retrains the shipped world VAE")
    w.add_argument("action", nargs="?", choices=["render", "train-vae"], default="render")
    w.add_argument("--steps", type=_POS, default=3000, help="train-vae: optimiser steps (the shipped one: 900)")
    w.add_argument("--batch-size", type=_POS, default=32, help="train-vae: renders per step")
    w.add_argument("--vae-dir", default=str(Path(__file__).parent / "world" / "vae"),
                   help="train-vae: output folder (default: the shipped asset in the package)")
    w.add_argument("--threads", type=_NAT, default=0, help="train-vae: torch threads; 0 = leave as is")
    w.add_argument("--n", type=_POS, default=16)
    w.add_argument("--resolution", type=_POS, default=64)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--captions", choices=["long", "aio"], default="long")
    w.add_argument("--max-objects", type=_POS, default=3)
    w.add_argument("--out", default="world.png")
    w.set_defaults(fn=cmd_world)

    ca = sub.add_parser("caption", help="caption images into a TSV/JSONL caption file; resumable and shardable "
                                        "(paper 000 §2.1 text augmentation)")
    ca.add_argument("--source", default="world", help="'world' or an image folder (keys = relative paths)")
    ca.add_argument("--captioner", choices=["world", "aio", "template", "llava"], default=None,
                    help="default: world (oracle long captions) for the world, llava for a folder")
    ca.add_argument("--out", default="captions.tsv", help=".tsv or .jsonl; shards write <stem>.shardI-of-N<suffix>")
    ca.add_argument("--model", default="llava-hf/llama3-llava-next-8b-hf", help="llava: hub id or local folder")
    ca.add_argument("--classes", default="imagenet", help="aio: 'imagenet' (synset folders) or 'world'")
    ca.add_argument("--boxes", default=None, help="llava: JSONL of CutMix composites {key, box, pattern}")
    ca.add_argument("--max-new-tokens", type=_POS, default=200)
    ca.add_argument("--batch-size", type=_POS, default=16, help="images per captioner call and per append")
    ca.add_argument("--device", default=None, help="llava: default cuda if available (bf16), else cpu")
    ca.add_argument("--num-shards", type=_POS, default=1, help="split the keys over this many jobs (GPUs, nodes)")
    ca.add_argument("--shard-index", type=_NAT, default=0, help="this job's shard, 0-based")
    ca.add_argument("--n", type=_POS, default=1000, help="world: number of images")
    ca.add_argument("--seed", type=int, default=0, help="world: dataset seed (item i = make_dataset's item i)")
    ca.add_argument("--resolution", type=_POS, default=64, help="world: image side")
    ca.add_argument("--max-objects", type=_POS, default=3, help="world: objects per scene")
    ca.add_argument("--no-progress", action="store_true")
    ca.set_defaults(fn=cmd_caption)

    cm = sub.add_parser("cutmix", help="build (or resume) the CutMix composite set of a preset's data, captioned "
                                       "and encoded like the base set (paper 000 App. E)")
    cm.add_argument("config", help="preset name (its data.* and augment.cutmix.*) or a config .yaml")
    cm.add_argument("overrides", nargs="*", help="e.g. augment.cutmix.setting=1/4 augment.cutmix.times=2")
    cm.add_argument("--show", type=_NAT, default=8, help="print this many composites' captions")
    cm.add_argument("--out", default=None, help="write a preview grid PNG of them (pixel codec)")
    cm.add_argument("--verify", action="store_true", help="check every composite shard (sha256, dtypes, shapes)")
    cm.add_argument("--model", default="llava-hf/llama3-llava-next-8b-hf",
                    help="data.captions=long on real images: the LLaVA-NeXT hub id or local folder")
    cm.add_argument("--max-new-tokens", type=_POS, default=200, help="LLaVA caption length")
    cm.add_argument("--num-shards", type=_POS, default=1, help="split the shards over this many jobs (GPUs, machines)")
    cm.add_argument("--shard-index", type=_NAT, default=0, help="this job's share, 0-based")
    cm.add_argument("--workers", type=_NAT, default=0, help="image decoding processes (0 = in this process)")
    cm.add_argument("--device", default="cpu", help="where LLaVA, the codec and the text encoder run")
    cm.add_argument("--batch-size", type=_POS, default=64, help="images per codec call")
    cm.add_argument("--caption-batch-size", type=_POS, default=16, help="composites per LLaVA call and per append")
    cm.add_argument("--no-progress", action="store_true")
    cm.set_defaults(fn=cmd_cutmix)

    pc = sub.add_parser("precompute", help="encode a data set (world, ImageNet, folder) into the sharded store at "
                                           "data.store_dir; resumable, shardable over machines")
    pc.add_argument("config", help="preset or config .yaml (its data.* section); with --verify also a store folder")
    pc.add_argument("overrides", nargs="*", help="e.g. data.source=imagenet data.root=/data/imagenet "
                                                 "data.store_dir=/data/store data.captions=aio")
    pc.add_argument("--verify", action="store_true", help="check every shard (sha256, dtypes, shapes, counts)")
    pc.add_argument("--num-shards", type=_POS, default=1, help="split the shards over this many jobs (machines)")
    pc.add_argument("--shard-index", type=_NAT, default=0, help="this job's share, 0-based")
    pc.add_argument("--workers", type=_NAT, default=0, help="image decoding processes (0 = in this process)")
    pc.add_argument("--device", default="cpu", help="where the codec and text encoder run")
    pc.add_argument("--batch-size", type=_POS, default=64, help="images per codec call")
    pc.add_argument("--no-progress", action="store_true")
    pc.set_defaults(fn=cmd_precompute)

    fl = sub.add_parser("filter", help="keep images whose class-prompt score beats a threshold (paper 003's "
                                       "CIFAR-Captions); writes the kept set with scores")
    fl.add_argument("config", help="preset or config .yaml (its data.* section picks the images)")
    fl.add_argument("overrides", nargs="*")
    fl.add_argument("--classes", default=None, help="world | imagenet | cifar10 | comma-separated names "
                                                    "(default: world for the world)")
    fl.add_argument("--scorer", default="world", help="'world' (the world detector) or a CLIP hub id / folder")
    fl.add_argument("--threshold", type=float, default=0.25, help="keep iff score > this (paper: CLIP 0.25)")
    fl.add_argument("--out", default="filtered.jsonl", help=".jsonl or .tsv")
    fl.add_argument("--batch-size", type=_POS, default=64)
    fl.add_argument("--device", default="cpu")
    fl.set_defaults(fn=cmd_filter)

    b = sub.add_parser("bench", help="benchmarks; `bench` alone runs the one report (presets, PixArt, sampler, "
                                     "loader) and appends it to BENCHMARKS.md")
    b.add_argument("what", nargs="?", default="all", choices=["all", "train", "microdit", "sample", "loader"],
                   help="all (default): the one report; train: DiT-I vs PixArt; microdit: masked vs unmasked and "
                        "MoE vs dense MicroDiT; sample: Heun 30 steps + CFG img/s; loader: samples/s")
    b.add_argument("--preset", default=None, help="default: world-s (train, sample), world-microdit-s (microdit); "
                                                  "all: comma-separated presets (default: every world and paper one)")
    b.add_argument("--mask-ratio", type=float, default=0.75, help="microdit: the masked variants' mask ratio")
    b.add_argument("--variants", default="moe-unmasked,moe-masked,dense-unmasked,dense-masked",
                   help="microdit: comma-separated subset (one XL variant fits a GPU: moe-masked is stage 1)")
    b.add_argument("--batch-size", type=_POS, default=None, help="default: 8 (train, microdit, sample), 128 (loader)")
    b.add_argument("--steps", type=_POS, default=3, help="timed steps per repetition")
    b.add_argument("--warmup", type=_NAT, default=2)
    b.add_argument("--repeats", type=_POS, default=5, help="interleaved repetitions; the median is reported")
    b.add_argument("--text-len", type=_POS, default=64)
    b.add_argument("--threads", type=_NAT, default=0, help="torch intra-op threads on CPU; 0 = leave as is")
    b.add_argument("--device", default="auto")
    b.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="train, microdit; default fp32")
    b.add_argument("--out", default="BENCHMARKS.md")
    b.add_argument("--no-write", action="store_true")
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser("recipe", help="train a multi-stage recipe (e.g. microdit-xl-2: Table 3's four stages)")
    r.add_argument("name", help="recipe name: " + "microdit-xl-2, world-microdit-s, world-microdit-tiny, dit-i")
    r.add_argument("overrides", nargs="*", help="dotted overrides applied to every stage")
    r.add_argument("--root", default=None, help="stage folders go under it; default: runs/<name>")
    r.add_argument("--dry-run", action="store_true", help="print the stages and their folders and exit")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_recipe)

    e = sub.add_parser("eval", help="evaluate a finished run: FD/KID, PRDC, CLIPScore, GenEval, DPG → JSON + HTML")
    e.add_argument("metric", choices=["fid", "fd", "kid", "prdc", "clipscore", "geneval", "dpg", "aesthetic",
                                      "pickscore", "preference"],
                   help="fid / kid: FD + KID on Inception features (FD-EffNetLite0 on the world); fd: the same on "
                        "DINOv2 (FD-DINOv2); prdc: precision/recall/density/coverage (DINOv2 on real references); "
                        "aesthetic: LAION head (--head); pickscore; preference: run_dir vs --against (--judge)")
    e.add_argument("run_dir", help="a finished run folder (ema/, config.yaml, null_text.safetensors)")
    e.add_argument("--n", type=_POS, default=None,
                   help="fid/fd/kid/prdc/clipscore: images (default: the papers' N, 50000 for ImageNet val and "
                        "folders, 30000 for an image + caption set; 64 on the world); dpg: prompts (default 16)")
    e.add_argument("--reference", default=None,
                   help="fid/fd/kid/prdc/clipscore: world | val (the run's data.root/val) | imagenet-val:ROOT | "
                        "folder:PATH (default: val on an ImageNet run, world on the world)")
    e.add_argument("--captions", default=None, help="reference prompts: a caption file keyed by image path (val: "
                                                    "default AIO 'An image of a <class>'; folder: an image + "
                                                    "caption set, COCO-30k style)")
    e.add_argument("--labels-file", default=None, help="flat ImageNet val/: 'filename synset' lines or "
                                                       "LOC_val_solution.csv (default: the run's data.labels_file)")
    e.add_argument("--features", default=None, choices=["effnet-lite0", "inception", "dinov2", "clip"],
                   help="default: inception for fid/kid, dinov2 for fd/prdc on a real reference; effnet-lite0 on "
                        "the world")
    e.add_argument("--weights", default=None, help="inception: pt_inception-2015-12-05-6726825d.pth (pytorch-fid) "
                                                   "or clean-fid's TorchScript .pt; dinov2/clip: id or folder "
                                                   "(default facebook/dinov2-large)")
    e.add_argument("--resize", default=None, choices=["bilinear", "clean"],
                   help="inception resize to 299: bilinear (pytorch-fid, default for its .pth) or clean (clean-fid)")
    e.add_argument("--k", type=_POS, default=3, help="prdc: nearest neighbours (ImageNet-T2I / DiffEvals: 3)")
    e.add_argument("--splits", type=_POS, default=5, help="prdc: average over this many equal chunks (DiffEvals: 5)")
    e.add_argument("--extend", default=None, metavar="EXTENDER",
                   help="geneval/dpg: rewrite each prompt with the prompt extender before generation (GenEval★, "
                        "paper 000 Tables 2, 9-11): 'world' or a causal-LM id / folder; results in <metric>-extended/")
    e.add_argument("--model", default=None, help="clipscore: CLIP / Jina-CLIP id or folder; dpg: a VQA model; "
                                                 "aesthetic: the CLIP ViT-L/14; pickscore: default PickScore_v1")
    e.add_argument("--head", default=None, help="aesthetic: LAION aesthetic head file (.pth / .safetensors)")
    e.add_argument("--against", default=None, help="preference: run folder B (run_dir is A)")
    e.add_argument("--judge", default="world", help="preference: 'world' (rule-based) or a VLM hub id / folder")
    e.add_argument("--prompts", default=None, help="aesthetic/pickscore/preference: prompt file (PartiPrompts .tsv, "
                                                   "DrawBench .csv, .txt); default: held-out world captions")
    e.add_argument("--detector", default="world", help="geneval: 'world' or a transformers segmentation model id")
    e.add_argument("--color-model", default=None, help="geneval: CLIP id or folder for colours (non-world detector)")
    e.add_argument("--per-tag", type=_POS, default=None, help="geneval: draws per tag (default 10 on the world, "
                                                              "minutes on a CPU; the official suite uses 100)")
    e.add_argument("--images-per-prompt", type=_POS, default=None,
                   help="geneval images (default 1 on the world, 4 officially) / dpg tiles (4) per prompt")
    e.add_argument("--csv", default=None, help="dpg: DPG-Bench question CSV (default: questions from world scenes)")
    e.add_argument("--seed", type=int, default=None, help="default: 42 for geneval, else the run's eval.seed")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--cfg-scale", type=float, default=None)
    e.add_argument("--batch-size", type=_POS, default=64)
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", default=None, help="default: <run_dir>/eval/<metric>")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_eval)

    xp = sub.add_parser("experiment", help="the papers' ablations on the world: arms × seeds at an equal budget, "
                        "bootstrap intervals, HTML report + EXPERIMENTS.md section (finished arms are reused)")
    xp.add_argument("name", help="captions | image-augmentation | masking | masking-steps | objective | overfitting | "
                                 "time-to-quality")
    xp.add_argument("overrides", nargs="*", help="dotted overrides for every arm, e.g. train.device=cuda")
    xp.add_argument("--scale", type=_POS_FLOAT, default=1.0, help="× every image count (1 = ≤ 10 min per arm on a CPU)")
    xp.add_argument("--seeds", type=_POS, default=2, help="seeds 0 … N−1")
    xp.add_argument("--arms", default=None, help="comma-separated arms (default: the experiment's main arms)")
    xp.add_argument("--render-only", action="store_true", help="train nothing: table + report from finished arms")
    xp.add_argument("--any-commit", action="store_true", help="reuse finished arms of the same config from any commit")
    xp.add_argument("--threads", type=_NAT, default=0, help="torch CPU threads (train.threads; 0 = leave as is)")
    xp.add_argument("--root", default="runs/experiments")
    xp.add_argument("--md", default="EXPERIMENTS.md", help="markdown file whose section is regenerated ('' = none)")
    xp.add_argument("--keep-checkpoints", action="store_true", help="keep training states of finished arms")
    xp.add_argument("--no-progress", action="store_true")
    xp.set_defaults(fn=cmd_experiment)

    sv = sub.add_parser("serve", help="a local web page to try prompts on finished runs (seed, CFG, steps, "
                                      "sampler, prompt extender), with each run's grid and metrics")
    sv.add_argument("runs", nargs="+", help="run folders, or a folder of runs (e.g. runs)")
    sv.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    sv.add_argument("--host", default="127.0.0.1", help="127.0.0.1 = this machine only")
    sv.add_argument("--device", default="cpu")
    sv.set_defaults(fn=cmd_serve)

    ig = sub.add_parser("ingest", help="your own data: `ingest list <config>` shows what precompute would read "
                                       "(sidecar / webdataset / hf sources); `ingest world OUT` writes a world subset "
                                       "as an image folder with .txt captions")
    ig.add_argument("action", choices=["list", "world"])
    ig.add_argument("config", nargs="?", default="world-s", help="list: preset or config .yaml (its data.* section)")
    ig.add_argument("overrides", nargs="*", help="list: e.g. data.source=webdataset data.root='shards/{00000..00009}"
                                                 ".tar' data.store_dir=store")
    ig.add_argument("--out", default="world-subset", help="world: output folder")
    ig.add_argument("--backgrounds", default="", help="world: comma-separated backgrounds kept (e.g. slate)")
    ig.add_argument("--n", type=_POS, default=512, help="world: images")
    ig.add_argument("--resolution", type=_POS, default=32)
    ig.add_argument("--seed", type=int, default=0, help="world: item i is world item i of this seed")
    ig.add_argument("--max-objects", type=_POS, default=3)
    ig.add_argument("--show", type=_NAT, default=5, help="list: print this many keys and captions")
    ig.set_defaults(fn=cmd_ingest)

    c = sub.add_parser("cost", help="cost accounting: `cost recipe` (FLOPs, GPU-days, dollars), "
                                    "`cost text-encoders` (paper 003 Table 2)")
    csub = c.add_subparsers(dest="what", required=True)
    # each cost subcommand adds its parser to `csub` below
    cr = csub.add_parser("recipe", help="FLOPs per image and per stage, GPU-days and dollars of a recipe; "
                                        "microdit-xl-2 next to paper 003's Table 6")
    cr.add_argument("name", help="recipe (microdit-xl-2, world-microdit-s, world-microdit-tiny, dit-i) or a single "
                                 "preset as a one-stage recipe (e.g. cad-i-256)")
    cr.add_argument("overrides", nargs="*", help="dotted overrides applied to every stage, e.g. data.text_len=120")
    cr.add_argument("--img-s", default=None,
                    help="measured or stated training img/s per H100: one value, or one per stage (comma-separated)")
    cr.add_argument("--mfu", type=float, default=None,
                    help="assumed model FLOPs utilisation on an H100 (0-1) when no throughput is given")
    cr.set_defaults(fn=cmd_cost_recipe)
    cc = csub.add_parser("cutmix", help="disk (from the store layout) and GPU-hours (from a measured rate) of a "
                                        "preset's CutMix composites (paper 000 App. E)")
    cc.add_argument("name", help="preset, e.g. dit-i-256")
    cc.add_argument("overrides", nargs="*", help="e.g. data.text_store=ids data.text_len=256")
    cc.add_argument("--n", type=_POS, default=1_281_167, help="composites per setting (default: ImageNet train)")
    cc.add_argument("--rate", type=float, default=None, help="measured composites/s per GPU")
    cc.set_defaults(fn=cmd_cost_cutmix)
    ct = csub.add_parser("text-encoders", help="paper 003 Table 2: measured time and storage per 1M captions of "
                                               "the text encoders available here")
    ct.add_argument("--encoders", default="minilm,flan-t5-xl,clip-l",
                    help="comma-separated names, hub ids or folders; ones not available offline are skipped")
    ct.add_argument("--length", type=_POS, default=None, help="tokens kept (default: CLIP 77, T5 256, else 64)")
    ct.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="storage dtype")
    ct.add_argument("--batch-size", type=_POS, default=64)
    ct.add_argument("--repeats", type=_POS, default=5, help="timed batches; the median is reported")
    ct.add_argument("--threads", type=_NAT, default=0, help="torch intra-op threads on CPU; 0 = leave as is")
    ct.add_argument("--device", default="cpu")
    ct.set_defaults(fn=cmd_cost_text_encoders)

    pr = sub.add_parser("presets", help="list the named presets")
    pr.set_defaults(fn=lambda a: print("\n".join(__import__("microt2i.presets", fromlist=["names"]).names())) or 0)
    _add_examples(sub)
    return p


EXAMPLES = {  # shown under `microt2i CMD --help`; every line runs on the embedded world (docs/ has more)
    "demo": ["microt2i demo", "microt2i demo --preset world-tiny --run-dir runs/tiny",
             "microt2i demo --model cad-i --objective flow"],
    "train": ["microt2i train world-s", "microt2i train world-tiny train.total_nimg=256 train.tensorboard=true",
              "microt2i train world-s --dry-run", "microt2i train world-s --stop-nimg 4096   # checkpoint and stop",
              "torchrun --standalone --nproc_per_node=8 -m microt2i.cli train dit-i-256 train.parallel=fsdp"],
    "sample": ['microt2i sample --run runs/demo --prompt "A red star on a grey background." --n 4 --seed 0',
               "microt2i sample --run runs/demo --prompts-file prompts.txt --steps 30 --cfg 5 --sampler heun",
               'microt2i sample --model exports/demo --prompt "a photo of two red stars" --extend world'],
    "export": ["microt2i export runs/demo exports/demo", "microt2i export runs/demo exports/demo-bf16 --dtype bf16",
               "python -c \"from diffusers import DiffusionPipeline as P; "
               "P.from_pretrained('exports/demo', trust_remote_code=True)('a red star', seed=0).images[0].save('x.png')\""],
    "report": ["microt2i report runs/demo", "microt2i report runs/world-s --out world-s.html"],
    "world": ["microt2i world --n 16 --resolution 64 --out world.png", "microt2i world --captions aio"],
    "caption": ["microt2i caption --source world --n 100 --out captions.tsv",
                "microt2i caption --source /data/imagenet/train --captioner llava --num-shards 8 --shard-index 0"],
    "cutmix": ["microt2i cutmix world-tiny augment.cutmix.setting=1/4 --out cutmix.png",
               "microt2i cutmix dit-i-256 data.source=imagenet data.root=/data/imagenet data.store_dir=/data/store "
               "data.caption_file='captions.shard*-of-8.tsv' --device cuda --num-shards 8 --shard-index 0"],
    "precompute": ["microt2i precompute world-tiny data.store_dir=/tmp/store",
                   "microt2i precompute dit-i-256 data.source=imagenet data.root=/data/imagenet "
                   "data.store_dir=/data/store --workers 8 --device cuda", "microt2i precompute /data/store --verify"],
    "filter": ["microt2i filter world-tiny --out kept.jsonl"],
    "bench": ["microt2i bench train --preset world-s --threads 1", "microt2i bench sample --no-write"],
    "recipe": ["microt2i recipe microdit-xl-2 --dry-run", "microt2i recipe world-microdit-tiny --root runs/mt"],
    "eval": ["microt2i eval geneval runs/demo", "microt2i eval fid runs/demo --n 256",
             "microt2i eval dpg runs/demo --n 32"],
    "cost": ["microt2i cost recipe microdit-xl-2", "microt2i cost text-encoders --encoders minilm",
             "microt2i cost cutmix dit-i-256 data.text_store=ids --rate 12"],
    "presets": ["microt2i presets"],
    "serve": ["microt2i serve runs/demo", "microt2i serve runs --port 8080   # every run under runs/"],
    "experiment": ["microt2i experiment captions --threads 1", "microt2i experiment image-augmentation --arms ta,ta-cutmix",
                   "microt2i experiment captions --render-only --any-commit",
                   "microt2i experiment masking --scale 10 train.device=cuda"],
}


def _add_examples(sub) -> None:
    for name, parser in sub.choices.items():
        if name in EXAMPLES:
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
            parser.epilog = "examples:\n" + "\n".join(f"  {ex}" for ex in EXAMPLES[name])


def parse_cli(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line. Dotted overrides may also follow the options (`train world-s --objective vp
    eval.sampler=ddim`): argparse stops its positional list at the first option, so those join `overrides` here."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    late = [a for a in rest if "=" in a and not a.startswith("-")]
    if late and hasattr(args, "overrides"):
        args.overrides = [*(args.overrides or []), *late]
        rest = [a for a in rest if a not in late]
    if rest:
        parser.parse_args(argv)  # the usual one-line "unrecognized arguments" error, exit 2
    return args


CLEAR_ERRORS = (ValueError, OSError, FloatingPointError, RuntimeError, KeyError)  # carry a message for the user


def _log_traceback(command: str) -> Path | None:
    """The current exception's full traceback, written to <cache>/logs/; its path (None if it cannot be written)."""
    try:
        path = cache_root() / "logs" / f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{command}-{os.getpid()}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"microt2i {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
        for old in sorted(path.parent.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-50]:  # the newest 50 kept
            old.unlink(missing_ok=True)
        return path
    except OSError:
        return None


def error_line(command: str, e: BaseException, log: Path | None) -> str:
    """The one line a failure prints: what went wrong (its message names the input and the fix), and where the
    traceback went. Messages of our own errors stand alone; anything else is unexpected and says so."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (ConfigError, FileNotFoundError, FileExistsError)):
        text = msg
    elif isinstance(e, CLEAR_ERRORS):
        text = f"{type(e).__name__}: {msg}"
    else:
        text = f"unexpected {type(e).__name__}: {msg} (please report it)"
    where = f"traceback in {log}" if log else "traceback not logged"
    return f"microt2i {command}: error: {text} [{where}; --debug prints it]"


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure ends in one line on stderr (`error_line`) and exit status 2 (bad input) or 1
    (anything else); `--debug` (or MICROT2I_DEBUG=1) raises instead, printing the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("MICROT2I_DEBUG"))
    args = parse_cli([a for a in argv if a != "--debug"])
    try:  # transformers ≥ 5 draws a "Loading weights" bar for every model it loads
        from transformers.utils import logging as hf_logging  # heavy: only to quiet its progress bars

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from diffusers.utils import logging as diffusers_logging  # heavy: only to quiet its progress bars

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" etc.
    except ImportError:
        pass
    quiet = contextlib.ExitStack()
    if args.quiet:  # stdout to /dev/null, no bars; errors still reach stderr
        quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
        if hasattr(args, "no_progress"):
            args.no_progress = True
        os.environ["MICROT2I_PROGRESS"] = "off"  # progress.py: no bars, status or heartbeat lines either
    try:
        with quiet:
            if getattr(args, "device", None):  # a CUDA device on a CPU build: one line, before any work
                check_device(args.device, "--device")
            return args.fn(args)
    except KeyboardInterrupt:
        print(f"microt2i {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(error_line(args.command, e, _log_traceback(args.command)), file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, FileNotFoundError, FileExistsError)) else 1
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group cleanly

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
