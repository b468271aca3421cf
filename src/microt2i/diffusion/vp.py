"""VP ε-prediction: the objective of CAD-I (ImageNet-T2I Eq. 1; DDPM, Ho et al. 2020, in continuous time as CAD).

    x_t = √γ(t)·x0 + √(1−γ(t))·ε,   t ~ U(0, 1),   loss = ‖ε − ε_θ(x_t, γ(t), c)‖²  (unweighted, Eq. 1)

γ(t) = ᾱ(t) is the signal level, 1 at t = 0 (clean) and → 0 at t = 1. Schedules (Chen 2023, "On the importance of
noise scheduling", Alg. 1; CAD's `schedulers.py`): linear γ = 1 − t (CAD-I trains with it), cosine
γ = cos(πt/2)^{2τ}, sigmoid γ = (v_e − sig((t(e−s)+s)/τ))/(v_e − v_s) with v = sig(·/τ) at the ends s, e.
γ is clipped below at 1e-9 as CAD does. The network's noise condition is γ itself (CAD embeds γ·1000).

**In σ-space.** x_t = √γ·(x0 + σ·ε) with σ² = (1−γ)/γ, log-SNR λ = ln(γ/(1−γ)) = −2 ln σ: the VP model is the
EDM-space denoiser

    D(x; σ) = x − σ·ε_θ(x/√(1+σ²), γ = 1/(1+σ²)),

which is all a sampler needs (samplers.py); DDIM is the Euler step of that ODE, so `samplers.ddim` on these σ is
CAD's DDIM. Sampling runs on t uniform from t(σ_max) to 0 (CAD: uniform t from 1), the last σ being 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import backbone
from .noise import min_snr_weight, per_sample_mse, training_draws

GAMMA_MIN = 1e-9  # CAD's clip_min: σ ≤ √((1 − 1e-9)/1e-9) ≈ 31 623


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class VPSchedule:
    """γ(t) and its inverse for the linear, cosine and sigmoid schedules; σ(t), λ(t) follow from γ."""

    def __init__(self, kind: str = "linear", *, tau: float = 1.0, start: float = -3.0, end: float = 3.0):
        if kind not in ("linear", "cosine", "sigmoid"):
            raise ValueError(f"VP schedule {kind!r} is not one of linear, cosine, sigmoid")
        self.kind, self.tau, self.start, self.end = kind, tau, start, end
        self.v_start, self.v_end = (torch.sigmoid(_f64(v / tau)) for v in (start, end))  # sigmoid ends

    def gamma(self, t) -> torch.Tensor:
        """γ(t) ∈ [1e-9, 1] for t ∈ [0, 1] (float64 for float input, else t's dtype)."""
        t = t if torch.is_tensor(t) else _f64(t)
        if self.kind == "linear":
            g = 1 - t
        elif self.kind == "cosine":
            g = torch.cos(t * (math.pi / 2)) ** (2 * self.tau)
        else:
            s, e, vs, ve = self.start, self.end, self.v_start.to(t), self.v_end.to(t)
            g = (ve - torch.sigmoid((t * (e - s) + s) / self.tau)) / (ve - vs)
        return g.clamp(GAMMA_MIN, 1.0)

    def t_of_gamma(self, gamma) -> torch.Tensor:
        """The inverse of `gamma` on (γ_min, 1]."""
        g = gamma if torch.is_tensor(gamma) else _f64(gamma)
        if self.kind == "linear":
            return 1 - g
        if self.kind == "cosine":
            return torch.arccos(g ** (1 / (2 * self.tau))) * (2 / math.pi)
        s, e, vs, ve = self.start, self.end, self.v_start.to(g), self.v_end.to(g)
        return (self.tau * torch.logit(ve - g * (ve - vs)) - s) / (e - s)

    def sigma(self, t) -> torch.Tensor:
        """EDM σ of time t: σ² = (1 − γ)/γ."""
        g = self.gamma(t)
        return ((1 - g) / g).sqrt()

    def t_of_sigma(self, sigma) -> torch.Tensor:
        sigma = sigma if torch.is_tensor(sigma) else _f64(sigma)
        return self.t_of_gamma(1 / (1 + sigma**2))

    def logsnr(self, t) -> torch.Tensor:
        """λ(t) = ln(γ/(1 − γ)) = −2 ln σ(t)."""
        g = self.gamma(t)
        return (g / (1 - g)).log()


class VPDenoiser(nn.Module):
    """D(x; σ) = x − σ·ε_θ(x/√(1+σ²), γ) with γ = 1/(1+σ²): an ε-prediction network as an EDM-space denoiser.

    The arithmetic runs in x's precision (at least float32; the samplers' float64 state keeps it there), the
    network gets float32 inputs; D is returned in x's dtype.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma, text_tokens, text_mask, **kw) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xd = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1).expand(x.shape[0])  # [B]
        s = sigma.view(-1, *[1] * (x.ndim - 1))
        gamma = 1 / (1 + s**2)
        eps = self.net((xd * gamma.sqrt()).float(), gamma.flatten().float(), text_tokens, text_mask, **kw)
        return (xd - s * eps.to(dtype)).to(x.dtype)


class VPObjective:
    """VP ε-prediction behind the objective interface (see `objectives.py`)."""

    def __init__(self, schedule: str = "linear", *, tau: float = 1.0, sigmoid_start: float = -3.0,
                 sigmoid_end: float = 3.0, sigma_max: float = 80.0, snr_gamma: float | None = None):
        self.schedule = VPSchedule(schedule, tau=tau, start=sigmoid_start, end=sigmoid_end)
        self.sigma_max, self.snr_gamma = sigma_max, snr_gamma

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training noise levels [n] (float32): t ~ U(0, 1) on the generator's device, σ = σ(t)."""
        device = generator.device if generator is not None else device
        t = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return self.schedule.sigma(t).float()

    def loss(self, net, x0, text_tokens, text_mask, *, generator=None, sigma=None, return_sigma=False,
             **net_kwargs):
        """Per-sample ‖ε_θ − ε‖² [B] (mean over the rest). σ [B] may be given (e.g. chosen by augmentation gating);
        otherwise it is drawn, then the noise, both from `generator`. A `keep_mask` in net_kwargs compares the
        kept patches only."""
        x0, sigma, noise = training_draws(self, x0, generator, sigma)
        gamma = (1 / (1 + sigma.double() ** 2)).float().view(-1, *[1] * (x0.ndim - 1))  # [B, 1, 1, 1]
        x_t = gamma.sqrt() * x0 + (1 - gamma).sqrt() * noise
        eps = backbone.for_loss(net, generator)(x_t, gamma.flatten(), text_tokens, text_mask, **net_kwargs)
        target = backbone.kept(noise, net_kwargs.get("keep_mask"))
        loss = per_sample_mse(eps, target)
        if self.snr_gamma:  # min-SNR-γ: × min(SNR, γ)/SNR (Hang et al. 2023 §3.4; noise.min_snr_weight)
            loss = loss * min_snr_weight(sigma, self.snr_gamma, "eps")
        return (loss, sigma) if return_sigma else loss

    def denoiser(self, net: nn.Module) -> VPDenoiser:
        return VPDenoiser(backbone.for_sampling(net))

    def sampling_sigmas(self, steps: int, device=None) -> torch.Tensor:
        """steps+1 decreasing σ: t uniform from t(σ_max) down to 0, where σ = 0."""
        if steps < 1:
            raise ValueError(f"sampling needs steps >= 1, got {steps}")
        t_max = self.schedule.t_of_sigma(self.sigma_max)
        t = t_max * (1 - torch.arange(steps, dtype=torch.float64) / steps)  # [steps], t_max … t_max/steps
        return torch.cat([self.schedule.sigma(t), t.new_zeros(1)]).to(device)
