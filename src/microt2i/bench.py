"""Benchmarks. `microt2i bench` (= `bench all`) runs the one report of issue 11 and appends it to BENCHMARKS.md:

- **train**: img/s of the real training step (objective loss on a fresh keep-mask, backward, grad clip, fused
  AdamW, EMA) and training FLOPs/image (`cost.count_train_flops`) of every world preset, and of every paper preset
  when a GPU is present (on a CPU the paper presets get their FLOPs/image only); MFU where the device's peak is
  known (`cost.peak_flops`: GPUs; "n/a" on CPUs).
- **pixart**: our DiT-I next to diffusers' PixArt-α transformer at matched dims (`bench train`), with and without
  DiT-I's text refiner (PixArt has none), and DiT-I without refiner next to PixArt with diffusers' own QK-norm
  (the same features on both sides: `ratio_matched`), in one interleaved run.
- **sample**: sampler images/s, Heun 30 steps with classifier-free guidance (the paper's sampler, 003 App. B).
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
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DiTIConfig, RunConfig
from .cost import count_train_flops, peak_flops
from .io import atomic_write_text
from .models import build, count_params
from .train.optim import adamw_impl
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from . import presets
from .diffusion.edm import EDMObjective
from .diffusion.guidance import cfg_denoiser
from .diffusion.objectives import build_objective
from .diffusion.samplers import get_sampler
from .encoders.text import null_text as null_caption
from .models import sample_keep_mask
from .train.ema import EMA
from .train.optim import make_optimizer, param_groups
from .data.loader import loader_throughput

# ---------------------------------------------------------------------------------------------------------------
# Networks and one training step


def pixart_matching(cfg: DiTIConfig) -> nn.Module:
    """diffusers' PixArtTransformer2DModel at DiT-I's width/depth/heads/patch grid/caption width."""
    from diffusers import PixArtTransformer2DModel  # heavy (seconds to import): only when a diffusers model is used

    return PixArtTransformer2DModel(
        sample_size=cfg.input_size,
        patch_size=cfg.patch_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,  # no learned variance: same output as DiT-I
        num_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        attention_head_dim=cfg.width // cfg.heads,
        cross_attention_dim=cfg.width,  # captions are projected to the width first
        caption_channels=cfg.text_dim,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        use_additional_conditions=False,  # no resolution / aspect-ratio embeddings
        interpolation_scale=cfg.pos_interp_scale,
        dropout=0.0,
    )


def with_qk_norm(pixart: nn.Module) -> nn.Module:
    """PixArt with diffusers' own per-head RMSNorm QK-norm (its `Attention(qk_norm="rms_norm")`: affine, ε 1e-6) in
    every self- and cross-attention, as DiT-I has: the features matched, not only the dims."""
    from diffusers.models.normalization import RMSNorm  # heavy (seconds to import): only when a diffusers model is used

    for block in pixart.transformer_blocks:
        for attn in (block.attn1, block.attn2):
            head_dim = attn.inner_dim // attn.heads
            attn.norm_q = RMSNorm(head_dim, eps=1e-6, elementwise_affine=True)
            attn.norm_k = RMSNorm(head_dim, eps=1e-6, elementwise_affine=True)
    return pixart


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(steps_fns: dict, batch: int, steps: int, repeats: int, device: torch.device) -> dict:
    """img/s of each `steps_fns[key]()` (one step of `batch` images) over `repeats` rounds that alternate the order
    (A B C, C B A, ...); each round times `steps` consecutive steps of one key. Returns {key: [img/s per round]}."""
    runs: dict[str, list[float]] = {key: [] for key in steps_fns}
    order = list(steps_fns)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                steps_fns[key]()
            _sync(device)
            runs[key].append(batch * steps / (time.perf_counter() - t0))
    return runs


def _train_step(forward, model, opt, target, precision: str, device: torch.device) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = forward(model)
    F.mse_loss(out.float(), target).backward()
    opt.step()


def device_string(device: torch.device | str = "auto") -> str:
    """Human-readable device name: GPU model, or CPU model and torch's intra-op thread count."""
    device = _device(str(device))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------------------------
# Benchmark


def bench_train(
    preset_cfg: DiTIConfig,
    batch_size: int = 8,
    steps: int = 5,
    warmup: int = 2,
    precision: str = "fp32",
    *,
    repeats: int = 5,
    text_len: int = 64,
    device: str = "auto",
    name: str = "",
    seed: int = 0,
    no_refiner: bool = True,
) -> dict:
    """Training images/s of DiT-I and of a matched PixArt-α transformer, measured side by side.

    Each network first runs `warmup` untimed steps; then `repeats` rounds alternate between the networks, each
    round timing `steps` consecutive steps. Returns a dict with per-network median img/s, the per-round values,
    param counts, the ratio DiT-I / PixArt and the run settings. `no_refiner` adds DiT-I without its text refiner
    (the backbone PixArt matches) as a third network, and its ratio `ratio_no_refiner`; with QK-norm on, also PixArt
    with diffusers' QK-norm (`with_qk_norm`) and `ratio_matched` = DiT-I without refiner / that PixArt.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r} must be 'fp32' or 'bf16'")
    dev = _device(device)
    cfg = preset_cfg
    torch.manual_seed(seed)

    # Inputs shared by both networks; captions padded to random lengths in [text_len/2, text_len]
    B, L = batch_size, text_len
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, device=dev)
    target = torch.randn_like(x)
    sigma = torch.exp(torch.randn(B, device=dev) * 1.2 - 1.2)
    text = torch.randn(B, L, cfg.text_dim, device=dev)
    lengths = torch.randint(max(1, L // 2), L + 1, (B,), device=dev)
    mask = torch.arange(L, device=dev)[None] < lengths[:, None]  # [B, L] bool

    dit_forward = lambda m: m(x, sigma.log() / 4, text, mask)  # noqa: E731
    nets = {
        "dit_i": (build(cfg), dit_forward),
        "pixart": (
            pixart_matching(cfg),
            lambda m: m(x, encoder_hidden_states=text, timestep=sigma.log() * 250 + 500,
                        encoder_attention_mask=mask, return_dict=False)[0],
        ),
    }
    if no_refiner and cfg.refiner_depth > 0:  # PixArt has no text refiner: the same backbone without it
        nets["dit_i_no_refiner"] = (build(replace(cfg, refiner_depth=0)), dit_forward)
        if cfg.qk_norm:  # ... and PixArt with DiT-I's QK-norm (diffusers' RMSNorm): the same features on both sides
            nets["pixart_qk_norm"] = (with_qk_norm(pixart_matching(cfg)), nets["pixart"][1])
    state = {}
    for key, (model, forward) in nets.items():
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_impl(model.parameters()))
        for _ in range(warmup):
            _train_step(forward, model, opt, target, precision, dev)
        state[key] = (model, forward, opt)
    _sync(dev)

    runs = _interleaved({key: (lambda m=m, f=f, o=o: _train_step(f, m, o, target, precision, dev))
                         for key, (m, f, o) in state.items()}, B, steps, repeats, dev)

    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_string(dev),
        "torch": torch.__version__,
        "preset": name,
        "precision": precision,
        "batch_size": B,
        "tokens": (cfg.input_size // cfg.patch_size) ** 2,
        "text_len": L,
        "width": cfg.width,
        "depth": cfg.depth,
        "heads": cfg.heads,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
    }
    for key in nets:
        result[key] = {
            "img_s": statistics.median(runs[key]),
            "img_s_runs": [round(v, 3) for v in runs[key]],
            "params": count_params(state[key][0]),
        }
    result["ratio"] = result["dit_i"]["img_s"] / result["pixart"]["img_s"]
    if "dit_i_no_refiner" in result:
        result["ratio_no_refiner"] = result["dit_i_no_refiner"]["img_s"] / result["pixart"]["img_s"]
    if "pixart_qk_norm" in result:  # matched features: no refiner, QK-norm on both
        result["ratio_matched"] = result["dit_i_no_refiner"]["img_s"] / result["pixart_qk_norm"]["img_s"]
    return result


_HEADER = (
    "| date | device | preset | precision | batch | tokens | text len | DiT-I img/s | PixArt img/s | ratio "
    "| DiT-I params | PixArt params | torch |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _append_rows(path: str | Path, section: str, header: str, rows: str, intro: str = "") -> None:
    """Append `rows` to the table of the Markdown section `section` (its heading line), after the table's last row,
    even if other sections follow it. A missing file, section or table is created (the section at the end of the
    file, with `intro` under its heading); other sections are left as they are."""
    p = Path(path)
    text = p.read_text() if p.is_file() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n" + (f"{intro}\n\n" if intro else "") + header
    start = text.index(section) + len(section)
    if text.find(header, start) < 0:  # the section exists without this table: put it under the heading
        nl = text.find("\n", start)
        at = len(text) if nl < 0 else nl + 1
        text = text[:at] + "\n" + header + text[at:]
    end = text.index(header, start) + len(header)
    while text.startswith("|", end):
        nl = text.find("\n", end)
        end = len(text) if nl < 0 else nl + 1
    head = text[:end] if text[:end].endswith("\n") else text[:end] + "\n"
    atomic_write_text(p, head + rows + text[end:])


# (ours, PixArt variant, ratio key, label) of the DiT-I vs PixArt comparisons `bench_train` makes
_PIXART_PAIRS = (
    ("dit_i", "pixart", "ratio", "DiT-I / PixArt"),
    ("dit_i_no_refiner", "pixart", "ratio_no_refiner", "DiT-I without refiner / PixArt"),
    ("dit_i_no_refiner", "pixart_qk_norm", "ratio_matched", "DiT-I without refiner / PixArt + QK-norm (same features)"),
)


def write_benchmarks_md(result: dict, path: str = "BENCHMARKS.md") -> None:
    """Append dated rows for a `bench_train` result to its Markdown table (created with a header if absent): one per
    comparison in `_PIXART_PAIRS` that was measured."""
    r = result
    rows = ""
    for key, base, ratio, label in _PIXART_PAIRS:
        if ratio in r:
            rows += (f"| {r['date'][:10]} | {r['device']} | {r['preset'] or '-'} {label} | {r['precision']} "
                     f"| {r['batch_size']} | {r['tokens']} | {r['text_len']} | {r[key]['img_s']:.2f} "
                     f"| {r[base]['img_s']:.2f} | {r[ratio]:.2f} | {r[key]['params']:,} | {r[base]['params']:,} "
                     f"| {r['torch']} |\n")
    _append_rows(path, "## Training throughput (`microt2i bench train`)", _HEADER, rows)


# ---------------------------------------------------------------------------------------------------------------
# MicroDiT: masked vs unmasked, MoE vs dense, in one run (`microt2i bench microdit`)


def train_flops_per_image(step, batch_size: int) -> float:
    """FLOPs of one training forward + backward per image, counted by `torch.utils.flop_counter` (matmuls and
    attention; element-wise work is not counted). `step()` runs forward + backward of one batch.

    The counter has no formula for the CPU's fused attention kernel (`_scaled_dot_product_flash_attention_for_cpu`)
    and would count attention as 0 FLOPs there, so the step runs with SDPA's math backend on every device, whose
    batched matmuls it counts (4·N·M·d forward, twice that backward; `cost.count_train_flops` on meta agrees)."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        step()
    return counter.get_total_flops() / batch_size


MICRODIT_VARIANTS = ("moe-unmasked", "moe-masked", "dense-unmasked", "dense-masked")


def bench_microdit(
    preset_cfg,
    batch_size: int = 16,
    steps: int = 2,
    warmup: int = 1,
    precision: str = "fp32",
    *,
    repeats: int = 5,
    text_len: int = 64,
    mask_ratio: float = 0.75,
    variants: tuple[str, ...] = MICRODIT_VARIANTS,
    device: str = "auto",
    name: str = "",
    seed: int = 0,
) -> dict:
    """Training img/s and FLOPs/image of MicroDiT variants of `preset_cfg`, measured side by side: MoE or dense
    FFNs × masked (`mask_ratio`, deferred) or unmasked (`variants`, default all four). Each training step is the
    real one: EDM loss with the objective's preconditioning (σ_data 0.9, kept-patch loss), a fresh keep-mask per
    step, backward, AdamW with the experts' halved LR. Repetitions are interleaved over the variants; the median
    is reported, and on a GPU with a known bf16 peak also the MFU (model FLOPs utilisation) of each variant.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r} must be 'fp32' or 'bf16'")
    if getattr(preset_cfg, "family", "") != "microdit":
        raise ValueError(f"bench microdit needs a MicroDiT preset (e.g. world-microdit-s), got family "
                         f"{getattr(preset_cfg, 'family', '?')!r}")
    dev = _device(device)
    torch.manual_seed(seed)
    cfg = preset_cfg
    B, L = batch_size, text_len
    x0 = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, device=dev) * 0.5
    text = torch.randn(B, L, cfg.text_dim, device=dev)
    lengths = torch.randint(max(1, L // 2), L + 1, (B,), device=dev)
    mask = torch.arange(L, device=dev)[None] < lengths[:, None]  # [B, L] bool
    objective = EDMObjective(sigma_data=0.9, p_mean=-0.6, p_std=1.2)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    if not variants or set(variants) - set(MICRODIT_VARIANTS):
        raise ValueError(f"variants={list(variants)} must be a non-empty subset of {', '.join(MICRODIT_VARIANTS)}")
    variants = {key: replace(cfg, moe=key.startswith("moe"), mask_ratio=mask_ratio if key.endswith("-masked") else 0.0)
                for key in MICRODIT_VARIANTS if key in variants}
    state = {}
    for key, vcfg in variants.items():
        model = build(vcfg).to(dev).train()
        opt = torch.optim.AdamW(param_groups(model, 0.1, 0.5), lr=1e-4, **adamw_impl(model.parameters()))
        for g in opt.param_groups:
            g["lr"] = 1e-4 * g.get("lr_scale", 1.0)
        gen = torch.Generator(dev).manual_seed(seed)

        def loss_backward(model=model, vcfg=vcfg, gen=gen):
            keep = sample_keep_mask(vcfg, B, generator=gen, device=dev)
            kw = {} if keep is None else {"keep_mask": keep}
            with autocast:
                loss = objective.loss(model, x0, text, mask, generator=gen, **kw).mean()
            loss.backward()

        def step(model=model, opt=opt, loss_backward=loss_backward):
            opt.zero_grad(set_to_none=True)
            loss_backward()
            opt.step()

        flops = train_flops_per_image(loss_backward, B)
        for _ in range(warmup):
            step()
        state[key] = (model, step, flops)
    _sync(dev)

    runs = _interleaved({key: state[key][1] for key in variants}, B, steps, repeats, dev)

    N = (cfg.input_size // cfg.patch_size) ** 2
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device_string(dev),
        "torch": torch.__version__, "preset": name, "precision": precision, "batch_size": B, "tokens": N,
        "text_len": L, "mask_ratio": mask_ratio, "steps": steps, "warmup": warmup, "repeats": repeats,
    }
    peak = peak_flops(result["device"]) if precision == "bf16" and dev.type == "cuda" else None
    for key, vcfg in variants.items():
        model, _, flops = state[key]
        kept = N if vcfg.mask_ratio == 0 else int(sample_keep_mask(vcfg, 1)[0].sum())
        img_s = statistics.median(runs[key])
        result[key] = {"img_s": img_s, "img_s_runs": [round(v, 3) for v in runs[key]], "params": count_params(model),
                       "train_flops_per_img": flops, "kept_tokens": kept, "mfu": flops * img_s / peak if peak else None}
    for ffn in ("moe", "dense"):
        if f"{ffn}-masked" in result and f"{ffn}-unmasked" in result:
            result[f"{ffn}_masked_speedup"] = result[f"{ffn}-masked"]["img_s"] / result[f"{ffn}-unmasked"]["img_s"]
            result[f"{ffn}_masked_flops_ratio"] = (result[f"{ffn}-unmasked"]["train_flops_per_img"]
                                                   / result[f"{ffn}-masked"]["train_flops_per_img"])
    for m in ("unmasked", "masked"):
        if f"moe-{m}" in result and f"dense-{m}" in result:
            result[f"moe_vs_dense_{m}"] = result[f"moe-{m}"]["img_s"] / result[f"dense-{m}"]["img_s"]
    return result


_MICRODIT_SECTION = "## MicroDiT (issue 4)"
_MICRODIT_INTRO = (
    "`microt2i bench microdit`: training img/s (forward + backward + AdamW, EDM loss on the kept patches) and\n"
    "training FLOPs per image (`torch.utils.flop_counter`, forward + backward, matmuls and attention) of four\n"
    "MicroDiT variants measured side by side in one process (interleaved repetitions, median): expert-choice MoE\n"
    "or dense SwiGLU FFNs, 75 % deferred masking or none. Speed-up = img/s over the same FFN's unmasked img/s."
)
_MICRODIT_HEADER = (
    "| date | device | preset | precision | batch | variant | tokens (backbone) | params | train GFLOPs/img "
    "| img/s | speed-up vs unmasked | torch |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def write_microdit_md(result: dict, path: str = "BENCHMARKS.md") -> None:
    """Append one row per variant of a `bench_microdit` result to the "MicroDiT (issue 4)" section."""
    r = result
    rows = ""
    for key in (k for k in MICRODIT_VARIANTS if k in r):
        v, base = r[key], r.get(key.split("-")[0] + "-unmasked")
        speedup = f"{v['img_s'] / base['img_s']:.2f}×" if base else "-"
        mfu = f" (MFU {v['mfu']:.1%})" if v.get("mfu") else ""
        rows += (f"| {r['date'][:10]} | {r['device']} | {r['preset'] or '-'} | {r['precision']} | {r['batch_size']} "
                 f"| {key} | {v['kept_tokens']} of {r['tokens']} | {v['params']:,} "
                 f"| {v['train_flops_per_img'] / 1e9:.3f} | {v['img_s']:.2f}{mfu} | {speedup} | {r['torch']} |\n")
    _append_rows(path, _MICRODIT_SECTION, _MICRODIT_HEADER, rows, intro=_MICRODIT_INTRO)


# ---------------------------------------------------------------------------------------------------------------
# The one report (`microt2i bench` = `bench all`): training per preset, DiT-I vs PixArt, sampler, loader

WORLD_PRESETS = ("world-tiny", "world-s", "world-cad-tiny", "world-cad-s", "world-microdit-tiny", "world-microdit-s")
PAPER_PRESETS = ("dit-i-256", "cad-i-256", "microdit-xl-2", "microdit-tiny-2")


def make_train_step(run: RunConfig, batch_size: int, device: torch.device, *, precision: str | None = None,
                    seed: int = 0):
    """(step, net) for `run`'s real training step on random data of the right shapes: caption dropout, a fresh
    keep-mask (MicroDiT), the objective's loss under autocast, backward, grad clipping, the optimizer (fused AdamW
    or LAMB, `train.optim`) and the EMA update. No host sync inside `step()` (the loss is never read back)."""
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

    def step() -> None:
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

    return step, net


def bench_presets(names: tuple[str, ...], *, device: str = "auto", batch_size: int | None = None, steps: int = 2,
                  warmup: int = 1, repeats: int = 3, precision: str | None = None, paper_on_cpu: bool = False) -> list[dict]:
    """Per preset: training FLOPs/image (counted on `meta`), and — unless it is a paper preset on a CPU — the img/s
    of its real training step (`make_train_step`) and the MFU against the device's bf16 peak (GPUs only).

    batch: `batch_size`, else the preset's micro-batch (GPU) or min(micro-batch, 8) (CPU); `precision` overrides
    the preset's (on a CPU bf16 autocast is slower than fp32, so fp32 is used there by default)."""
    dev = _device(device)
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
        img_s = statistics.median(_interleaved({name: step}, B, steps, repeats, dev)[name])
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
    dev = _device(device)
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
    img_s = statistics.median(_interleaved({"s": one}, B, 1, repeats, dev)["s"])
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
    dev = _device(device)
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


_REPORT_SECTION = "## One report (`microt2i bench`, issue 11)"
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
    for key, base, ratio, label in _PIXART_PAIRS:
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
    _append_rows(path, _REPORT_SECTION, _REPORT_HEADER, rows, intro=_REPORT_INTRO)
