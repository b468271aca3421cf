"""`microt2i bench train`: training throughput of our DiT-I next to diffusers' PixArt-α transformer.
`microt2i bench microdit`: MicroDiT masked vs unmasked and MoE vs dense, img/s and FLOPs/image (at the end).

Both networks get the same width, depth, heads, patch grid, caption length and batch, and run the same step
(forward + backward + AdamW, MSE to a random target). Repetitions are interleaved (A B, B A, A B, ...) so slow
drift of a shared machine hits both alike; each network's figure is the median over repetitions.

The two are not identical by design: DiT-I adds the 2-block text refiner, QK-norm and LayerScale and modulates
the cross-attention input, PixArt projects captions with a 2-layer MLP. The param counts are reported with the
speeds so the ratio can be read in that light.
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DiTIConfig
from .io import atomic_write_text
from .models import build, count_params

# ---------------------------------------------------------------------------------------------------------------
# Networks and one training step


def pixart_matching(cfg: DiTIConfig) -> nn.Module:
    """diffusers' PixArtTransformer2DModel at DiT-I's width/depth/heads/patch grid/caption width."""
    from diffusers import PixArtTransformer2DModel

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


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> dict:
    """Training images/s of DiT-I and of a matched PixArt-α transformer, measured side by side.

    Each network first runs `warmup` untimed steps; then `repeats` rounds alternate between the two networks,
    each round timing `steps` consecutive steps. Returns a dict with per-network median img/s, the per-round
    values, param counts, the ratio DiT-I / PixArt and the run settings.
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

    nets = {
        "dit_i": (build(cfg), lambda m: m(x, sigma.log() / 4, text, mask)),
        "pixart": (
            pixart_matching(cfg),
            lambda m: m(x, encoder_hidden_states=text, timestep=sigma.log() * 250 + 500,
                        encoder_attention_mask=mask, return_dict=False)[0],
        ),
    }
    state = {}
    for key, (model, forward) in nets.items():
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(warmup):
            _train_step(forward, model, opt, target, precision, dev)
        state[key] = (model, forward, opt)
    _sync(dev)

    runs: dict[str, list[float]] = {key: [] for key in nets}
    order = list(nets)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            model, forward, opt = state[key]
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                _train_step(forward, model, opt, target, precision, dev)
            _sync(dev)
            runs[key].append(B * steps / (time.perf_counter() - t0))

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


def write_benchmarks_md(result: dict, path: str = "BENCHMARKS.md") -> None:
    """Append one dated row for a `bench_train` result to its Markdown table (created with a header if absent)."""
    r = result
    row = (
        f"| {r['date'][:10]} | {r['device']} | {r['preset'] or '-'} | {r['precision']} | {r['batch_size']} "
        f"| {r['tokens']} | {r['text_len']} | {r['dit_i']['img_s']:.2f} | {r['pixart']['img_s']:.2f} "
        f"| {r['ratio']:.2f} | {r['dit_i']['params']:,} | {r['pixart']['params']:,} | {r['torch']} |\n"
    )
    _append_rows(path, "## Training throughput (`microt2i bench train`)", _HEADER, row)


# ---------------------------------------------------------------------------------------------------------------
# MicroDiT: masked vs unmasked, MoE vs dense, in one run (`microt2i bench microdit`)


def train_flops_per_image(step, batch_size: int) -> float:
    """FLOPs of one training forward + backward per image, counted by `torch.utils.flop_counter` (matmuls and
    attention; element-wise work is not counted). `step()` runs forward + backward of one batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
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
    from dataclasses import replace

    from .diffusion.edm import EDMObjective
    from .models import sample_keep_mask
    from .train.optim import param_groups

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
        opt = torch.optim.AdamW(param_groups(model, 0.1, 0.5), lr=1e-4)
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

    runs: dict[str, list[float]] = {key: [] for key in variants}
    order = list(variants)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                state[key][1]()
            _sync(dev)
            runs[key].append(B * steps / (time.perf_counter() - t0))

    N = (cfg.input_size // cfg.patch_size) ** 2
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device_string(dev),
        "torch": torch.__version__, "preset": name, "precision": precision, "batch_size": B, "tokens": N,
        "text_len": L, "mask_ratio": mask_ratio, "steps": steps, "warmup": warmup, "repeats": repeats,
    }
    peak = _bf16_peak_flops(result["device"]) if precision == "bf16" and dev.type == "cuda" else None
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


def _bf16_peak_flops(device_name: str) -> float | None:
    """Dense bf16 tensor-core peak of known GPUs (vendor datasheets, SXM parts), for MFU; None if unknown."""
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12)):
        if key in device_name:
            return peak
    return None


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
