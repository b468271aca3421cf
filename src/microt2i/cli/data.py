"""Data: `world`, `caption`, `cutmix`, `precompute`, `filter`, `ingest`. Each command's parser sits next to the
command."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from .common import NAT, POS, resolve_config


def cmd_world(args) -> int:
    import torch  # lazy: CLI startup (each command loads only what it runs)

    from ..eval.pages import save_grid  # lazy: CLI startup
    from ..world import detect, make_dataset  # lazy: CLI startup
    from ..world.vae import train_world_vae  # lazy: CLI startup

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
    from ..data.captions import read_text_utf8  # lazy: CLI startup (each command loads only what it runs)
    from ..encoders.captioner import folder_source, make_captioner, run_caption_job, world_source  # lazy: CLI startup

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
    from ..augment.cutmix import build_cutmix_shards, cutmix_dir  # lazy: CLI startup (each command loads only what it runs)
    from ..config import ConfigError, apply_overrides  # lazy: CLI startup
    from ..data.store import open_store, verify_store  # lazy: CLI startup
    from ..eval.pages import save_grid  # lazy: CLI startup
    from ..progress import heartbeat  # lazy: CLI startup
    from ..train.loop import prepare_cutmix, resolve_device  # lazy: CLI startup
    from ..world.pixels import tensor_to_images  # lazy: CLI startup

    cfg = resolve_config(args.config, args.overrides)
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
    from ..data.buckets import run_buckets  # lazy: CLI startup (each command loads only what it runs)
    from ..data.precompute import precompute  # lazy: CLI startup
    from ..data.store import verify_store  # lazy: CLI startup

    if args.verify:  # a store folder, or the data.store_dir of a config
        store_dir = args.config if Path(args.config).is_dir() else resolve_config(args.config, args.overrides).data.store_dir
        problems = verify_store(store_dir)
        print("\n".join(problems) or f"[precompute] {store_dir}: every shard checks out")
        return 1 if problems else 0
    cfg = resolve_config(args.config, args.overrides)
    out = precompute(cfg.data, num_shards=args.num_shards, shard_index=args.shard_index, workers=args.workers,
                     device=args.device, batch_size=args.batch_size, progress=not args.no_progress,
                     buckets=run_buckets(cfg))  # data.buckets: the model's bucket list (None without)
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
    from ..data import ingest  # lazy: CLI startup (each command loads only what it runs)

    if args.action == "world":  # a background subset of the world as a sidecar folder (fine-tuning example)
        backgrounds = tuple(b for b in args.backgrounds.split(",") if b)
        keys = ingest.write_world_folder(args.out, args.n, seed=args.seed, resolution=args.resolution,
                                         backgrounds=backgrounds, max_objects=args.max_objects)
        print(f"[ingest] {len(keys)} world images ({', '.join(backgrounds) or 'all backgrounds'}) with .txt captions "
              f"→ {args.out}; next: microt2i precompute <preset> data.source=sidecar data.root={args.out} "
              f"data.store_dir=<store>")
        return 0
    cfg = resolve_config(args.config, args.overrides)  # list: what precompute would read, without encoding
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
    from ..data.filter import filter_dataset  # lazy: CLI startup (each command loads only what it runs)
    from ..data.synsets import imagenet_classes  # lazy: CLI startup
    from ..progress import heartbeat  # lazy: CLI startup
    from ..world import CLASSES  # lazy: CLI startup

    cfg = resolve_config(args.config, args.overrides)
    spec = args.classes or ("world" if cfg.data.source == "world" else "")
    if spec == "world":
        classes = CLASSES
    elif spec == "imagenet":
        classes = [name for _, name in imagenet_classes()]
    elif spec == "cifar10":  # CIFAR-Captions' ten classes (MicroDiT §4)
        classes = "airplane,car,bird,cat,deer,dog,frog,horse,ship,truck".split(",")
    else:
        classes = [c.strip() for c in spec.split(",") if c.strip()]

    with heartbeat("filter", f"scoring images with {args.scorer}"):
        filter_dataset(cfg.data, args.out, classes=list(classes), scorer=args.scorer, threshold=args.threshold,
                       batch_size=args.batch_size, device=args.device)
    return 0


def add_parsers(sub) -> None:
    _add_source_parsers(sub)
    _add_store_parsers(sub)


def _add_source_parsers(sub) -> None:
    """`world` and `caption`: images and captions."""
    w = sub.add_parser("world", help="render embedded-world images with captions and detections; "
                                     "`world train-vae` retrains the shipped world VAE")
    w.add_argument("action", nargs="?", choices=["render", "train-vae"], default="render")
    w.add_argument("--steps", type=POS, default=3000, help="train-vae: optimiser steps (the shipped one: 900)")
    w.add_argument("--batch-size", type=POS, default=32, help="train-vae: renders per step")
    w.add_argument("--vae-dir", default=str(Path(__file__).parents[1] / "world" / "vae"),
                   help="train-vae: output folder (default: the shipped asset in the package)")
    w.add_argument("--threads", type=NAT, default=0, help="train-vae: torch threads; 0 = leave as is")
    w.add_argument("--n", type=POS, default=16)
    w.add_argument("--resolution", type=POS, default=64)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--captions", choices=["long", "aio"], default="long")
    w.add_argument("--max-objects", type=POS, default=3)
    w.add_argument("--out", default="world.png")
    w.set_defaults(fn=cmd_world)

    ca = sub.add_parser("caption", help="caption images into a TSV/JSONL caption file; resumable and shardable "
                                        "(ImageNet-T2I §2.1 text augmentation)")
    ca.add_argument("--source", default="world", help="'world' or an image folder (keys = relative paths)")
    ca.add_argument("--captioner", choices=["world", "aio", "template", "llava"], default=None,
                    help="default: world (oracle long captions) for the world, llava for a folder")
    ca.add_argument("--out", default="captions.tsv", help=".tsv or .jsonl; shards write <stem>.shardI-of-N<suffix>")
    ca.add_argument("--model", default="llava-hf/llama3-llava-next-8b-hf", help="llava: hub id or local folder")
    ca.add_argument("--classes", default="imagenet", help="aio: 'imagenet' (synset folders) or 'world'")
    ca.add_argument("--boxes", default=None, help="llava: JSONL of CutMix composites {key, box, pattern}")
    ca.add_argument("--max-new-tokens", type=POS, default=200)
    ca.add_argument("--batch-size", type=POS, default=16, help="images per captioner call and per append")
    ca.add_argument("--device", default=None, help="llava: default cuda if available (bf16), else cpu")
    ca.add_argument("--num-shards", type=POS, default=1, help="split the keys over this many jobs (GPUs, nodes)")
    ca.add_argument("--shard-index", type=NAT, default=0, help="this job's shard, 0-based")
    ca.add_argument("--n", type=POS, default=1000, help="world: number of images")
    ca.add_argument("--seed", type=int, default=0, help="world: dataset seed (item i = make_dataset's item i)")
    ca.add_argument("--resolution", type=POS, default=64, help="world: image side")
    ca.add_argument("--max-objects", type=POS, default=3, help="world: objects per scene")
    ca.add_argument("--no-progress", action="store_true")
    ca.set_defaults(fn=cmd_caption)


def _add_job_options(p, jobs: str, device: str) -> None:
    """The sharding, decoding and device options `cutmix` and `precompute` share."""
    p.add_argument("--num-shards", type=POS, default=1, help=f"split the shards over this many jobs ({jobs})")
    p.add_argument("--shard-index", type=NAT, default=0, help="this job's share, 0-based")
    p.add_argument("--workers", type=NAT, default=0, help="image decoding processes (0 = in this process)")
    p.add_argument("--device", default="cpu", help=device)
    p.add_argument("--batch-size", type=POS, default=64, help="images per codec call")


def _add_store_parsers(sub) -> None:
    """`cutmix`, `precompute`, `filter`, `ingest`: building and checking training stores."""
    cm = sub.add_parser("cutmix", help="build (or resume) the CutMix composite set of a preset's data, captioned "
                                       "and encoded like the base set (ImageNet-T2I App. E)")
    cm.add_argument("config", help="preset name (its data.* and augment.cutmix.*) or a config .yaml")
    cm.add_argument("overrides", nargs="*", help="e.g. augment.cutmix.setting=1/4 augment.cutmix.times=2")
    cm.add_argument("--show", type=NAT, default=8, help="print this many composites' captions")
    cm.add_argument("--out", default=None, help="write a preview grid PNG of them (pixel codec)")
    cm.add_argument("--verify", action="store_true", help="check every composite shard (sha256, dtypes, shapes)")
    cm.add_argument("--model", default="llava-hf/llama3-llava-next-8b-hf",
                    help="data.captions=long on real images: the LLaVA-NeXT hub id or local folder")
    cm.add_argument("--max-new-tokens", type=POS, default=200, help="LLaVA caption length")
    _add_job_options(cm, "GPUs, machines", "where LLaVA, the codec and the text encoder run")
    cm.add_argument("--caption-batch-size", type=POS, default=16, help="composites per LLaVA call and per append")
    cm.add_argument("--no-progress", action="store_true")
    cm.set_defaults(fn=cmd_cutmix)

    pc = sub.add_parser("precompute", help="encode a data set (world, ImageNet, folder) into the sharded store at "
                                           "data.store_dir; resumable, shardable over machines")
    pc.add_argument("config", help="preset or config .yaml (its data.* section); with --verify also a store folder")
    pc.add_argument("overrides", nargs="*", help="e.g. data.source=imagenet data.root=/data/imagenet "
                                                 "data.store_dir=/data/store data.captions=aio")
    pc.add_argument("--verify", action="store_true", help="check every shard (sha256, dtypes, shapes, counts)")
    _add_job_options(pc, "machines", "where the codec and text encoder run")
    pc.add_argument("--no-progress", action="store_true")
    pc.set_defaults(fn=cmd_precompute)

    fl = sub.add_parser("filter", help="keep images whose class-prompt score beats a threshold (MicroDiT's "
                                       "CIFAR-Captions); writes the kept set with scores")
    fl.add_argument("config", help="preset or config .yaml (its data.* section picks the images)")
    fl.add_argument("overrides", nargs="*")
    fl.add_argument("--classes", default=None, help="world | imagenet | cifar10 | comma-separated names "
                                                    "(default: world for the world)")
    fl.add_argument("--scorer", default="world", help="'world' (the world detector) or a CLIP hub id / folder")
    fl.add_argument("--threshold", type=float, default=0.25, help="keep iff score > this (paper: CLIP 0.25)")
    fl.add_argument("--out", default="filtered.jsonl", help=".jsonl or .tsv")
    fl.add_argument("--batch-size", type=POS, default=64)
    fl.add_argument("--device", default="cpu")
    fl.set_defaults(fn=cmd_filter)

    ig = sub.add_parser("ingest", help="your own data: `ingest list <config>` shows what precompute would read "
                                       "(sidecar / webdataset / hf sources); `ingest world OUT` writes a world subset "
                                       "as an image folder with .txt captions")
    ig.add_argument("action", choices=["list", "world"])
    ig.add_argument("config", nargs="?", default="world-s", help="list: preset or config .yaml (its data.* section)")
    ig.add_argument("overrides", nargs="*", help="list: e.g. data.source=webdataset data.root='shards/{00000..00009}"
                                                 ".tar' data.store_dir=store")
    ig.add_argument("--out", default="world-subset", help="world: output folder")
    ig.add_argument("--backgrounds", default="", help="world: comma-separated backgrounds kept (e.g. slate)")
    ig.add_argument("--n", type=POS, default=512, help="world: images")
    ig.add_argument("--resolution", type=POS, default=32)
    ig.add_argument("--seed", type=int, default=0, help="world: item i is world item i of this seed")
    ig.add_argument("--max-objects", type=POS, default=3)
    ig.add_argument("--show", type=NAT, default=5, help="list: print this many keys and captions")
    ig.set_defaults(fn=cmd_ingest)
