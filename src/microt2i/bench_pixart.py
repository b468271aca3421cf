"""`microt2i bench train`: our DiT-I next to diffusers' PixArt-α transformer at matched dims, interleaved (see
`bench.py` for what differs by design)."""

from __future__ import annotations

import datetime as _dt
import statistics
from dataclasses import replace
import torch
import torch.nn as nn
from .config import DiTIConfig
from .models import build, count_params
from .train.optim import adamw_impl
from .bench_common import append_rows, bench_device, device_string, interleaved, sync, train_step


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


# ---------------------------------------------------------------------------------------------------------------
# Benchmark


def _networks(cfg: DiTIConfig, x, sigma, text, mask, no_refiner: bool) -> dict:
    """{name: (network, forward(network) on the shared inputs)} of the networks `bench_train` compares."""
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
    return nets


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
    dev = bench_device(device)
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

    nets = _networks(cfg, x, sigma, text, mask, no_refiner)
    state = {}
    for key, (model, forward) in nets.items():
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_impl(model.parameters()))
        for _ in range(warmup):
            train_step(forward, model, opt, target, precision, dev)
        state[key] = (model, forward, opt)
    sync(dev)

    runs = interleaved({key: (lambda m=m, f=f, o=o: train_step(f, m, o, target, precision, dev))
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


# (ours, PixArt variant, ratio key, label) of the DiT-I vs PixArt comparisons `bench_train` makes
PIXART_PAIRS = (
    ("dit_i", "pixart", "ratio", "DiT-I / PixArt"),
    ("dit_i_no_refiner", "pixart", "ratio_no_refiner", "DiT-I without refiner / PixArt"),
    ("dit_i_no_refiner", "pixart_qk_norm", "ratio_matched", "DiT-I without refiner / PixArt + QK-norm (same features)"),
)


def write_benchmarks_md(result: dict, path: str = "BENCHMARKS.md") -> None:
    """Append dated rows for a `bench_train` result to its Markdown table (created with a header if absent): one per
    comparison in `PIXART_PAIRS` that was measured."""
    r = result
    rows = ""
    for key, base, ratio, label in PIXART_PAIRS:
        if ratio in r:
            rows += (f"| {r['date'][:10]} | {r['device']} | {r['preset'] or '-'} {label} | {r['precision']} "
                     f"| {r['batch_size']} | {r['tokens']} | {r['text_len']} | {r[key]['img_s']:.2f} "
                     f"| {r[base]['img_s']:.2f} | {r[ratio]:.2f} | {r[key]['params']:,} | {r[base]['params']:,} "
                     f"| {r['torch']} |\n")
    append_rows(path, "## Training throughput (`microt2i bench train`)", _HEADER, rows)
