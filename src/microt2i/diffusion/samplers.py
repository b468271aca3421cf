"""Samplers for the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (EDM eq. 3 with σ(t) = t, s(t) = 1).

Every sampler has one signature (DESIGN §3): `sampler(denoise, x, sigmas, *, callback=None, **opts) -> x0`, where
`denoise(x, sigma) -> D(x; σ)` takes a 0-dim σ, `sigmas` decreases to a final 0 (e.g. `edm.karras_sigmas` or an
objective's `sampling_sigmas`) and `x` is the initial noise already scaled by sigmas[0]. VP and flow models are
wrapped into a `denoise` (vp.py, flow.py), so every sampler serves every objective. `callback(dict(i, x, sigma,
denoised))` sees the state before step i. `opts` are sampler-specific keywords, so a misspelt one is a TypeError,
not silently ignored; every sampler takes `clamp`, which clips the denoised estimate x̂0 to [−clamp, clamp]
before it is used (CAD's `clamp_value`; 0 or None = off).

- `euler`: first-order; DDIM with η = 0 (Song et al. 2021 §4.3 is Euler on this ODE, Karras et al. 2022 §3).
- `ddim`: DDIM with η; η > 0 adds fresh noise drawn from `generator` (η = 1: DDPM's posterior variance).
- `heun`: EDM Algorithm 1, deterministic (S_churn = 0), second order.
- `dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), second order multistep, one evaluation per step.
Rectified flow needs no sampler of its own: its Euler steps in t are `euler` on its σ (flow.py).

The state is kept in float64 (as EDM's and MicroDiT's samplers do): it costs only element-wise work next to the
network and keeps the ODE error of the solver, not of rounding; MPS has no float64 and stays in float32. The
result is returned in x's dtype.
"""

from __future__ import annotations

import torch


def _state(x: torch.Tensor, sigmas: torch.Tensor):
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    return x.to(dtype), torch.as_tensor(sigmas).to(device=x.device, dtype=dtype)


def clamped(denoise, clamp: float | None):
    """`denoise` with its x̂0 clipped to [−clamp, clamp] (dynamic range of the data, e.g. 1 for [−1, 1] pixels)."""
    if not clamp:
        return denoise
    if clamp < 0:
        raise ValueError(f"clamp={clamp} must be positive (or 0 / None to switch it off)")
    return lambda x, sigma: denoise(x, sigma).clamp(-clamp, clamp)


def _integrate(denoise, x, sigmas, callback, clamp, step):
    """The loop every sampler shares: the float64 state, x̂0 clipping, D(x; σ_i) and the callback before step i;
    `step(x, denoised, sigma, sigma_next, denoise)` is the sampler's own update and returns the next x."""
    out_dtype = x.dtype
    x, sigmas = _state(x, sigmas)
    denoise = clamped(denoise, clamp)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma).to(x.dtype)
        if callback is not None:
            callback(dict(i=i, x=x, sigma=sigma, denoised=denoised))
        x = step(x, denoised, sigma, sigma_next, denoise)
    return x.to(out_dtype)


@torch.no_grad()
def ddim(denoise, x, sigmas, *, callback=None, eta: float = 0.0, clamp: float | None = None,
         generator: torch.Generator | None = None):
    """DDIM (Song et al. 2021, Eq. 12) in σ-space: with x̂0 = D(x; σ) and ε̂ = (x − x̂0)/σ,

        x_next = x̂0 + √(σ_next² − s²)·ε̂ + s·z,   s = η·σ_next·√(1 − σ_next²/σ²),

    which is Eq. 12 divided by √ᾱ_next (its σ_t(η) of Eq. 16 becomes s). η = 0 is deterministic and is exactly an
    Euler step of the ODE; z ~ N(0, I) is drawn from `generator` (on its device) when η > 0.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim eta={eta} must be in [0, 1]")

    def step(x, denoised, sigma, sigma_next, _):
        s_up = eta * sigma_next * (1 - (sigma_next / sigma) ** 2).sqrt()  # fresh-noise std
        s_down = (sigma_next**2 - s_up**2).sqrt()  # the deterministic part lands here
        x = denoised + s_down * (x - denoised) / sigma
        if eta > 0 and sigma_next > 0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                            device=generator.device if generator is not None else x.device)
            x = x + s_up * z.to(x.device)
        return x

    return _integrate(denoise, x, sigmas, callback, clamp, step)


def euler(denoise, x, sigmas, *, callback=None, clamp: float | None = None):
    """First-order Euler steps on the probability-flow ODE (EDM Algorithm 1 without the correction) = DDIM, η = 0."""
    return ddim(denoise, x, sigmas, callback=callback, clamp=clamp)


def _heun_step(x, denoised, sigma, sigma_next, denoise):
    d = (x - denoised) / sigma  # Algorithm 1 line 7
    x_next = x + (sigma_next - sigma) * d  # line 8
    if sigma_next > 0:  # lines 9–11: average the slopes at both ends
        d_next = (x_next - denoise(x_next, sigma_next).to(x.dtype)) / sigma_next
        x_next = x + (sigma_next - sigma) * (d + d_next) / 2
    return x_next


@torch.no_grad()
def heun(denoise, x, sigmas, *, callback=None, clamp: float | None = None):
    """EDM Algorithm 1, deterministic (S_churn = 0): Euler step, then Heun's 2nd-order correction unless σ_next = 0."""
    return _integrate(denoise, x, sigmas, callback, clamp, _heun_step)


@torch.no_grad()
def dpmpp_2m(denoise, x, sigmas, *, callback=None, clamp: float | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) with α = 1, λ = −ln σ, h = λ_next − λ:

        x_next = (σ_next/σ)·x − (e^{−h} − 1)·D',   D' = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1},   r = h_{i−1}/h,

    D' = D_i on the first step (first order). The step to σ = 0 is its limit, x_next = D_i.
    """
    last = {"denoised": None, "h": None}  # the multistep memory: the previous step's D and h

    def step(x, denoised, sigma, sigma_next, _):
        if sigma_next == 0:
            x = denoised
        else:
            h = (sigma / sigma_next).log()
            d = denoised
            if last["denoised"] is not None:
                r = last["h"] / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * last["denoised"]
            x = (sigma_next / sigma) * x - torch.expm1(-h) * d
            last["h"] = h
        last["denoised"] = denoised
        return x

    return _integrate(denoise, x, sigmas, callback, clamp, step)


SAMPLERS = {"euler": euler, "heun": heun, "ddim": ddim, "dpmpp_2m": dpmpp_2m}


def count_diverged(x: torch.Tensor) -> int:
    """How many samples of a batch of network outputs / sampled latents are unusable: NaN / Inf, or so large that
    their squared norm (the training loss) overflows float32, which sampling would write as black / white squares."""
    sq = x.detach().float().flatten(1).square().sum(1)
    return int((~torch.isfinite(sq)).sum())


def get_sampler(name: str):
    """The sampler registered as `name`; an unknown name raises a ValueError listing the valid ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
