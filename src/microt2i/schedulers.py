"""Our σ-space samplers as diffusers schedulers, so `pipe.scheduler = SomeScheduler.from_config(...)` works on an export.

Every microt2i objective is sampled in EDM's σ-space (x = x0 + σ·ε, `diffusion/samplers.py`); a diffusers scheduler
steps its own parameterisation. `run_scheduler` drives one with our denoiser D(x; σ) (CFG included): at each of its
steps it reads the scheduler's σ, evaluates D on our x, hands the scheduler the model output that makes *its*
x̂0 equal D, and maps the sample between spaces. The step rules that are exactly ours (tested, to float tolerance):

| ours | diffusers (0.42) | note |
|---|---|---|
| `euler` (= `ddim`, η = 0) | `EDMEulerScheduler` (EDM runs: Karras grid from its config), `EulerDiscreteScheduler` (any run: our σ grid handed over, `set_timesteps(sigmas=…)`) | |
| `euler` on a flow run | `FlowMatchEulerDiscreteScheduler` (shift 1) | Euler in t = σ/(1+σ) is the same step; grid handed over |
| `dpmpp_2m` (EDM runs) | `EDMDPMSolverMultistepScheduler` (2nd order, dpmsolver++) | grid from its config: Karras ρ, σ_min, σ_max |

No exact equivalent: `heun` (`HeunDiscreteScheduler` takes its Karras σ range from DDPM betas, not σ_min / σ_max, and
no σ list), DPM-Solver++ on VP / flow runs (`DPMSolverMultistepScheduler` builds its grid from betas), DDPM / PNDM /
LMS / ancestral samplers. Those raise one clear error; any scheduler whose σ grid differs from the model's (e.g.
another ρ or σ_max, a flow shift ≠ 1) is refused rather than run silently differently.
"""

from __future__ import annotations

import torch

from .config import ConfigError

SUPPORTED = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler", "EulerDiscreteScheduler",
             "FlowMatchEulerDiscreteScheduler")


def equivalent(objective: dict, sampler: str) -> tuple[str, dict] | None:
    """(diffusers scheduler class name, config) that steps exactly like our `sampler` on this objective, or None."""
    kind = objective.get("kind", "edm")
    edm = {"sigma_min": objective.get("sigma_min", 0.002), "sigma_max": objective.get("sigma_max", 80.0),
           "sigma_data": objective.get("sigma_data", 0.5), "sigma_schedule": "karras", "rho": 7.0,
           "prediction_type": "epsilon", "final_sigmas_type": "zero"}
    if sampler in ("euler", "ddim"):
        if kind == "flow":
            return "FlowMatchEulerDiscreteScheduler", {"shift": 1.0, "use_dynamic_shifting": False}
        if kind == "vp":  # its σ grid is not Karras: handed over as a list, which EDMEulerScheduler cannot take
            return "EulerDiscreteScheduler", {"prediction_type": "epsilon", "final_sigmas_type": "zero",
                                              "timestep_type": "discrete"}
        return "EDMEulerScheduler", edm
    if sampler == "dpmpp_2m" and kind == "edm":
        return "EDMDPMSolverMultistepScheduler", edm | {"solver_order": 2, "algorithm_type": "dpmsolver++",
                                                        "solver_type": "midpoint"}
    return None


def make_scheduler(objective: dict, sampler: str, *, strict: bool = True):
    """The diffusers scheduler equivalent to `sampler`; with strict=False the Euler equivalent when none exists
    (what an export stores, so `SomeScheduler.from_config(pipe.scheduler.config)` has a config to start from)."""
    import diffusers  # app layer: the export format

    found = equivalent(objective, sampler) or (None if strict else equivalent(objective, "euler"))
    if found is None:
        raise ConfigError(f"sampler {sampler!r} on a {objective.get('kind')} run has no exact diffusers scheduler "
                          f"(see microt2i.schedulers); use euler, ddim or (EDM runs) dpmpp_2m")
    name, kw = found
    return getattr(diffusers, name)(**kw)


def _check(scheduler) -> str:
    name = type(scheduler).__name__
    if name not in SUPPORTED:
        raise ConfigError(f"pipe.scheduler={name} has no exact equivalent among microt2i's σ-space samplers; use one "
                          f"of {', '.join(SUPPORTED)} (or pass sampler= to use ours)")
    pred = scheduler.config.get("prediction_type", "epsilon")
    if name == "EulerDiscreteScheduler" and pred != "epsilon":
        raise ConfigError(f"pipe.scheduler=EulerDiscreteScheduler with prediction_type={pred!r}: set "
                          f"prediction_type='epsilon' (the pipeline converts D(x; σ) to ε)")
    if name == "EulerDiscreteScheduler" and scheduler.config.get("timestep_type", "discrete") != "discrete":
        raise ConfigError("pipe.scheduler=EulerDiscreteScheduler needs timestep_type='discrete'")
    return name


def _our_sigmas(name: str, scheduler) -> torch.Tensor:
    """The scheduler's σ grid after set_timesteps, in our σ-space (float64)."""
    s = scheduler.sigmas.detach().to(torch.float64).cpu()
    if name == "FlowMatchEulerDiscreteScheduler":
        return s / (1 - s)  # t → σ = t/(1−t); t = 1 gives inf
    return s


def set_grid(scheduler, sigmas: torch.Tensor) -> str:
    """set_timesteps for our grid `sigmas` (n+1 values ending in 0): handed over where the scheduler takes a σ list,
    else checked against what its config builds. A mismatch is one clear error."""
    name = _check(scheduler)
    sig = sigmas.detach().to(torch.float64).cpu()
    n = len(sig) - 1
    if name == "FlowMatchEulerDiscreteScheduler":  # takes a list of t = σ/(1+σ)
        scheduler.set_timesteps(n, sigmas=(sig[:-1] / (1 + sig[:-1])).tolist())
    elif name == "EulerDiscreteScheduler":  # takes a list of σ
        scheduler.set_timesteps(sigmas=sig.tolist())  # n+1 values, the final 0 included
    else:  # EDM schedulers build Karras grids from their config (EDMEulerScheduler's `sigmas` is the ramp)
        scheduler.set_timesteps(n)
    got = _our_sigmas(name, scheduler)
    if len(got) != len(sig) or not torch.allclose(got, sig, rtol=1e-4, atol=1e-6):
        raise ConfigError(f"pipe.scheduler={name} builds the σ grid {[round(float(v), 4) for v in got[:3]]}… for {n} "
                          f"steps; this model samples on {[round(float(v), 4) for v in sig[:3]]}… (set sigma_min, "
                          f"sigma_max, rho=7 and shift=1 to the export's scheduler config)")
    return name


def run_scheduler(scheduler, denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """Sample with a diffusers `scheduler` from our initial noise `x` (σ-space, σ = sigmas[0]) and our denoiser
    `denoise(x, σ) -> D` (float64 state, as our samplers keep it); returns x0 in σ-space."""
    name = set_grid(scheduler, sigmas)
    flow = name == "FlowMatchEulerDiscreteScheduler"
    x = x.to(torch.float64)
    sample = x / (1 + sigmas[0].to(torch.float64)) if flow else x  # flow: x_t = x/(1+σ) = (1−t)·x
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if scheduler.step_index is None:
            scheduler._init_step_index(t)
        if hasattr(scheduler, "scale_model_input"):  # only marks the step as scaled: we feed D our own inputs
            scheduler.scale_model_input(sample, t)
        s = float(scheduler.sigmas[scheduler.step_index])
        if flow:
            tt = s
            sigma = torch.tensor(tt / (1 - tt), dtype=torch.float64)
            d = denoise(sample * (1 + sigma), sigma).to(torch.float64)
            out = (sample - d) / tt  # velocity: D = x_t − t·v
        else:
            sigma = torch.tensor(s, dtype=torch.float64)
            d = denoise(sample, sigma).to(torch.float64)
            if name.startswith("EDM"):  # model output whose preconditioned x̂0 = c_skip·x + c_out·F is D
                zero = torch.zeros_like(sample)
                c_skip_x = scheduler.precondition_outputs(sample, zero, sigma)
                c_out = scheduler.precondition_outputs(zero, torch.ones_like(sample), sigma)
                out = (d - c_skip_x) / c_out
            else:  # epsilon: x̂0 = x − σ·ε
                out = (sample - d) / sigma
        if callback is not None:
            callback(dict(i=i, x=sample, sigma=sigma, denoised=d))
        sample = scheduler.step(out, t, sample, return_dict=False)[0].to(torch.float64)
    return sample  # σ = 0: x0 in every space
