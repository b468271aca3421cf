"""Evaluation: `eval` (one metric of a finished run) and `experiment` (the papers' ablations on the world). Each
command's parser sits next to the command."""

from __future__ import annotations

import sys

from .common import NAT, POS, POS_FLOAT


def cmd_eval(args) -> int:
    from ..eval.aesthetic import register_suites  # lazy: CLI startup (each command loads only what it runs)
    from ..eval.geneval import format_table  # lazy: CLI startup
    from ..eval.runner import DEFAULT_N, SUITES, run_eval  # lazy: CLI startup

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


def cmd_experiment(args) -> int:
    from ..experiment import SUMMARY, claim_lines, markdown_table, render_summary, run_experiment  # lazy: CLI startup (each command loads only what it runs)

    extra = tuple(args.overrides) + ((f"train.threads={args.threads}",) if args.threads else ())
    if args.name == SUMMARY:  # every claim of every experiment from finished arms; trains nothing
        out = render_summary(root=args.root, md_path=args.md or None, seeds=args.seeds or 3, scale=args.scale,
                             extra=extra, any_commit=args.any_commit, gpu_scale=args.gpu_scale,
                             img_s=args.img_s, **({"mfu": args.mfu} if args.mfu is not None else {}))
        print(out["text"])
        return 0
    args.seeds = args.seeds or 2
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


def add_parsers(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a finished run: FD/KID, PRDC, CLIPScore, GenEval, DPG → JSON + HTML")
    e.add_argument("metric", choices=["fid", "fd", "kid", "prdc", "clipscore", "geneval", "dpg", "aesthetic",
                                      "pickscore", "preference"],
                   help="fid / kid: FD + KID on Inception features (FD-EffNetLite0 on the world); fd: the same on "
                        "DINOv2 (FD-DINOv2); prdc: precision/recall/density/coverage (DINOv2 on real references); "
                        "aesthetic: LAION head (--head); pickscore; preference: run_dir vs --against (--judge)")
    e.add_argument("run_dir", help="a finished run folder (ema/, config.yaml, null_text.safetensors)")
    e.add_argument("--n", type=POS, default=None,
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
    e.add_argument("--k", type=POS, default=3, help="prdc: nearest neighbours (ImageNet-T2I / DiffEvals: 3)")
    e.add_argument("--splits", type=POS, default=5, help="prdc: average over this many equal chunks (DiffEvals: 5)")
    e.add_argument("--extend", default=None, metavar="EXTENDER",
                   help="geneval/dpg: rewrite each prompt with the prompt extender before generation (GenEval★, "
                        "ImageNet-T2I Tables 2, 9-11): 'world' or a causal-LM id / folder; results in <metric>-extended/")
    e.add_argument("--model", default=None, help="clipscore: CLIP / Jina-CLIP id or folder; dpg: a VQA model; "
                                                 "aesthetic: the CLIP ViT-L/14; pickscore: default PickScore_v1")
    e.add_argument("--head", default=None, help="aesthetic: LAION aesthetic head file (.pth / .safetensors)")
    e.add_argument("--against", default=None, help="preference: run folder B (run_dir is A)")
    e.add_argument("--judge", default="world", help="preference: 'world' (rule-based) or a VLM hub id / folder")
    e.add_argument("--prompts", default=None, help="aesthetic/pickscore/preference: prompt file (PartiPrompts .tsv, "
                                                   "DrawBench .csv, .txt); default: held-out world captions")
    e.add_argument("--detector", default="world", help="geneval: 'world' or a transformers segmentation model id")
    e.add_argument("--color-model", default=None, help="geneval: CLIP id or folder for colours (non-world detector)")
    e.add_argument("--per-tag", type=POS, default=None, help="geneval: draws per tag (default 10 on the world, "
                                                              "minutes on a CPU; the official suite uses 100)")
    e.add_argument("--images-per-prompt", type=POS, default=None,
                   help="geneval images (default 1 on the world, 4 officially) / dpg tiles (4) per prompt")
    e.add_argument("--csv", default=None, help="dpg: DPG-Bench question CSV (default: questions from world scenes)")
    e.add_argument("--seed", type=int, default=None, help="default: 42 for geneval, else the run's eval.seed")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--cfg-scale", type=float, default=None)
    e.add_argument("--batch-size", type=POS, default=64)
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", default=None, help="default: <run_dir>/eval/<metric>")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_eval)

    xp = sub.add_parser("experiment", help="the papers' ablations on the world: arms × seeds at an equal budget, "
                        "bootstrap intervals, HTML report + EXPERIMENTS.md section (finished arms are reused)")
    xp.add_argument("name", help="captions | image-augmentation | cutmix-setting | cutmix-p | cutmix-tau | masking | "
                                 "masking-steps | objective | overfitting | time-to-quality; or summary: the table "
                                 "of every paper claim at the top of --md, from finished arms (trains nothing)")
    xp.add_argument("overrides", nargs="*", help="dotted overrides for every arm, e.g. train.device=cuda")
    xp.add_argument("--scale", type=POS_FLOAT, default=1.0, help="× every image count (1 = ≤ 10 min per arm on a CPU)")
    xp.add_argument("--seeds", type=POS, default=None, help="seeds 0 … N−1 (default 2; summary: 3)")
    xp.add_argument("--arms", default=None, help="comma-separated arms (default: the experiment's main arms)")
    xp.add_argument("--render-only", action="store_true", help="train nothing: table + report from finished arms")
    xp.add_argument("--any-commit", action="store_true", help="reuse finished arms of the same config from any commit")
    xp.add_argument("--threads", type=NAT, default=0, help="torch CPU threads (train.threads; 0 = leave as is)")
    xp.add_argument("--root", default="runs/experiments")
    xp.add_argument("--md", default="EXPERIMENTS.md", help="markdown file whose section is regenerated ('' = none)")
    xp.add_argument("--keep-checkpoints", action="store_true", help="keep training states of finished arms")
    xp.add_argument("--no-progress", action="store_true")
    xp.add_argument("--gpu-scale", type=POS_FLOAT, default=16.0, help="summary: the --scale of each experiment's "
                                                                      "GPU route")
    xp.add_argument("--mfu", type=float, default=None, help="summary: assumed H100 MFU of the GPU-hours estimate "
                                                            "(default 0.18, MicroDiT Table 6's)")
    xp.add_argument("--img-s", type=float, default=None, help="summary: measured training img/s per H100 instead "
                                                              "of an assumed MFU")
    xp.set_defaults(fn=cmd_experiment)
