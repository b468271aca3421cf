"""The `microt2i` command. Every command defaults to the embedded world, so it runs offline in minutes.

One module per command group, each command's parser next to it: `run` (demo, train, recipe), `use` (sample,
export, report, serve), `data` (world, caption, cutmix, precompute, filter, ingest), `evaluate` (eval, experiment),
`measure` (bench, cost, presets). This module assembles the parser and runs a command (`main`)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying a hub for ~45 s
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import sys
from pathlib import Path
import datetime
import traceback
from . import data, evaluate, measure, run, use


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="microt2i", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  microt2i demo\n  microt2i train world-s\n  microt2i sample --run "
                                       "runs/world-s --prompt \"A red star.\"\n  microt2i COMMAND --help")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no log lines (errors only)")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback (anywhere on the "
                                                        "command line; by default it goes to a log file)")
    sub = p.add_subparsers(dest="command", required=True)

    for group in (run, use, data, evaluate, measure):
        group.add_parsers(sub)
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
                   "microt2i experiment masking --scale 10 train.device=cuda",
                   "microt2i experiment cutmix-p --seeds 3",
                   "microt2i experiment summary --any-commit   # the claims table at the top of EXPERIMENTS.md"],
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
    from ..data.store import cache_root  # lazy: CLI startup (torch)

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
    from ..config import ConfigError  # lazy: CLI startup (torch)

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
    from ..config import ConfigError, check_device  # lazy: CLI startup (torch), after `--help` has answered
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
        # under torchrun: leave the process group cleanly; only train/dist.py starts one, so a command that never
        # loaded it (e.g. `presets`) skips this
        if "microt2i.train.dist" in sys.modules:
            from ..train.dist import shutdown  # lazy: CLI startup (already loaded here)

            shutdown()

