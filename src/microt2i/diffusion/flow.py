"""Rectified flow (Liu et al. 2023; Lipman et al. 2023), trained as in SD3 (Esser et al. 2024, §2–3.1):

    x_t = (1 − t)·x0 + t·ε,   v = ε − x0,   loss = ‖v_θ(x_t, t, c) − v‖²,   logit(t) ~ N(m, s²)  (logit-normal)

**In σ-space.** x_t = (1 − t)·(x0 + σ·ε) with σ = t/(1 − t), so t = σ/(1 + σ) = sigmoid(ln σ): logit-normal t is
log-normal σ, ln σ ~ N(m, s²), the same family as EDM's training σ. The model is the EDM-space denoiser

    D(x; σ) = x_t − t·v_θ(x_t, t),   x_t = x/(1 + σ),

and Euler in t on dx_t/dt = v_θ takes exactly the steps of `samplers.euler` on these σ (both are the DDIM step of
the same ODE), so flow needs no sampler of its own. Sampling runs on t uniform from t(σ_max) to 0.
"""

from __future__ import annotations

import torch
from torch import nn

from . import backbone
from .noise import min_snr_weight, per_sample_mse, training_draws


class FlowDenoiser(nn.Module):
    """D(x; σ) = x_t − t·v_θ(x_t, t) with t = σ/(1+σ), x_t = x/(1+σ): a velocity network as an EDM-space denoiser."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma, text_tokens, text_mask, **kw) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1).expand(x.shape[0])  # [B]
        s = sigma.view(-1, *[1] * (x.ndim - 1))
        t = s / (1 + s)
        x_t = x.to(dtype) / (1 + s)
        v = self.net(x_t.float(), t.flatten().float(), text_tokens, text_mask, **kw)
        return (x_t - t * v.to(dtype)).to(x.dtype)


class FlowObjective:
    """Rectified flow behind the objective interface (see `objectives.py`)."""

    def __init__(self, logit_mean: float = 0.0, logit_std: float = 1.0, sigma_max: float = 80.0,
                 snr_gamma: float | None = None):
        self.logit_mean, self.logit_std, self.sigma_max = logit_mean, logit_std, sigma_max
        self.snr_gamma = snr_gamma

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training noise levels [n]: ln σ = logit(t) ~ N(logit_mean, logit_std²), drawn on the generator's device."""
        device = generator.device if generator is not None else device
        return (torch.randn(n, generator=generator, device=device) * self.logit_std + self.logit_mean).exp()

    def loss(self, net, x0, text_tokens, text_mask, *, generator=None, sigma=None, return_sigma=False,
             **net_kwargs):
        """Per-sample ‖v_θ − (ε − x0)‖² [B] (mean over the rest); σ as in `VPObjective.loss`."""
        x0, sigma, noise = training_draws(self, x0, generator, sigma)
        t = torch.sigmoid(sigma.log()).view(-1, *[1] * (x0.ndim - 1))  # σ/(1+σ), finite for any σ
        x_t = (1 - t) * x0 + t * noise
        v = backbone.for_loss(net, generator)(x_t, t.flatten(), text_tokens, text_mask, **net_kwargs)
        target = backbone.kept(noise - x0, net_kwargs.get("keep_mask"))
        loss = per_sample_mse(v, target)
        if self.snr_gamma:  # min-SNR-γ: × min(SNR, γ)·t² (Hang et al. 2023 §3.4 in x0 space; noise.min_snr_weight)
            loss = loss * min_snr_weight(sigma, self.snr_gamma, "flow")
        return (loss, sigma) if return_sigma else loss

    def denoiser(self, net: nn.Module) -> FlowDenoiser:
        return FlowDenoiser(backbone.for_sampling(net))

    def sampling_sigmas(self, steps: int, device=None) -> torch.Tensor:
        """steps+1 decreasing σ = t/(1−t): t uniform from σ_max/(1+σ_max) down to 0."""
        if steps < 1:
            raise ValueError(f"sampling needs steps >= 1, got {steps}")
        t_max = self.sigma_max / (1 + self.sigma_max)
        t = t_max * (1 - torch.arange(steps + 1, dtype=torch.float64) / steps)  # [steps+1], ends at 0
        return (t / (1 - t)).to(device)
