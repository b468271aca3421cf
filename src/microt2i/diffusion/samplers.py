"""ODE samplers for the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (EDM eq. 3 with σ(t) = t, s(t) = 1).

Every sampler has one signature (DESIGN §3): `sampler(denoise, x, sigmas, *, callback=None, **opts) -> x0`, where
`denoise(x, sigma) -> D(x; σ)` takes a 0-dim σ, `sigmas` decreases to a final 0 (e.g. `edm.karras_sigmas`) and
`x` is the initial noise already scaled by sigmas[0]. VP and flow models are wrapped into a `denoise`, so every
sampler serves every objective. `callback(dict(i, x, sigma, denoised))` sees the state before step i. `opts` are
sampler-specific keywords; `euler` and `heun` take none, so a misspelt option is a TypeError, not silently ignored.

The state is kept in float64 (as EDM's and MicroDiT's samplers do): it costs only element-wise work next to the
network and keeps the ODE error of the solver, not of rounding; MPS has no float64 and stays in float32. The
result is returned in x's dtype.
"""

from __future__ import annotations

import torch


def _state(x: torch.Tensor, sigmas: torch.Tensor):
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    return x.to(dtype), torch.as_tensor(sigmas).to(device=x.device, dtype=dtype)


@torch.no_grad()
def euler(denoise, x, sigmas, *, callback=None):
    """First-order Euler steps on the probability-flow ODE (EDM Algorithm 1 without the correction)."""
    out_dtype = x.dtype
    x, sigmas = _state(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma).to(x.dtype)
        if callback is not None:
            callback(dict(i=i, x=x, sigma=sigma, denoised=denoised))
        d = (x - denoised) / sigma  # dx/dσ, EDM eq. 3
        x = x + (sigma_next - sigma) * d
    return x.to(out_dtype)


@torch.no_grad()
def heun(denoise, x, sigmas, *, callback=None):
    """EDM Algorithm 1, deterministic (S_churn = 0): Euler step, then Heun's 2nd-order correction unless σ_next = 0."""
    out_dtype = x.dtype
    x, sigmas = _state(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma).to(x.dtype)
        if callback is not None:
            callback(dict(i=i, x=x, sigma=sigma, denoised=denoised))
        d = (x - denoised) / sigma  # Algorithm 1 line 7
        x_next = x + (sigma_next - sigma) * d  # line 8
        if sigma_next > 0:  # lines 9–11: average the slopes at both ends
            d_next = (x_next - denoise(x_next, sigma_next).to(x.dtype)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x.to(out_dtype)


SAMPLERS = {"euler": euler, "heun": heun}


def get_sampler(name: str):
    """The sampler registered as `name`; an unknown name raises a ValueError listing the valid ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
