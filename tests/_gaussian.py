"""The reference problem of the diffusion tests: Gaussian data x0 ~ N(μ, s²) per dimension.

Its exact denoiser is D(x; σ) = μ + s²/(s²+σ²)·(x − μ), and the probability-flow ODE from σ_max to 0 has the
solution x0 = μ + (x − μ)·s/√(s² + σ_max²).
"""

import torch

F64 = torch.float64


def gaussian_problem(d=8, batch=64, sigma_max=80.0, seed=0):
    """Per-dimension μ, s; the exact denoiser; start noise x_T; the exact ODE endpoint."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.linspace(-1.0, 1.0, d, dtype=F64)
    s = torch.linspace(0.3, 1.5, d, dtype=F64)
    xT = torch.randn(batch, d, generator=g, dtype=F64) * sigma_max
    exact = mu + (xT - mu) * s / (s**2 + sigma_max**2).sqrt()
    return mu, s, (lambda x, sigma: mu + s**2 / (s**2 + sigma**2) * (x - mu)), xT, exact


def rel_error(out, mu, exact):
    """Error of the ODE endpoint relative to the exact deviation from the mean (a per-dimension factor here)."""
    return ((out - mu) / (exact - mu) - 1).abs().max().item()
