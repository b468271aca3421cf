"""Noise-level conversions shared by all objectives (EDM σ, VP ᾱ, log-SNR).

EDM's noisy input is x0 + σ·n, a VP's is √ᾱ·x0 + √(1−ᾱ)·n = √ᾱ·(x0 + σ·n) with σ = √((1−ᾱ)/ᾱ); both have
SNR = 1/σ² = ᾱ/(1−ᾱ), so log-SNR λ = −2 ln σ. Functions take floats or tensors and return tensors (float64 for
floats).
"""

from __future__ import annotations

import torch


def _t(x):
    return x if torch.is_tensor(x) else torch.tensor(x, dtype=torch.float64)


def sigma_to_logsnr(sigma):
    """λ = ln(1/σ²) = −2 ln σ."""
    return -2 * _t(sigma).log()


def logsnr_to_sigma(logsnr):
    """σ = exp(−λ/2)."""
    return (-_t(logsnr) / 2).exp()


def alpha_bar_to_sigma(alpha_bar):
    """VP ᾱ → EDM σ = √((1−ᾱ)/ᾱ)."""
    alpha_bar = _t(alpha_bar)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_alpha_bar(sigma):
    """EDM σ → VP ᾱ = 1/(1+σ²)."""
    return 1 / (1 + _t(sigma) ** 2)


def training_draws(objective, x0: torch.Tensor, generator: torch.Generator | None = None, sigma=None):
    """(x0 as float32, σ [B] float32, noise like x0) for one loss call, shared by every objective: σ is drawn first
    with `objective.sample_sigma` (unless given, e.g. by the IA gate on the noise level), then the noise, both from
    `generator` on its device, so a run reseeded from its position replays them exactly."""
    device = generator.device if generator is not None else x0.device
    x0 = x0.to(torch.float32)
    if sigma is None:
        sigma = objective.sample_sigma(x0.shape[0], generator, device)
    noise = torch.randn(x0.shape, generator=generator, device=device).to(x0.device)
    return x0, sigma.to(x0.device, torch.float32), noise


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖pred − target‖² averaged over all but the batch dim → [B], in float32 (pred may be bf16 under autocast)."""
    return (pred.to(torch.float32) - target).square().mean(dim=tuple(range(1, target.ndim)))
