"""diffusers schedulers on an export (schedulers.py): the equivalent ones step exactly like our σ-space samplers
(closed-form denoiser, every objective), a swapped `pipe.scheduler` gives `microt2i sample`'s image, the rest refuse."""
import dataclasses

import diffusers
import numpy as np
import pytest
import torch

from microt2i import presets
from microt2i.config import ConfigError, ObjectiveConfig, apply_overrides
from microt2i.diffusion.objectives import build_objective
from microt2i.diffusion.samplers import SAMPLERS
from microt2i.schedulers import equivalent, make_scheduler, run_scheduler
from microt2i.train.loop import train

PROMPTS = ["A big red star in the middle on a plain grey background.", "A small blue ring at the left."]


def _denoise(x, s):  # a smooth nonlinear D(x; σ): Gaussian-data posterior mean plus a bend
    s = torch.as_tensor(s, dtype=torch.float64)
    return x * 0.25 / (s ** 2 + 0.25) + 0.3 * torch.tanh(x) * s / (1 + s)


def _setup(kind, steps=6):
    oc = ObjectiveConfig(kind=kind)
    sig = build_objective(oc).sampling_sigmas(steps)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sig[0]
    return dataclasses.asdict(oc), sig, x


@pytest.mark.parametrize("kind, sampler, cls", [
    ("edm", "euler", "EDMEulerScheduler"), ("edm", "ddim", "EDMEulerScheduler"),
    ("edm", "dpmpp_2m", "EDMDPMSolverMultistepScheduler"), ("vp", "euler", "EulerDiscreteScheduler"),
    ("flow", "euler", "FlowMatchEulerDiscreteScheduler")])
def test_equivalent_scheduler_steps_like_our_sampler(kind, sampler, cls):
    obj, sig, x = _setup(kind)
    sch = make_scheduler(obj, sampler)
    assert type(sch).__name__ == cls == equivalent(obj, sampler)[0]
    ref = SAMPLERS[sampler](_denoise, x, sig)
    assert torch.allclose(run_scheduler(sch, _denoise, x, sig), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["edm", "vp", "flow"])
@pytest.mark.parametrize("cls", ["EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_swapped_euler_schedulers_serve_every_objective(kind, cls):
    obj, sig, x = _setup(kind)
    sch = getattr(diffusers, cls).from_config(make_scheduler(obj, "euler").config)
    assert torch.allclose(run_scheduler(sch, _denoise, x, sig), SAMPLERS["euler"](_denoise, x, sig), atol=1e-5)


def test_no_equivalent_is_one_clear_error():
    obj, sig, x = _setup("edm")
    for sampler, kind in (("heun", "edm"), ("dpmpp_2m", "vp"), ("dpmpp_2m", "flow")):
        with pytest.raises(ConfigError, match=f"sampler '{sampler}' on a {kind} run has no exact diffusers scheduler"):
            make_scheduler(_setup(kind)[0], sampler)
    with pytest.raises(ConfigError, match="pipe.scheduler=DDPMScheduler has no exact equivalent"):
        run_scheduler(diffusers.DDPMScheduler(), _denoise, x, sig)
    with pytest.raises(ConfigError, match="builds the σ grid"):  # another ρ: a different grid is refused
        run_scheduler(diffusers.EDMEulerScheduler(rho=3.0), _denoise, x, sig)
    obj, sig, x = _setup("flow")
    with pytest.raises(ConfigError, match="shift=1"):
        run_scheduler(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), _denoise, x, sig)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from microt2i.export import export_run

    root = tmp_path_factory.mktemp("sched")
    cfg = apply_overrides(presets.get("world-tiny"), [
        "data.num_images=32", f"data.cache_dir={root / 'cache'}", "train.total_nimg=64", "train.lr=3e-3",
        "train.threads=1", "eval.steps=3", "eval.every_nimg=0"])
    train(cfg, root / "run", progress=False, log=lambda *a: None)
    return root / "run", export_run(root / "run", root / "export", grid=False, log=lambda *a: None)


@pytest.mark.parametrize("cls, sampler", [("EDMEulerScheduler", "euler"),
                                          ("EDMDPMSolverMultistepScheduler", "dpmpp_2m")])
def test_swapped_pipe_scheduler_gives_microt2i_samples_image(exported, cls, sampler):
    from diffusers import DiffusionPipeline

    from microt2i.sample import Source

    run, folder = exported
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe.scheduler).__name__ == "EDMEulerScheduler"  # the export's (its heun has no equivalent)
    ref, _ = Source(run=run)(PROMPTS, sampler=sampler, steps=5, seed=3, cfg_scale=2.0)  # = `microt2i sample`
    own = pipe(PROMPTS, seed=3, num_inference_steps=5, guidance_scale=2.0, output_type="np").images
    assert not np.array_equal(own, ref)  # the export's own scheduler leaves the run's heun in charge
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)
    got = pipe(PROMPTS, seed=3, num_inference_steps=5, guidance_scale=2.0, output_type="np").images
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float tolerance, then uint8 rounding
    pipe.scheduler = diffusers.DDPMScheduler()
    with pytest.raises(ConfigError, match="no exact equivalent"):
        pipe(PROMPTS, seed=3, num_inference_steps=5, output_type="np")
