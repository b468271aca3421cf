"""Benchmarks. `microt2i bench` (= `bench all`) runs the one report and appends it to BENCHMARKS.md:

- **train**: img/s of the real training step (objective loss on a fresh keep-mask, backward, grad clip, fused
  AdamW, EMA) and training FLOPs/image (`cost.count_train_flops`) of every world preset, and of every paper preset
  when a GPU is present (on a CPU the paper presets get their FLOPs/image only); MFU where the device's peak is
  known (`cost.peak_flops`: GPUs; "n/a" on CPUs).
- **pixart**: our DiT-I next to diffusers' PixArt-α transformer at matched dims (`bench train`), with and without
  DiT-I's text refiner (PixArt has none), and DiT-I without refiner next to PixArt with diffusers' own QK-norm
  (the same features on both sides: `ratio_matched`), in one interleaved run.
- **sample**: sampler images/s, Heun 30 steps with classifier-free guidance (the paper's sampler, MicroDiT App. B).
- **loader**: samples/s of `data.loader.loader_throughput` (MicroDiT-shaped fp16 latents and caption states).

`bench train` and `bench microdit` run those two parts alone (DiT-I vs PixArt; MicroDiT masked vs unmasked and MoE
vs dense). Repetitions of compared networks are interleaved (A B, B A, ...) so slow drift of a shared machine hits
all alike; each figure is the median over repetitions.

DiT-I and PixArt get the same width, depth, heads, patch grid, caption length and batch, and run the same step
(forward + backward + fused AdamW, MSE to a random target). They differ by design: DiT-I adds the 2-block text
refiner, QK-norm and LayerScale and modulates the cross-attention input, PixArt projects captions with a 2-layer
MLP. The param counts are reported with the speeds so the ratio can be read in that light.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from pathlib import Path

import torch

from .config import RunConfig
from .cost import count_train_flops, peak_flops
from .models import build, count_params
from . import presets
from .diffusion.guidance import cfg_denoiser
from .diffusion.objectives import build_objective
from .diffusion.samplers import get_sampler
from .encoders.text import null_text as null_caption
from .models import sample_keep_mask
from .train.ema import EMA
from .train.optim import make_optimizer
from .data.loader import loader_throughput
from .bench_common import append_rows, bench_device, device_string, interleaved
from .bench_pixart import PIXART_PAIRS, bench_train, write_benchmarks_md
from .bench_variants import bench_microdit, train_flops_per_image, write_microdit_md

__all__ = [  # the parts `microt2i bench …` runs (bench_pixart.py, bench_variants.py) and this module's report
    "bench_train", "write_benchmarks_md", "bench_microdit", "train_flops_per_image", "write_microdit_md",
    "device_string", "make_train_step", "bench_presets", "bench_sample", "bench_loader", "bench_all", "report_rows",
    "write_report_md", "PIXART_PAIRS",
]

# ---------------------------------------------------------------------------------------------------------------
# The one report (`microt2i bench` = `bench all`): training per preset, DiT-I vs PixArt, sampler, loader

WORLD_PRESETS = ("world-tiny", "world-s", "world-cad-tiny", "world-cad-s", "world-microdit-tiny", "world-microdit-s")
PAPER_PRESETS = ("dit-i-256", "cad-i-256", "microdit-xl-2", "microdit-tiny-2")


def make_train_step(run: RunConfig, batch_size: int, device: torch.device, *, precision: str | None = None,
                    seed: int = 0):
    """(step, net) for `run`'s real training step on random data of the right shapes: caption dropout, a fresh
    keep-mask (MicroDiT), the objective's loss under autocast, backward, grad clipping, the optimizer (fused AdamW
    or LAMB, `train.optim`) and the EMA update. `step()` returns the detached loss, a device tensor: nothing is read
    back to the host. The same seed gives the same init, inputs and draws."""
    cfg, t = run.model, run.train
    torch.manual_seed(seed)
    net = build(cfg).to(device).train()
    objective = build_objective(run.objective)
    opt = make_optimizer(net, t)
    ema = EMA(net, t.ema_decay, t.ema_start_nimg)
    B, L = batch_size, run.data.text_len
    x0 = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, device=device) * 0.5
    text = torch.randn(B, L, cfg.text_dim, device=device)
    mask = torch.arange(L, device=device)[None] < torch.randint(max(1, L // 2), L + 1, (B, 1), device=device)
    null_text, null_mask = null_caption("zero", text[0], mask[0])  # [1, L, C], [1, L]: one visible zero token
    gen = torch.Generator(device).manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=(precision or t.precision) == "bf16")
    clip = t.grad_clip if t.grad_clip > 0 else float("inf")
    nimg = [0]

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        drop = torch.rand(B, generator=gen, device=device) < run.objective.cond_drop
        tokens = torch.where(drop[:, None, None], null_text, text)
        tmask = torch.where(drop[:, None], null_mask, mask)
        keep = sample_keep_mask(cfg, B, generator=gen, device=device)
        kw = {} if keep is None else {"keep_mask": keep}
        with autocast:
            loss = objective.loss(net, x0, tokens, tmask, generator=gen, **kw).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        nimg[0] += B
        ema.update(net, nimg[0])
        return loss.detach()

    return step, net


def bench_presets(names: tuple[str, ...], *, device: str = "auto", batch_size: int | None = None, steps: int = 2,
                  warmup: int = 1, repeats: int = 3, precision: str | None = None, paper_on_cpu: bool = False) -> list[dict]:
    """Per preset: training FLOPs/image (counted on `meta`), and — unless it is a paper preset on a CPU — the img/s
    of its real training step (`make_train_step`) and the MFU against the device's bf16 peak (GPUs only).

    batch: `batch_size`, else the preset's micro-batch (GPU) or min(micro-batch, 8) (CPU); `precision` overrides
    the preset's (on a CPU bf16 autocast is slower than fp32, so fp32 is used there by default)."""
    dev = bench_device(device)
    dev_name = device_string(dev)
    rows = []
    for name in names:
        run = presets.get(name)
        flops = count_train_flops(run)
        row = {"preset": name, "params": None, "train_flops_per_img": flops.train, "img_s": None, "mfu": None,
               "batch_size": None, "precision": None, "note": ""}
        if dev.type == "cpu" and not paper_on_cpu and not name.startswith("world-"):
            row["note"] = "FLOPs/img only: no GPU"
            rows.append(row)
            continue
        mb = run.train.micro_batch or run.train.batch_size
        B = batch_size or (mb if dev.type == "cuda" else min(mb, 8))
        prec = precision or (run.train.precision if dev.type == "cuda" else "fp32")
        step, net = make_train_step(run, B, dev, precision=prec)
        for _ in range(warmup):
            step()
        img_s = statistics.median(interleaved({name: step}, B, steps, repeats, dev)[name])
        peak = peak_flops(dev_name) if prec == "bf16" else None
        row.update(params=count_params(net), img_s=img_s, batch_size=B, precision=prec,
                   mfu=flops.train * img_s / peak if peak else None)
        rows.append(row)
        del step, net
    return rows


def bench_sample(preset: str = "world-s", *, batch_size: int = 8, steps: int = 30, cfg_scale: float = 3.0,
                 sampler: str = "heun", repeats: int = 3, device: str = "auto", seed: int = 0) -> dict:
    """Sampler images/s of `preset`'s network (random weights: the cost does not depend on them): `sampler` with
    `steps` steps and classifier-free guidance (cond and uncond in one doubled batch), no decoding. Heun takes
    2·steps − 1 network evaluations (EDM Alg. 1), each on 2·batch_size inputs with CFG."""
    dev = bench_device(device)
    run = presets.get(preset)
    cfg, L = run.model, run.data.text_len
    torch.manual_seed(seed)
    net = build(cfg).to(dev).eval()
    objective = build_objective(run.objective)
    sigmas = objective.sampling_sigmas(steps, device=dev)
    B = batch_size
    text, mask = torch.randn(B, L, cfg.text_dim, device=dev), torch.ones(B, L, dtype=torch.bool, device=dev)
    null_t, null_m = torch.zeros(1, L, cfg.text_dim, device=dev), mask[:1].clone()
    noise = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, device=dev) * float(sigmas[0])
    sample_fn = get_sampler(sampler)

    @torch.no_grad()
    def one() -> None:
        denoise = cfg_denoiser(objective.denoiser(net), text, mask, null_t, null_m, cfg_scale)
        sample_fn(denoise, noise, sigmas)

    one()  # warm-up
    img_s = statistics.median(interleaved({"s": one}, B, 1, repeats, dev)["s"])
    return {"preset": preset, "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale, "batch_size": B,
            "img_s": img_s, "params": count_params(net), "device": device_string(dev)}


def bench_loader(**kwargs) -> dict | None:
    """Samples/s of `data.loader.loader_throughput(**kwargs)`."""
    return loader_throughput(**kwargs)


def bench_all(*, device: str = "auto", presets_: tuple[str, ...] | None = None, pixart_preset: str = "world-s",
              pixart_batch: int = 8, pixart_repeats: int = 5, sample_preset: str = "world-s", sample_batch: int = 8,
              loader: dict | None = None, log=print) -> dict:
    """The one report: `bench_presets` over the world presets (and the paper presets: timed on a GPU, FLOPs only on
    a CPU), `bench_train` (DiT-I vs PixArt, with and without the refiner), `bench_sample` (Heun 30 steps, CFG) and
    `bench_loader`. Runs in a few minutes on a 2-core CPU."""
    dev = bench_device(device)
    t0 = time.perf_counter()
    report = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device_string(dev),
              "torch": torch.__version__}
    names = presets_ or (*WORLD_PRESETS, *PAPER_PRESETS)
    log(f"[bench] training step of {len(names)} presets on {report['device']}")
    report["train"] = bench_presets(names, device=device)
    log("[bench] DiT-I vs diffusers PixArt at matched dims")

    report["pixart"] = bench_train(presets.get(pixart_preset).model, batch_size=pixart_batch, steps=3, warmup=2,
                                   repeats=pixart_repeats, device=device, name=pixart_preset)
    log("[bench] sampler: Heun 30 steps with CFG")
    report["sample"] = bench_sample(sample_preset, batch_size=sample_batch, device=device)
    log("[bench] loader")
    report["loader"] = bench_loader(**(loader or {"num_samples": 1024, "micro": 128, "epochs": 3}))
    report["seconds"] = time.perf_counter() - t0
    return report


_REPORT_SECTION = "## One report (`microt2i bench`)"
_REPORT_INTRO = (
    "`microt2i bench`: training img/s of each preset's real step (loss, backward, clip, fused AdamW, EMA; random\n"
    "data of the preset's shapes) with its counted training FLOPs/image and MFU (GPU bf16 peak; n/a on CPUs); paper\n"
    "presets are timed only on a GPU. Then DiT-I vs diffusers' PixArt-α at matched dims (interleaved; ratio = ours /\n"
    "PixArt's img/s, also without DiT-I's text refiner, which PixArt lacks), the sampler (Heun 30 steps + CFG, no\n"
    "decoding) and the loader (`loader_throughput`: 4×32×32 fp16 latents + 77×1024 fp16 caption states)."
)
_REPORT_HEADER = (
    "| date | device | torch | part | preset | precision | batch | params | train GFLOPs/img | img/s (samples/s) "
    "| MFU | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def report_rows(report: dict) -> list[list[str]]:
    """The report as table rows (the cells after date, device, torch)."""
    def num(v, spec):
        return "-" if v is None else format(v, spec)

    rows = []
    for r in report.get("train", []):
        mfu = "n/a" if r["img_s"] is not None and r["mfu"] is None else num(r["mfu"], ".1%")
        rows.append(["train", r["preset"], r["precision"] or "-", num(r["batch_size"], "d"), num(r["params"], ",d"),
                     f"{r['train_flops_per_img'] / 1e9:.4g}", num(r["img_s"], ".2f"), mfu, r["note"]])
    p = report.get("pixart", {})
    for key, base, ratio, label in PIXART_PAIRS:
        if ratio in p:
            rows.append(["DiT-I vs PixArt", p["preset"], p["precision"], str(p["batch_size"]), f"{p[key]['params']:,}",
                         "-", f"{p[key]['img_s']:.2f}", "-", f"{label} = **{p[ratio]:.2f}×** ({base} "
                         f"{p[base]['img_s']:.2f} img/s, {p[base]['params']:,} params)"])
    s = report.get("sample")
    if s:
        rows.append(["sample", s["preset"], "fp32", str(s["batch_size"]), f"{s['params']:,}", "-", f"{s['img_s']:.2f}",
                     "-", f"{s['sampler']} {s['steps']} steps, CFG {s['cfg_scale']}"])
    if "loader" in report:
        ld = report["loader"]
        rows.append(["loader", "-", "fp16", str(ld["micro_batch"]), "-", "-", f"{ld['samples_per_s']:.0f}", "-",
                     f"{ld['workers']} workers, {ld['mb_per_s']:.0f} MB/s, {ld['num_samples']} samples"] if ld else
                    ["loader", "-", "-", "-", "-", "-", "-", "-", "skipped: no data.loader.loader_throughput"])
    return rows


def write_report_md(report: dict, path: str | Path = "BENCHMARKS.md") -> None:
    """Append the one report's rows (dated, with device and torch version) to its section of BENCHMARKS.md."""
    head = f"| {report['date'][:10]} | {report['device']} | {report['torch']} | "
    rows = "".join(head + " | ".join(r) + " |\n" for r in report_rows(report))
    append_rows(path, _REPORT_SECTION, _REPORT_HEADER, rows, intro=_REPORT_INTRO)
