"""`microt2i bench microdit`: MicroDiT masked vs unmasked and MoE vs dense in one interleaved run, with the
training FLOPs per image counted by `torch.utils.flop_counter`."""

from __future__ import annotations

import datetime as _dt
import statistics
from dataclasses import replace
import torch
from .cost import peak_flops
from .models import build, count_params
from .train.optim import adamw_impl
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from .diffusion.edm import EDMObjective
from .models import sample_keep_mask
from .train.optim import param_groups
from .bench_common import append_rows, bench_device, device_string, interleaved, sync


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


def _add_variants(result: dict, variants: dict, state: dict, runs: dict, N: int, peak: float | None) -> None:
    """Each variant's median img/s, per-round values, params, FLOPs/image, kept tokens and MFU into `result`."""
    for key, vcfg in variants.items():
        model, _, flops = state[key]
        kept = N if vcfg.mask_ratio == 0 else int(sample_keep_mask(vcfg, 1)[0].sum())
        img_s = statistics.median(runs[key])
        result[key] = {"img_s": img_s, "img_s_runs": [round(v, 3) for v in runs[key]], "params": count_params(model),
                       "train_flops_per_img": flops, "kept_tokens": kept, "mfu": flops * img_s / peak if peak else None}


def _with_ratios(result: dict) -> dict:
    """`result` with the masked-vs-unmasked speed-ups and FLOPs ratios per FFN, and MoE vs dense per masking."""
    for ffn in ("moe", "dense"):
        if f"{ffn}-masked" in result and f"{ffn}-unmasked" in result:
            result[f"{ffn}_masked_speedup"] = result[f"{ffn}-masked"]["img_s"] / result[f"{ffn}-unmasked"]["img_s"]
            result[f"{ffn}_masked_flops_ratio"] = (result[f"{ffn}-unmasked"]["train_flops_per_img"]
                                                   / result[f"{ffn}-masked"]["train_flops_per_img"])
    for m in ("unmasked", "masked"):
        if f"moe-{m}" in result and f"dense-{m}" in result:
            result[f"moe_vs_dense_{m}"] = result[f"moe-{m}"]["img_s"] / result[f"dense-{m}"]["img_s"]
    return result


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
    dev = bench_device(device)
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
    sync(dev)

    runs = interleaved({key: state[key][1] for key in variants}, B, steps, repeats, dev)

    N = (cfg.input_size // cfg.patch_size) ** 2
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device_string(dev),
        "torch": torch.__version__, "preset": name, "precision": precision, "batch_size": B, "tokens": N,
        "text_len": L, "mask_ratio": mask_ratio, "steps": steps, "warmup": warmup, "repeats": repeats,
    }
    peak = peak_flops(result["device"]) if precision == "bf16" and dev.type == "cuda" else None
    _add_variants(result, variants, state, runs, N, peak)
    return _with_ratios(result)


_MICRODIT_SECTION = "## MicroDiT variants (`microt2i bench microdit`)"
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
    """Append one row per variant of a `bench_microdit` result to the "MicroDiT variants" section."""
    r = result
    rows = ""
    for key in (k for k in MICRODIT_VARIANTS if k in r):
        v, base = r[key], r.get(key.split("-")[0] + "-unmasked")
        speedup = f"{v['img_s'] / base['img_s']:.2f}×" if base else "-"
        mfu = f" (MFU {v['mfu']:.1%})" if v.get("mfu") else ""
        rows += (f"| {r['date'][:10]} | {r['device']} | {r['preset'] or '-'} | {r['precision']} | {r['batch_size']} "
                 f"| {key} | {v['kept_tokens']} of {r['tokens']} | {v['params']:,} "
                 f"| {v['train_flops_per_img'] / 1e9:.3f} | {v['img_s']:.2f}{mfu} | {speedup} | {r['torch']} |\n")
    append_rows(path, _MICRODIT_SECTION, _MICRODIT_HEADER, rows, intro=_MICRODIT_INTRO)
