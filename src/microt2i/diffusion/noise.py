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


def paper_tau_to_sigma(tau: float = 400, T: int = 1000) -> float:
    """The ImageNet paper's IA threshold τ (of T steps) as an EDM σ: IA applies iff σ > this.

    That paper's schedule is linear in ᾱ: ᾱ = 1 − t with t = τ/T, so τ = 400 ⇒ ᾱ = 0.6 ⇒ σ = √(0.4/0.6) ≈ 0.816.
    """
    if not 0 < tau < T:
        raise ValueError(f"tau={tau} must lie strictly between 0 and T={T}")
    return float(alpha_bar_to_sigma(1 - tau / T))
