"""Training throughput of DiT-I vs a matched diffusers PixArt-α transformer (what `microt2i bench train` runs).

    python benchmarks/train_throughput.py --preset world-s --batch-size 8 --steps 3 --repeats 7
    python benchmarks/train_throughput.py --preset dit-i-256 --batch-size 64 --precision bf16 --write

On a CPU shared with other jobs, `--threads 1` gives far steadier numbers than oversubscribed intra-op threads.
"""

from __future__ import annotations

import argparse
import json

import torch

from microt2i.bench import bench_train, write_benchmarks_md
from microt2i.models import DIT_I_CONFIGS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="world-s", choices=sorted(DIT_I_CONFIGS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU; 0 = leave as is")
    ap.add_argument("--write", metavar="PATH", nargs="?", const="BENCHMARKS.md", help="append a row to PATH")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_train(
        DIT_I_CONFIGS[args.preset], args.batch_size, args.steps, args.warmup, args.precision,
        repeats=args.repeats, text_len=args.text_len, device=args.device, name=args.preset,
    )
    print(json.dumps(result, indent=2))
    if args.write:
        write_benchmarks_md(result, args.write)


if __name__ == "__main__":
    main()
