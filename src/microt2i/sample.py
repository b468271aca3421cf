"""Prompts → images: text encoding, seeded noise, a sampler from `diffusion.samplers`, CFG, codec decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .config import RunConfig, load_yaml
from .data.store import tensor_to_images
from .diffusion.objectives import build_objective
from .diffusion.guidance import cfg_denoiser
from .diffusion.samplers import get_sampler
from .models import from_pretrained


def initial_noise(n: int, shape: tuple[int, ...], sigma_max: float, seed: int, device) -> torch.Tensor:
    """Image i's noise depends only on (seed, i): a grid is the same whatever the batch size."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i])
                        .generate_state(1)[0]))) for i in range(n)]
    return torch.stack(out).to(device, torch.float64) * sigma_max


@torch.no_grad()
def generate(net, cfg: RunConfig, text_tokens, text_mask, null_tokens, null_mask, *, codec, sampler: str | None = None,
             steps: int | None = None, cfg_scale: float | None = None, seed: int | None = None,
             batch_size: int = 64, device="cpu") -> np.ndarray:
    """Sample one image per caption embedding; returns uint8 [N, H, W, 3].

    `eval.clamp` clips x̂0 in every step; `eval.eta` > 0 (ddim only) draws its fresh noise from a generator seeded by
    (seed, first image of the batch), so those samples also depend on `batch_size`."""
    e = cfg.eval
    name = sampler or e.sampler
    sampler_fn = get_sampler(name)
    if e.eta and name != "ddim":
        raise ValueError(f"eval.eta={e.eta} applies to the ddim sampler only, not {name!r}; set eval.eta=0")
    steps = steps or e.steps
    scale = e.cfg_scale if cfg_scale is None else cfg_scale
    seed = e.seed if seed is None else seed
    m = cfg.model
    objective = build_objective(cfg.objective)
    net = net.to(device).eval()
    sigmas = objective.sampling_sigmas(steps, device=device)
    n = text_tokens.shape[0]
    noise = initial_noise(n, (m.in_channels, m.input_size, m.input_size), float(sigmas[0]), seed, device)
    images = []
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        b = noise[sl].shape[0]
        precond = objective.denoiser(net)  # one per trajectory: a self-conditioning network carries state in it
        denoise = cfg_denoiser(precond, text_tokens[sl].to(device).float(), text_mask[sl].to(device),
                               null_tokens.to(device).float().expand(b, -1, -1), null_mask.to(device).expand(b, -1), scale)
        opts = {"clamp": e.clamp} if e.clamp else {}
        if e.eta:
            gen_seed = int(np.random.SeedSequence([seed, i, 1]).generate_state(1)[0])
            opts.update(eta=e.eta, generator=torch.Generator().manual_seed(gen_seed))
        x0 = sampler_fn(denoise, noise[sl], sigmas, **opts)
        images.append(tensor_to_images(codec.decode(x0.float())))
    return np.concatenate(images)


def load_run(run_dir: str | Path, device="cpu"):
    """(config, EMA network, null tokens, null mask) of a finished run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "ema" / "model.safetensors").exists():
        raise FileNotFoundError(f"{run_dir} has no ema/model.safetensors; train it to the end first (`microt2i train`)")
    null = load_file(str(run_dir / "null_text.safetensors"))
    return (load_yaml(run_dir / "config.yaml"), from_pretrained(run_dir / "ema", device=device),
            null["tokens"], null["mask"].bool())
