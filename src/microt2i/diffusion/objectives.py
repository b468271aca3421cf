"""The objective interface: what the trainer and the sampler know of a diffusion formulation.

An objective has
- `loss(net, x0, text_tokens, text_mask, *, generator, **net_kwargs) -> [B]` per-sample training loss, all
  randomness drawn from `generator` (the trainer reseeds it from (seed, rank, nimg) for exact resume);
- `denoiser(net)`: a module `D(x, sigma, text_tokens, text_mask, **kw)` giving the x0 estimate in EDM's σ
  parametrisation (x = x0 + σ·n), so every sampler in `samplers.py` serves every formulation;
- `sampling_sigmas(steps, device)`: the decreasing σ schedule, ending in 0;
- `sigma_max`: the initial noise scale.
"""

from __future__ import annotations

from ..config import ObjectiveConfig
from .edm import EDMObjective


def build_objective(cfg: ObjectiveConfig):
    if cfg.kind == "edm":
        return EDMObjective(sigma_data=cfg.sigma_data, p_mean=cfg.p_mean, p_std=cfg.p_std, sigma_min=cfg.sigma_min,
                            sigma_max=cfg.sigma_max)
    raise ValueError(f"objective.kind={cfg.kind!r} has no implementation; valid: edm")
