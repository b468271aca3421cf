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


def min_snr_weight(sigma: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-γ loss weight per sample (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", §3.4): every parametrisation's loss is the x0-space loss ‖x0 − x̂0‖² weighted by min(SNR, γ); as a
    factor on each target's own MSE (SNR = 1/σ² in EDM σ for VP and flow alike, see the module docstring):
    - "eps" (VP ε-prediction): ‖ε − ε̂‖² = SNR·‖x0 − x̂0‖²  ⇒  w = min(SNR, γ)/SNR (the paper's Eq. for ε);
    - "v" (VP v-prediction): ‖v − v̂‖² = (SNR + 1)·‖x0 − x̂0‖²  ⇒  w = min(SNR, γ)/(SNR + 1) (the paper's v form);
    - "flow" (rectified flow, x_t = (1−t)·x0 + t·ε, v = ε − x0): x̂0 = x_t − t·v̂, so ‖v − v̂‖² = ‖x0 − x̂0‖²/t²
      ⇒  w = min(SNR, γ)·t² with t = σ/(1+σ), SNR = ((1−t)/t)² (derived the same way; at SNR < γ this is
      (1−t)², the ε-loss, as for ε-prediction);
    - "x0": w = min(SNR, γ).
    Computed in float64 (σ reaches ~3e4 on VP's linear schedule), returned in σ's dtype."""
    s = sigma.double()
    snr = 1 / s**2
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction == "eps":
        w = torch.minimum(torch.ones_like(s), gamma * s**2)  # = min(SNR, γ)/SNR, finite at σ → 0
    elif prediction == "v":
        w = clipped / (snr + 1)
    elif prediction == "flow":
        w = clipped * (s / (1 + s)) ** 2
    elif prediction == "x0":
        w = clipped
    else:
        raise ValueError(f"min-SNR weighting: unknown prediction {prediction!r} (eps, v, flow, x0)")
    return w.to(sigma.dtype)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖pred − target‖² averaged over all but the batch dim → [B], in float32 (pred may be bf16 under autocast)."""
    return (pred.to(torch.float32) - target).square().mean(dim=tuple(range(1, target.ndim)))
