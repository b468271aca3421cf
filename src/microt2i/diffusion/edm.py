"""EDM: preconditioning, log-normal σ training loss, Karras sampling schedule.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM). The noisy input is
x = x0 + σ·n with n ~ N(0, I); the denoiser D(x; σ) estimates x0. MicroDiT (MicroDiT §B) trains with the EDM defaults
except σ_data, raised to the latent std (0.9 for SD latents), and P_mean/P_std = −0.6/1.2 at 256 px, 0/0.6 at 512 px.

The backbone knows nothing of EDM: `EDMPrecond` maps (x, σ) to its inputs and its output back to D(x; σ).
"""

from __future__ import annotations

import torch
from torch import nn

from . import backbone
from .noise import per_sample_mse, training_draws


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """EDM Table 1 preconditioning: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise).

    c_in scales the input to unit variance, c_skip/c_out make the effective training target of F unit-variance
    (EDM App. B.6, eqs. 114–118); c_noise = ¼ ln σ. Returns (c_skip, c_out, c_in, c_noise) shaped like `sigma`.
    """
    sigma = torch.as_tensor(sigma)
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_skip = sigma_data**2 * c_in**2
    c_out = sigma * sigma_data * c_in
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Wraps a backbone `net(x, noise_cond, text_tokens, text_mask, **kw) -> F` into the denoiser D(x; σ) (EDM eq. 7).

    `sigma` is a scalar, a 0-dim tensor or a [B] tensor. The arithmetic runs in float32 whatever dtype x has (the
    backbone itself may run under autocast); D is returned in x's dtype.

    With a patch `keep_mask` [B, N] (MicroDiT's masked training) the backbone still sees the whole noisy image but
    returns only the kept tokens' patches; D is then formed on those tokens, D = c_skip·x_kept + c_out·F with
    x_kept = `kept(x, keep_mask)`, shaped [B, N_keep, p²·C].
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def kept(self, x: torch.Tensor, keep_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, C, H, W] as the backbone's kept-token output is laid out: [B, N_keep, p²·C] (x itself if no mask)."""
        return backbone.kept(x, keep_mask)

    def forward(self, x: torch.Tensor, sigma, text_tokens, text_mask, *, keep_mask=None, **kw) -> torch.Tensor:
        x32 = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])  # [B]
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)  # [B] each
        if keep_mask is not None:
            kw["keep_mask"] = keep_mask
        F_x = self.net(c_in.view(-1, *[1] * (x.ndim - 1)) * x32, c_noise, text_tokens, text_mask, **kw)
        x32 = self.kept(x32, keep_mask)  # [B, C, H, W] or [B, N_keep, p²C], like F_x
        bc = [-1, *[1] * (x32.ndim - 1)]
        return (c_skip.view(bc) * x32 + c_out.view(bc) * F_x.to(torch.float32)).to(x.dtype)


class EDMLoss:
    """EDM training loss (Table 1, eq. 8): ln σ ~ N(P_mean, P_std²), λ(σ) = (σ² + σ_data²)/(σ·σ_data)².

    Returns the per-sample loss [B] (mean over non-batch dims), and the sampled σ [B] with `return_sigma=True`.
    With a `keep_mask` in the net kwargs (MicroDiT) the loss is averaged over the kept patches only: the target is
    `precond.kept(x0, keep_mask)`, the clean patches of the kept tokens (MicroDiT Eq. 3; reference: masked mean).
    All randomness comes from `generator` (drawn on the generator's device, so a CPU generator gives the same
    noise on every device); the trainer reseeds it every step for bit-exact resume.
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5):
        self.p_mean = p_mean
        self.p_std = p_std
        self.sigma_data = sigma_data

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training noise levels [n]: ln σ ~ N(P_mean, P_std²), drawn on the generator's device."""
        device = generator.device if generator is not None else device
        return (torch.randn([n], generator=generator, device=device) * self.p_std + self.p_mean).exp()

    def __call__(self, precond, x0, text_tokens, text_mask, *, generator=None, sigma=None, return_sigma=False,
                 **net_kwargs):
        x0, sigma, noise = training_draws(self, x0, generator, sigma)  # σ [B]: drawn, or chosen by the IA gate
        sig = sigma.view(-1, *[1] * (x0.ndim - 1))
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2  # λ(σ), Table 1
        D = precond(x0 + sig * noise, sigma, text_tokens, text_mask, **net_kwargs)
        target = precond.kept(x0, net_kwargs.get("keep_mask"))  # x0, or its kept patches [B, N_keep, p²C]
        loss = weight * per_sample_mse(D, target)
        return (loss, sigma) if return_sigma else loss


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device=None,
                  dtype=torch.float64) -> torch.Tensor:
    """EDM eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ for i < n, then σ_n = 0.

    Returns n+1 decreasing values: n sampler steps (Heun spends 2n−1 network evaluations on them).
    """
    if n < 1:
        raise ValueError(f"karras_sigmas needs n >= 1 steps, got {n}")
    ramp = torch.linspace(0, 1, n, device=device, dtype=dtype)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class EDMObjective:
    """EDM behind the objective interface the trainer and the samplers use (see `objectives.py`)."""

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, sigma_min: float = 0.002,
                 sigma_max: float = 80.0):
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max
        self.loss_fn = EDMLoss(p_mean=p_mean, p_std=p_std, sigma_data=sigma_data)

    def denoiser(self, net: nn.Module) -> EDMPrecond:
        return EDMPrecond(backbone.for_sampling(net), sigma_data=self.sigma_data)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return self.loss_fn.sample_sigma(n, generator, device)

    def loss(self, net, x0, text_tokens, text_mask, *, generator=None, **kw) -> torch.Tensor:
        precond = EDMPrecond(backbone.for_loss(net, generator), sigma_data=self.sigma_data)  # self-conditioning
        return self.loss_fn(precond, x0, text_tokens, text_mask, generator=generator, **kw)

    def sampling_sigmas(self, steps: int, device=None) -> torch.Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, device=device)
