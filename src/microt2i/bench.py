"""`microt2i bench train`: training throughput of our DiT-I next to diffusers' PixArt-α transformer.

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


def write_benchmarks_md(result: dict, path: str = "BENCHMARKS.md") -> None:
    """Append one dated row for a `bench_train` result to a Markdown table (created with a header if absent)."""
    p = Path(path)
    text = p.read_text() if p.is_file() else "# Benchmarks\n\n## Training throughput (`microt2i bench train`)\n\n"
    if _HEADER not in text:
        text += ("\n" if text and not text.endswith("\n") else "") + _HEADER
    r = result
    row = (
        f"| {r['date'][:10]} | {r['device']} | {r['preset'] or '-'} | {r['precision']} | {r['batch_size']} "
        f"| {r['tokens']} | {r['text_len']} | {r['dit_i']['img_s']:.2f} | {r['pixart']['img_s']:.2f} "
        f"| {r['ratio']:.2f} | {r['dit_i']['params']:,} | {r['pixart']['params']:,} | {r['torch']} |\n"
    )
    # insert after the last row of this table, even if other sections follow it
    end = text.index(_HEADER) + len(_HEADER)
    while text.startswith("|", end):
        nl = text.find("\n", end)
        end = len(text) if nl < 0 else nl + 1
    head = text[:end] if text[:end].endswith("\n") else text[:end] + "\n"
    atomic_write_text(p, head + row + text[end:])
