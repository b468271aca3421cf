"""The objective interface: what the trainer and the sampler know of a diffusion formulation.

An objective has
- `loss(net, x0, text_tokens, text_mask, *, generator, **net_kwargs) -> [B]` per-sample training loss, all
  randomness drawn from `generator` (the trainer reseeds it from (seed, rank, nimg) for exact resume);
  VP and flow also take `sigma=` (the noise levels, e.g. chosen by augmentation gating) and `return_sigma=True`;
- `sample_sigma(n, generator)` (VP, flow): the training noise levels as EDM σ, so a noise-level rule such as the
  IA gate (DESIGN §3) is written once, on σ or log-SNR λ = −2 ln σ (`noise.py`), for every formulation;
- `denoiser(net)`: a module `D(x, sigma, text_tokens, text_mask, **kw)` giving the x0 estimate in EDM's σ
  parametrisation (x = x0 + σ·n), so every sampler in `samplers.py` serves every formulation. A network with
  latent self-conditioning (CAD-I) gets a stateful denoiser: build one per sampling trajectory;
- `sampling_sigmas(steps, device)`: the decreasing σ schedule, ending in 0;
- `sigma_max`: the initial noise scale.

Formulations: `edm` (EDM preconditioning, MicroDiT), `vp` (ε-prediction, CAD-I, ImageNet-T2I Eq. 1), `flow`
(rectified flow, velocity target). Latent self-conditioning is handled by the objectives (`backbone.py`).
"""

from __future__ import annotations

from ..config import ObjectiveConfig
from .edm import EDMObjective
from .flow import FlowObjective
from .vp import VPObjective


def build_objective(cfg: ObjectiveConfig):
    if cfg.kind == "edm":
        return EDMObjective(sigma_data=cfg.sigma_data, p_mean=cfg.p_mean, p_std=cfg.p_std, sigma_min=cfg.sigma_min,
                            sigma_max=cfg.sigma_max)
    if cfg.kind == "vp":
        return VPObjective(cfg.schedule, tau=cfg.schedule_tau, sigmoid_start=cfg.sigmoid_start,
                           sigmoid_end=cfg.sigmoid_end, sigma_max=cfg.sigma_max, snr_gamma=cfg.snr_gamma)
    if cfg.kind == "flow":
        return FlowObjective(logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, sigma_max=cfg.sigma_max,
                             snr_gamma=cfg.snr_gamma)
    raise ValueError(f"objective.kind={cfg.kind!r} has no implementation; valid: edm, vp, flow")
