"""Caption embeddings → images: seeded per-image noise, a sampler from `samplers.py`, CFG, codec decode. The one
sampling driver under `microt2i sample`, the export pipeline, in-training and offline evaluation."""

from __future__ import annotations

import numpy as np
import torch

from ..config import RunConfig, check_sampling
from ..progress import Progress
from ..world.pixels import tensor_to_images
from .guidance import cfg_denoiser
from .objectives import build_objective
from .samplers import count_diverged, get_sampler


def initial_noise(n: int, shape: tuple[int, ...], sigma_max: float, seed: int, device,
                  first_index: int = 0) -> torch.Tensor:
    """Image i's noise depends only on (seed, i): a grid is the same whatever the batch size. `first_index` numbers
    the images from there, so a long list sampled in chunks equals the list sampled at once."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i])
                        .generate_state(1)[0]))) for i in range(first_index, first_index + n)]
    return torch.stack(out).to(device, torch.float64) * sigma_max


def latent_size(cfg: RunConfig, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The latent (h, w) of pixel `size` = (height, width): the model's square when None; else DiT-I only, each side
    a multiple of the VAE factor × patch and height·width within data.resolution² (an aspect bucket, data/buckets.py)."""
    m, res = cfg.model, cfg.data.resolution
    if size is None:
        return m.input_size, m.input_size
    h, w = size
    f = res // m.input_size
    mult = f * m.patch_size
    if m.family != "dit-i":
        raise ValueError(f"--width/--height sample DiT-I only (model.family={m.family!r} samples its {res}² square)")
    if h <= 0 or w <= 0 or h % mult or w % mult or h * w > res * res:
        raise ValueError(f"--height {h} --width {w}: each must be a multiple of {mult} (VAE factor {f} × patch "
                         f"{m.patch_size}) with height·width <= {res}² (e.g. the run's buckets: `microt2i sample "
                         f"--height {res // 2 // mult * mult or mult} --width {res * 2 // mult * mult}`)")
    return h // f, w // f


@torch.no_grad()
def generate(net, cfg: RunConfig, text_tokens, text_mask, null_tokens, null_mask, *, codec, sampler: str | None = None,
             steps: int | None = None, cfg_scale: float | None = None, seed: int | None = None,
             batch_size: int = 64, device="cpu", progress: bool = False, first_index: int = 0,
             desc: str = "sample", work: str = "", sampler_fn=None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Sample one image per caption embedding; returns uint8 [N, H, W, 3].

    `eval.clamp` clips x̂0 in every step; `eval.eta` > 0 (ddim only) draws its fresh noise from a generator seeded by
    (seed, first image of the batch), so those samples also depend on `batch_size`. `progress` reports every sampler step
    (progress.py: a bar with images/s and ETA on a terminal, status lines in a log). Image k of the call uses the noise
    of (seed, first_index + k), so one image of a larger call can be drawn alone (serve.py). `size` = (height, width)
    in pixels samples DiT-I at an aspect bucket's size (`latent_size`); None = the model's square."""
    e = cfg.eval
    name = sampler or e.sampler
    sampler_fn = sampler_fn or get_sampler(name)  # sampler_fn: a diffusers scheduler run by the pipeline
    if e.eta and name != "ddim":
        raise ValueError(f"eval.eta={e.eta} applies to the ddim sampler only, not {name!r}; set eval.eta=0")
    steps = e.steps if steps is None else steps
    scale = e.cfg_scale if cfg_scale is None else cfg_scale
    check_sampling(steps, scale)
    seed = e.seed if seed is None else seed
    m = cfg.model
    objective = build_objective(cfg.objective)
    net = net.to(device).eval()
    sigmas = objective.sampling_sigmas(steps, device=device)
    n = text_tokens.shape[0]
    noise = initial_noise(n, (m.in_channels, *latent_size(cfg, size)), float(sigmas[0]), seed, device, first_index)
    images = []
    bar = Progress(n, desc=desc, unit="img", enabled=progress, decimals=1,
                   work=work or f"{name} {steps} steps, CFG {scale:g}, batches of {min(batch_size, n)}")
    n_steps = len(sigmas) - 1
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        b = noise[sl].shape[0]
        precond = objective.denoiser(net)  # one per trajectory: a self-conditioning network carries state in it
        denoise = cfg_denoiser(precond, text_tokens[sl].to(device).float(), text_mask[sl].to(device),
                               null_tokens.to(device).float().expand(b, -1, -1), null_mask.to(device).expand(b, -1), scale)
        opts = {"clamp": e.clamp} if e.clamp else {}
        if e.eta:
            gen_seed = int(np.random.SeedSequence([seed, first_index + i, 1]).generate_state(1)[0])
            opts.update(eta=e.eta, generator=torch.Generator().manual_seed(gen_seed))
        x0 = sampler_fn(denoise, noise[sl], sigmas, callback=lambda _, b=b: bar.update(b / n_steps), **opts)
        bad = count_diverged(x0)
        if bad:  # a diverged network: refuse rather than write black squares or score them
            raise FloatingPointError(f"the network produced NaN / Inf (or overflowing) images for {bad} of {b} samples: "
                                     f"its weights diverged in training. Re-train it with a lower train.lr (it "
                                     f"resumes from the newest finite checkpoint)")
        images.append(tensor_to_images(codec.decode(x0.float())))
    bar.close()
    return np.concatenate(images)
