"""The VP (ε) and rectified-flow objectives against closed forms on Gaussian data, the new samplers on their
schedules, and every objective × sampler end to end on a tiny world preset (CAD-I, self-conditioned)."""

from __future__ import annotations

import math

import pytest
import torch
from _gaussian import gaussian_problem, rel_error
from _memorise import Ident, memorisation_errors, ramp_images
from test_train import fake_store
from torch import nn

from microt2i import presets
from microt2i.cli import main
from microt2i.config import ConfigError, ObjectiveConfig, apply_overrides
from microt2i.diffusion import (
    FlowObjective,
    VPObjective,
    VPSchedule,
    build_objective,
    ddim,
    dpmpp_2m,
    euler,
    get_sampler,
    heun,
    karras_sigmas,
    sigma_to_logsnr,
)
from microt2i.models import build
from microt2i.diffusion.generate import generate
from microt2i.train.loop import train
from microt2i.train.state import load_latest

F64 = torch.float64
SCHEDULES = ["linear", "cosine", "sigmoid"]


class VPOracle(nn.Module):
    """ε_θ(x_t, γ) = E[ε | x_t] for x0 ~ N(μ, s²): √(1−γ)·(x_t − √γ·μ)/(γ·s² + 1 − γ)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x_t, gamma, tokens, mask):
        g = gamma.to(F64).view(-1, *[1] * (x_t.ndim - 1))
        return (1 - g).sqrt() * (x_t.to(F64) - g.sqrt() * self.mu) / (g * self.s**2 + 1 - g)


class FlowOracle(nn.Module):
    """v_θ(x_t, t) = E[ε − x0 | x_t] for x0 ~ N(μ, s²), x_t = (1−t)·x0 + t·ε."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x_t, t, tokens, mask):
        t = t.to(F64).view(-1, *[1] * (x_t.ndim - 1))
        var = (1 - t) ** 2 * self.s**2 + t**2
        r = x_t.to(F64) - (1 - t) * self.mu
        return t / var * r - (self.mu + (1 - t) * self.s**2 / var * r)


def _objective(kind, schedule="linear"):
    return build_objective(ObjectiveConfig(kind=kind, schedule=schedule))


# ---------------------------------------------------------------------------------------------------------------
# VP schedules and the VP ↔ σ conversion


@pytest.mark.parametrize("kind", SCHEDULES)
def test_vp_schedule_endpoints_inverse_and_sigma(kind):
    sch = VPSchedule(kind)
    t = torch.linspace(0, 1, 101, dtype=F64)
    g = sch.gamma(t)
    assert g[0].item() == pytest.approx(1.0, abs=1e-12) and g[-1].item() == pytest.approx(1e-9, abs=1e-12)
    assert bool((g[1:] < g[:-1]).all())  # strictly decreasing signal level
    inner = t[1:-1]
    torch.testing.assert_close(sch.t_of_gamma(sch.gamma(inner)), inner, rtol=0, atol=1e-9)
    torch.testing.assert_close(sch.t_of_sigma(sch.sigma(inner)), inner, rtol=0, atol=1e-9)
    sigma, gi = sch.sigma(inner), sch.gamma(inner)
    torch.testing.assert_close(sigma**2, (1 - gi) / gi)  # σ² = (1 − γ)/γ
    torch.testing.assert_close(1 / (1 + sigma**2), gi)  # and back: γ = 1/(1 + σ²)
    torch.testing.assert_close(sch.logsnr(inner), sigma_to_logsnr(sigma))  # λ = ln(γ/(1−γ)) = −2 ln σ


def test_vp_schedule_closed_forms():
    t = torch.tensor([0.1, 0.4, 0.75], dtype=F64)
    torch.testing.assert_close(VPSchedule("linear").gamma(t), 1 - t)  # CAD-I: γ = 1 − t
    torch.testing.assert_close(VPSchedule("linear").sigma(t), (t / (1 - t)).sqrt())
    torch.testing.assert_close(VPSchedule("cosine").gamma(t), torch.cos(t * math.pi / 2) ** 2)
    torch.testing.assert_close(VPSchedule("cosine", tau=2.0).gamma(t), torch.cos(t * math.pi / 2) ** 4)
    sig = torch.sigmoid
    ve, vs = sig(torch.tensor(3.0, dtype=F64)), sig(torch.tensor(-3.0, dtype=F64))
    torch.testing.assert_close(VPSchedule("sigmoid").gamma(t), (ve - sig(6 * t - 3)) / (ve - vs))
    # the paper's IA threshold τ = 400/1000 is γ = 0.6 under the linear schedule: σ = √(0.4/0.6)
    assert VPSchedule("linear").sigma(0.4).item() == pytest.approx(math.sqrt(0.4 / 0.6), rel=1e-12)
    with pytest.raises(ValueError, match="linear, cosine, sigmoid"):
        VPSchedule("quadratic")


@pytest.mark.parametrize("sigma", [0.01, 0.5, 2.0, 80.0])
def test_vp_denoiser_with_eps_oracle_is_the_exact_denoiser(sigma):
    mu, s, exact, _, _ = gaussian_problem(d=6)
    den = _objective("vp").denoiser(VPOracle(mu, s))
    x = torch.randn(5, 6, dtype=F64) * (1 + sigma)
    # the network sees float32 inputs; D = x − σ·ε̂ then carries σ·(float32 rounding of the unit-scale input)
    torch.testing.assert_close(den(x, sigma, None, None), exact(x, sigma), rtol=1e-6, atol=2e-7 * (1 + sigma))
    torch.testing.assert_close(den(x, 0.0, None, None), x)  # σ = 0: D(x) = x


@pytest.mark.parametrize("sigma", [0.01, 0.5, 2.0, 80.0])
def test_flow_denoiser_with_velocity_oracle_is_the_exact_denoiser(sigma):
    mu, s, exact, _, _ = gaussian_problem(d=6)
    den = _objective("flow").denoiser(FlowOracle(mu, s))
    x = torch.randn(5, 6, dtype=F64) * (1 + sigma)
    torch.testing.assert_close(den(x, sigma, None, None), exact(x, sigma), rtol=1e-6, atol=2e-7 * (1 + sigma))


# ---------------------------------------------------------------------------------------------------------------
# Losses and their noise-level distributions


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("sigma", [0.2, 1.0, 5.0])
def test_loss_expectation_for_the_exact_model(kind, sigma):
    # At a fixed σ the exact model's loss is the conditional variance of the target given x_t:
    # VP: Var(ε | x_t) = γs²/(γs² + 1 − γ); flow: Var(ε − x0 | x_t) = 1 + s² − (t − (1−t)s²)²/((1−t)²s² + t²).
    d, s_data = 64, 0.7
    mu, s = torch.full((d,), 0.3, dtype=F64), torch.full((d,), s_data, dtype=F64)
    g = torch.Generator().manual_seed(0)
    x0 = mu + s_data * torch.randn(4096, d, generator=g, dtype=F64)
    net = VPOracle(mu, s) if kind == "vp" else FlowOracle(mu, s)
    loss, sig = _objective(kind).loss(net, x0, None, None, generator=g, sigma=torch.full((4096,), sigma),
                                      return_sigma=True)
    assert torch.equal(sig, torch.full((4096,), sigma))
    if kind == "vp":
        gam = 1 / (1 + sigma**2)
        expected = gam * s_data**2 / (gam * s_data**2 + 1 - gam)
    else:
        t = sigma / (1 + sigma)
        expected = 1 + s_data**2 - (t - (1 - t) * s_data**2) ** 2 / ((1 - t) ** 2 * s_data**2 + t**2)
    assert abs(loss.mean().item() / expected - 1) < 0.02


def test_vp_training_sigma_distribution_linear():
    # t ~ U(0, 1), γ = 1 − t ⇒ σ² = t/(1 − t) ⇒ P(σ ≤ q) = q²/(1 + q²)
    sigma = _objective("vp").sample_sigma(40_000, torch.Generator().manual_seed(0))
    for q in (0.3, 1.0, 3.0):
        assert abs((sigma <= q).double().mean().item() - q**2 / (1 + q**2)) < 0.01


def test_flow_training_sigma_is_log_normal():
    # logit-normal t is log-normal σ = t/(1 − t): ln σ = logit t ~ N(m, s²)
    obj = build_objective(ObjectiveConfig(kind="flow", logit_mean=0.5, logit_std=0.8))
    ln_sigma = obj.sample_sigma(40_000, torch.Generator().manual_seed(0)).log()
    assert abs(ln_sigma.mean().item() - 0.5) < 0.02 and abs(ln_sigma.std().item() - 0.8) < 0.02


@pytest.mark.parametrize("kind", ["edm", "vp", "flow"])
def test_loss_is_deterministic_for_a_generator_and_honours_a_given_sigma(kind):
    mu, s, _, _, _ = gaussian_problem(d=4)
    net = {"vp": VPOracle(mu, s), "flow": FlowOracle(mu, s), "edm": lambda x, c, t, m: torch.tanh(x)}[kind]
    obj, x0 = _objective(kind), torch.randn(16, 4, dtype=F64)
    a, sa = obj.loss(net, x0, None, None, generator=torch.Generator().manual_seed(3), return_sigma=True)
    b, sb = obj.loss(net, x0, None, None, generator=torch.Generator().manual_seed(3), return_sigma=True)
    assert a.shape == (16,) and torch.equal(a, b) and torch.equal(sa, sb)
    # the drawn σ is sample_sigma's; passing it back reproduces the loss (noise is drawn after σ)
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(obj.sample_sigma(16, g), sa)
    c = obj.loss(net, x0, None, None, generator=g, sigma=sa)
    g2 = torch.Generator().manual_seed(3)
    obj.sample_sigma(16, g2)
    torch.testing.assert_close(c, obj.loss(net, x0, None, None, generator=g2, sigma=sa))


# ---------------------------------------------------------------------------------------------------------------
# Sampling schedules and samplers on them


@pytest.mark.parametrize("kind,schedule", [("vp", "linear"), ("vp", "cosine"), ("vp", "sigmoid"), ("flow", "linear")])
def test_sampling_sigmas(kind, schedule):
    obj = _objective(kind, schedule)
    sig = obj.sampling_sigmas(10)
    assert sig.shape == (11,) and sig.dtype == F64 and sig[-1].item() == 0.0
    assert sig[0].item() == pytest.approx(80.0, rel=1e-9)  # objective.sigma_max
    assert bool((sig[1:] < sig[:-1]).all())
    if kind == "vp" and schedule == "linear":  # uniform t from t_max: σ_i = √(t_i/(1 − t_i))
        t_max = 1 - 1 / (1 + 80.0**2)
        t = t_max * (1 - torch.arange(10, dtype=F64) / 10)
        torch.testing.assert_close(sig[:-1], (t / (1 - t)).sqrt())
    with pytest.raises(ValueError, match="steps >= 1"):
        obj.sampling_sigmas(0)


# Measured errors of the ODE endpoint (max relative), N = 16 → 256 steps, exact Gaussian denoiser:
#   karras σ: ddim 1.8e-1 → 1.2e-2 (order 1.0), dpmpp_2m 8.9e-2 → 2.3e-4 (order 2.1)
#   vp linear: ddim 2.7e-1 → 3.4e-2, dpmpp_2m 2.5e-1 → 1.9e-2 (uniform t puts its last σ at ≈ 1/√N: the final
#     jump to 0 is first order whatever the solver); vp cosine: ddim 1.3e-1 → 8.6e-3, dpmpp_2m 3.6e-2 → 8.7e-4;
#   vp sigmoid: ddim 1.6e-1 → 1.5e-2, dpmpp_2m 1.1e-1 → 5.5e-3; flow: ddim 1.1e-1 → 7.4e-3, dpmpp_2m 1.1e-2 → 4.9e-4
@pytest.mark.parametrize("kind,schedule,tol", [("vp", "linear", 0.04), ("vp", "cosine", 0.01), ("vp", "sigmoid", 0.02),
                                               ("flow", "linear", 0.01)])
@pytest.mark.parametrize("sampler", [ddim, dpmpp_2m])
def test_samplers_converge_to_the_closed_form_on_each_schedule(kind, schedule, tol, sampler):
    mu, s, den, xT, exact = gaussian_problem()
    obj = _objective(kind, schedule)
    errs = [rel_error(sampler(den, xT, obj.sampling_sigmas(n)), mu, exact) for n in (16, 64, 256)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < tol, errs


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("sampler", [ddim, dpmpp_2m, heun])
def test_oracle_models_sample_like_the_exact_denoiser(kind, sampler):
    mu, s, den, xT, exact = gaussian_problem(d=4, batch=8)
    obj = _objective(kind)
    model = (VPOracle if kind == "vp" else FlowOracle)(mu, s)
    sig = obj.sampling_sigmas(24)
    out = sampler(lambda x, sigma: obj.denoiser(model)(x, sigma, None, None), xT, sig)
    torch.testing.assert_close(out, sampler(den, xT, sig), rtol=1e-5, atol=1e-5)  # float32 network inputs


def test_flow_euler_in_t_is_samplers_euler_on_flow_sigmas():
    # Euler on dx_t/dt = v(x_t, t) from t_max to 0, in flow's own variables, lands where samplers.euler lands
    mu, s, den, xT, _ = gaussian_problem(d=4, batch=8)
    obj, model = _objective("flow"), FlowOracle(mu, s)
    sig = obj.sampling_sigmas(20)
    t = sig / (1 + sig)
    x_t = xT / (1 + sig[0])  # x_t = x/(1 + σ)
    for i in range(20):
        x_t = x_t + (t[i + 1] - t[i]) * model(x_t, t[i].expand(8), None, None)
    out = euler(lambda x, sigma: obj.denoiser(model)(x, sigma, None, None), xT, sig)
    torch.testing.assert_close(out, x_t, rtol=1e-5, atol=1e-6)  # the wrapper feeds the network float32


def test_ddim_eta_zero_is_euler_and_eta_one_samples_the_data():
    mu, s, den, xT, _ = gaussian_problem(d=8, batch=8000, seed=1)
    torch.testing.assert_close(ddim(den, xT, karras_sigmas(16)), euler(den, xT, karras_sigmas(16)), rtol=0, atol=0)
    # η = 1 (DDPM posterior noise) with the exact denoiser samples N(μ, s²) as steps grow; its bias is first order.
    # Measured max |std/s − 1| (20k samples): 0.17 (32 steps), 0.093 (64), 0.053 (128), 0.032 (256), 0.022 (512).
    errs = []
    for n in (32, 128):
        out = ddim(den, xT, karras_sigmas(n), eta=1.0, generator=torch.Generator().manual_seed(0))
        errs.append(((out.std(0) / s) - 1).abs().max().item())
        assert (out.mean(0) - mu).abs().max() < 0.07  # std of the mean ≤ 1.5/√8000 ≈ 0.017
    assert errs[0] > 1.8 * errs[1] and errs[1] < 0.09, errs  # sampling noise of the std here: ≈ 0.008
    again = ddim(den, xT, karras_sigmas(128), eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="eta"):
        ddim(den, xT, karras_sigmas(4), eta=1.5)


@pytest.mark.parametrize("name", ["euler", "heun", "ddim", "dpmpp_2m"])
def test_clamp_bounds_every_denoised_estimate(name):
    mu, s, den, xT, _ = gaussian_problem(d=4, batch=16)
    seen = []
    out = get_sampler(name)(lambda x, sigma: den(x, sigma) * 5, xT, karras_sigmas(6), clamp=0.5,
                            callback=lambda d: seen.append(d["denoised"]))
    assert all(d.abs().max() <= 0.5 for d in seen) and out.abs().max() <= 0.5 + 1e-12
    with pytest.raises(ValueError, match="clamp"):
        get_sampler(name)(den, xT, karras_sigmas(3), clamp=-1.0)


# ---------------------------------------------------------------------------------------------------------------
# End to end: every objective trains CAD-I (self-conditioned, LAMB) and every sampler draws from it


def _cad_cfg(*extra):
    return apply_overrides(presets.get("world-cad-tiny"), [
        "model.text_dim=16", "model.latent_dim=32", "model.data_dim=16", "model.num_blocks=1",
        "train.total_nimg=48", "train.batch_size=8", "train.micro_batch=4", "train.log_every_nimg=8",
        "train.ckpt_every_nimg=1000", "train.warmup_nimg=16", "eval.steps=3", *extra])


@pytest.mark.parametrize("kind", ["vp", "edm", "flow"])
def test_every_objective_trains_cad_i_and_every_sampler_draws(kind, tmp_path):
    store = fake_store()
    cfg = _cad_cfg(f"objective.kind={kind}", "train.total_nimg=16")
    out = train(cfg, tmp_path, store=store, progress=False, log=lambda *_: None)
    assert out["finished"] and out["nimg"] == 16
    torch.manual_seed(cfg.train.seed)  # the trainer's initialisation
    init, trained = build(cfg.model).state_dict(), load_latest(tmp_path)["model"]
    assert all(not torch.equal(init[k], trained[k]) for k in ("out.weight", "latents", "blocks.0.read.attn.proj.weight"))
    null_t, null_m = store.null_text(cfg.objective.uncond)
    for name in ("euler", "heun", "ddim", "dpmpp_2m"):
        imgs = generate(out["ema"], cfg, store.text_tokens[:3].float(), store.text_mask[:3], null_t, null_m,
                        codec=Ident(), sampler=name, cfg_scale=2.0)
        assert imgs.shape == (3, 16, 16, 3) and imgs.dtype.name == "uint8"


def test_dit_i_trains_under_vp_and_flow(tmp_path):
    store = fake_store()
    for kind in ("vp", "flow"):
        cfg = apply_overrides(presets.get("world-tiny"), [
            "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1",
            "train.total_nimg=16", "train.batch_size=8", f"objective.kind={kind}", "eval.steps=2"])
        out = train(cfg, tmp_path / kind, store=store, progress=False, log=lambda *_: None)
        imgs = generate(out["ema"], cfg, store.text_tokens[:2].float(), store.text_mask[:2],
                        *store.null_text("zero"), codec=Ident(), sampler="dpmpp_2m")
        assert imgs.shape == (2, 16, 16, 3)


def test_cad_i_resume_is_bit_exact(tmp_path):
    """The self-conditioning keep decision comes from the per-step generator: N steps == N/2 + resume + N/2."""
    cfg, store = _cad_cfg("train.total_nimg=32"), fake_store()
    train(cfg, tmp_path / "a", store=store, progress=False, log=lambda *_: None)
    train(cfg, tmp_path / "b", store=store, progress=False, log=lambda *_: None, stop_nimg=16)
    train(cfg, tmp_path / "b", store=store, progress=False, log=lambda *_: None)
    a, b = load_latest(tmp_path / "a"), load_latest(tmp_path / "b")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    for i, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k]))


def test_self_conditioning_rate_changes_training(tmp_path):
    # The feedback path's output LayerNorm gain starts at 0; it can only learn from non-zero previous latents.
    store = fake_store()
    for rate in (0.0, 0.9):
        train(_cad_cfg(f"model.self_cond_rate={rate}", "train.total_nimg=16"), tmp_path / str(rate), store=store,
              progress=False, log=lambda *_: None)
    w0, w9 = (load_latest(tmp_path / str(r))["model"]["prev_out_norm.weight"] for r in (0.0, 0.9))
    assert torch.equal(w0, torch.zeros_like(w0)) and w9.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# Config and CLI


def test_objective_config_errors():
    with pytest.raises(ConfigError, match="edm, vp, flow"):
        apply_overrides(presets.get("world-tiny"), ["objective.kind=ddpm"])
    with pytest.raises(ConfigError, match="linear, cosine, sigmoid"):
        apply_overrides(presets.get("world-tiny"), ["objective.schedule=quadratic"])
    with pytest.raises(ConfigError, match="eval.eta"):
        apply_overrides(presets.get("world-tiny"), ["eval.eta=2"])
    assert isinstance(_objective("vp"), VPObjective) and isinstance(_objective("flow"), FlowObjective)


def test_cli_model_and_objective_switches(capsys):
    assert main(["train", "world-s", "--model", "cad-i", "--objective", "flow", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "name: world-cad-s" in out and "family: cad-i" in out and "kind: flow" in out
    assert main(["train", "world-cad-tiny", "--model", "dit-i", "--dry-run"]) == 0
    assert "name: world-tiny" in capsys.readouterr().out
    assert main(["train", "cad-i-256", "--model", "cad-i", "--dry-run"]) == 2
    assert "paper preset" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind,sampler", [("edm", "heun"), ("flow", "dpmpp_2m")])
def test_cad_i_memorises_four_captioned_images(kind, sampler, tmp_path):
    """Four smooth images with distinct captions: after training, each caption's sample is its own image.

    (Not VP: an ε-model's x̂0 = x − σ·ε̂ multiplies its error by σ, and 500 steps leave ε̂ far from the ≪ 1/σ
    precision sampling from σ = 80 needs.)

    The four images differ only in where their ramps go up (every channel has mean 0), so at high σ, where the
    noisy input says nothing, the network needs the caption *and* each patch's position. CAD's learned
    positions start at trunc-normal(0.02) and are added after a LayerNorm of unit-scale patch tokens: the data
    tokens are position-blind until AdamW has grown them to O(1), far more than this test's budget (measured:
    std 0.05 after 200 steps at lr 3e-3, 0.19 after 600; the denoiser then predicts the mean at σ = 10 and
    every sample is ~95/255 from every image). So the test uses `model.pos_init=sincos` (the world presets'
    choice): the learned table starts from DiT's 2-D sin-cos positions."""
    store = fake_store(n=4, res=8, seed=1)
    store.latents = ramp_images()
    cfg = _cad_cfg(f"objective.kind={kind}", "data.resolution=8", "model.input_size=8", "model.patch_size=2",
                   "model.latent_dim=64", "model.data_dim=32", "model.pos_init=sincos", "train.optimizer=adamw",
                   "train.weight_decay=0", "train.total_nimg=8000", "train.batch_size=16", "train.micro_batch=0", "train.lr=3e-3",
                   "train.warmup_nimg=160", "train.ema_decay=0.95", "objective.cond_drop=0.0",
                   "train.log_every_nimg=800", f"eval.sampler={sampler}", "eval.steps=16", "eval.cfg_scale=1.0")
    out = train(cfg, tmp_path, store=store, progress=False, log=lambda *_: None)
    err = memorisation_errors(out["ema"], cfg, store, "empty")
    assert (err.argmin(1) == range(4)).all(), err
    assert err.diagonal().max() < 30, err
