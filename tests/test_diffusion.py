"""diffusion/: EDM preconditioning and loss, samplers, CFG and noise helpers, checked against closed forms.

The reference problem (`_gaussian.py`, shared with test_objectives.py) is Gaussian data x0 ~ N(μ, s²) per
dimension, whose exact denoiser is D(x; σ) = μ + s²/(s²+σ²)·(x − μ) and whose probability-flow ODE from σ_max to 0 has the solution
x0 = μ + (x − μ)·s/√(s² + σ_max²).
"""

import math

import pytest
import torch
from _gaussian import gaussian_problem, rel_error
from torch import nn

from microt2i.diffusion import (
    SAMPLERS,
    EDMLoss,
    EDMPrecond,
    alpha_bar_to_sigma,
    cfg,
    cfg_denoiser,
    ddim,
    dpmpp_2m,
    edm_coefficients,
    euler,
    get_sampler,
    heun,
    karras_sigmas,
    logsnr_to_sigma,
    sigma_to_alpha_bar,
    sigma_to_logsnr,
)
from microt2i.augment.cutmix import paper_tau_to_sigma
from microt2i.encoders.text import null_text

F64 = torch.float64
SIGMAS = torch.tensor([0.002, 0.05, 0.3, 0.9, 1.0, 4.0, 80.0], dtype=F64)


class GaussianOracle(nn.Module):
    """A backbone whose output makes EDMPrecond the exact denoiser of N(μ, s²) data (Table 1 written out here)."""

    def __init__(self, mu, s, sigma_data):
        super().__init__()
        self.mu, self.s, self.sd = mu, s, sigma_data

    def forward(self, x_in, c_noise, text_tokens, text_mask):
        sigma = (4 * c_noise).exp().view(-1, *[1] * (x_in.ndim - 1))
        x = x_in * (sigma**2 + self.sd**2).sqrt()  # undo c_in
        D = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        c_skip = self.sd**2 / (sigma**2 + self.sd**2)
        c_out = sigma * self.sd / (sigma**2 + self.sd**2).sqrt()
        return (D - c_skip * x) / c_out


def text(b=2, length=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, length, c, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return tokens, mask


# ---------------------------------------------------------------------------------------------------------------
# EDM preconditioning and loss


@pytest.mark.parametrize("sd", [0.5, 0.9])
def test_edm_coefficients_identities(sd):
    c_skip, c_out, c_in, c_noise = edm_coefficients(SIGMAS, sd)
    s2 = SIGMAS**2
    torch.testing.assert_close(c_in**2 * (s2 + sd**2), torch.ones_like(SIGMAS))  # unit-variance input
    torch.testing.assert_close(c_skip, sd**2 * c_in**2)
    torch.testing.assert_close(c_out**2, s2 * sd**2 * c_in**2)
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)
    # Effective target of F, (x0 − c_skip·(x0 + σn))/c_out, has unit variance for data of std σ_data (EDM B.6).
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * s2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(SIGMAS))
    # Loss weight λ(σ) = (σ² + σd²)/(σ·σd)² undoes c_out²: the effective F loss has weight 1 (EDM eq. 8).
    lam = (s2 + sd**2) / (SIGMAS * sd) ** 2
    torch.testing.assert_close(lam * c_out**2, torch.ones_like(SIGMAS))


def test_precond_feeds_net_scaled_input_and_noise_cond():
    seen = {}

    def net(x_in, c_noise, tokens, mask, **kw):
        seen.update(x_in=x_in, c_noise=c_noise, kw=kw)
        return torch.zeros_like(x_in)

    x = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    D = EDMPrecond(net, sigma_data=0.9)(x, sigma, *text(3), crop_tokens="c")
    ref = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x_in"], x / (ref**2 + 0.81).sqrt())
    torch.testing.assert_close(seen["c_noise"], sigma.log() / 4)
    assert seen["kw"] == {"crop_tokens": "c"}
    torch.testing.assert_close(D, 0.81 / (ref**2 + 0.81) * x)  # F = 0 leaves the skip path


def test_precond_scalar_sigma_dtype_and_small_sigma():
    net = lambda x_in, c_noise, tokens, mask: torch.tanh(x_in) + c_noise.view(-1, 1, 1, 1)  # noqa: E731
    pre = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(4, 3, 2, 2)
    tt = text(4)
    torch.testing.assert_close(pre(x, 0.7, *tt), pre(x, torch.full((4,), 0.7), *tt))
    torch.testing.assert_close(pre(x, torch.tensor(0.7), *tt), pre(x, torch.full((4,), 0.7), *tt))
    assert pre(x.to(torch.bfloat16), 0.7, *tt).dtype == torch.bfloat16
    assert pre(x.to(F64), 0.7, *tt).dtype == F64
    torch.testing.assert_close(pre(x, 1e-6, *tt), x, atol=2e-5, rtol=0)  # σ → 0: D(x) = x


def test_precond_with_oracle_is_exact_gaussian_denoiser():
    mu, s, exact, _, _ = gaussian_problem(d=6)
    pre = EDMPrecond(GaussianOracle(mu.float(), s.float(), 0.5), sigma_data=0.5)
    x = torch.randn(5, 6) * 3
    for sigma in (0.01, 0.5, 2.0, 80.0):
        torch.testing.assert_close(pre(x, sigma, *text(5)), exact(x.to(F64), sigma).float(), rtol=1e-4, atol=1e-4)


def test_edm_loss_is_deterministic_for_a_generator():
    mu, s, _, _, _ = gaussian_problem(d=4)
    pre = EDMPrecond(GaussianOracle(mu.float(), s.float(), 0.9), sigma_data=0.9)
    loss_fn = EDMLoss(p_mean=-0.6, p_std=1.2, sigma_data=0.9)
    x0 = torch.randn(16, 4)
    a, sa = loss_fn(pre, x0, *text(16), generator=torch.Generator().manual_seed(3), return_sigma=True)
    b, sb = loss_fn(pre, x0, *text(16), generator=torch.Generator().manual_seed(3), return_sigma=True)
    c = loss_fn(pre, x0, *text(16), generator=torch.Generator().manual_seed(4))
    assert a.shape == (16,) and sa.shape == (16,)
    assert torch.equal(a, b) and torch.equal(sa, sb)
    assert not torch.equal(a, c)


def test_edm_loss_sigma_is_log_normal():
    loss_fn = EDMLoss(p_mean=-0.6, p_std=1.2, sigma_data=0.9)
    pre = EDMPrecond(lambda x, c, t, m: torch.zeros_like(x), sigma_data=0.9)
    x0 = torch.zeros(20000, 1)
    _, sigma = loss_fn(pre, x0, None, None, generator=torch.Generator().manual_seed(0), return_sigma=True)
    assert abs(sigma.log().mean().item() + 0.6) < 0.03
    assert abs(sigma.log().std().item() - 1.2) < 0.03


@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0, 20.0])
@pytest.mark.parametrize("s_data", [0.5, 1.3])
def test_edm_loss_expectation_for_exact_denoiser(sigma, s_data):
    # At fixed σ (P_std = 0), D − x0 = (k−1)(x0−μ) + k·σn with k = s²/(s²+σ²), so
    # E[λ(σ)(D − x0)²] = λ(σ)·σ²s²/(σ²+s²); it is exactly 1 when the data std s equals σ_data.
    sd = 0.5
    mu = torch.full((64,), 0.3)
    pre = EDMPrecond(GaussianOracle(mu, torch.full((64,), s_data), sd), sigma_data=sd)
    loss_fn = EDMLoss(p_mean=math.log(sigma), p_std=0.0, sigma_data=sd)
    g = torch.Generator().manual_seed(1)
    x0 = mu + s_data * torch.randn(4096, 64, generator=g)
    loss, sig = loss_fn(pre, x0, None, None, generator=g, return_sigma=True)
    torch.testing.assert_close(sig, torch.full_like(sig, sigma))
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    expected = lam * sigma**2 * s_data**2 / (sigma**2 + s_data**2)
    assert abs(loss.mean().item() / expected - 1) < 0.02
    if s_data == sd:
        assert expected == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# Schedule and samplers


def test_karras_sigmas():
    n, smin, smax, rho = 30, 0.002, 80.0, 7.0
    sig = karras_sigmas(n, smin, smax, rho)
    assert sig.shape == (n + 1,) and sig.dtype == F64
    assert sig[0].item() == pytest.approx(smax, rel=1e-12)
    assert sig[n - 1].item() == pytest.approx(smin, rel=1e-12)
    assert sig[n].item() == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    # EDM eq. 5: σ_i^(1/ρ) is linear in i.
    torch.testing.assert_close(sig[:n] ** (1 / rho), torch.linspace(smax ** (1 / rho), smin ** (1 / rho), n, dtype=F64))
    i = 11
    ref = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    assert sig[i].item() == pytest.approx(ref, rel=1e-12)
    torch.testing.assert_close(karras_sigmas(1), torch.tensor([80.0, 0.0], dtype=F64))
    with pytest.raises(ValueError):
        karras_sigmas(0)


def test_heun_matches_gaussian_ode_solution():
    mu, s, den, xT, exact = gaussian_problem()
    assert rel_error(heun(den, xT, karras_sigmas(50)), mu, exact) < 1e-2
    assert rel_error(heun(den, xT, karras_sigmas(200)), mu, exact) < 1e-3
    assert rel_error(euler(den, xT, karras_sigmas(50)), mu, exact) > 3e-2  # 1st order is visibly worse


@pytest.mark.parametrize("sampler,order", [(heun, 2.0), (euler, 1.0), (ddim, 1.0), (dpmpp_2m, 2.0)])
def test_convergence_order(sampler, order):
    mu, s, den, xT, exact = gaussian_problem()
    errs = [rel_error(sampler(den, xT, karras_sigmas(n)), mu, exact) for n in (32, 64, 128)]
    # measured: heun 2.11, 2.07; euler = ddim 0.99, 0.99; dpmpp_2m 2.17, 2.10 (errors 2.0e-2 → 1.0e-3)
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(o - order) < 0.2 for o in orders), orders  # 1st vs 2nd order: a whole unit apart


@pytest.mark.parametrize("name,nfe", [("heun", 2 * 7 - 1), ("euler", 7), ("ddim", 7), ("dpmpp_2m", 7)])
def test_sampler_calls_and_callback(name, nfe):
    calls, seen = [], []

    def den(x, sigma):
        assert sigma.ndim == 0 and x.dtype == F64
        calls.append(sigma.item())
        return torch.zeros_like(x)

    sig = karras_sigmas(7)
    x = torch.randn(2, 3) * 80
    out = get_sampler(name)(den, x, sig.float(), callback=lambda d: seen.append(d))
    assert len(calls) == nfe and out.dtype == torch.float32
    assert [d["i"] for d in seen] == list(range(7))
    torch.testing.assert_close(torch.stack([d["sigma"] for d in seen]), sig[:-1].to(F64), rtol=1e-6, atol=0)
    assert set(seen[0]) == {"i", "x", "sigma", "denoised"}
    torch.testing.assert_close(out, torch.zeros_like(out))  # D = 0 everywhere: last step lands on 0


def test_get_sampler_registry():
    assert SAMPLERS == {"euler": euler, "heun": heun, "ddim": ddim, "dpmpp_2m": dpmpp_2m}
    with pytest.raises(ValueError, match="ddim, dpmpp_2m, euler, heun"):
        get_sampler("dpm++")


def test_heun_with_precond_oracle_and_cfg_scale_one():
    mu, s, den, xT, exact = gaussian_problem(d=4, batch=8)
    pre = EDMPrecond(GaussianOracle(mu.float(), s.float(), 0.9), sigma_data=0.9)
    tokens, mask = text(8)
    denoise = cfg_denoiser(pre, tokens, mask, *null_text("zero", tokens[:1], mask[:1]), scale=1.0)
    out = heun(denoise, xT.float(), karras_sigmas(30))
    torch.testing.assert_close(out, heun(den, xT, karras_sigmas(30)).float(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Classifier-free guidance


def test_cfg_tensor_algebra():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    torch.testing.assert_close(cfg(c, u, 1.0), c)
    torch.testing.assert_close(cfg(c, u, 0.0), u)
    torch.testing.assert_close((cfg(c, u, 2.0) + cfg(c, u, 5.0)) / 2, cfg(c, u, 3.5))  # affine in scale
    w = 2.0  # CAD's weight: cond + w·(cond − uncond) is scale = 1 + w
    torch.testing.assert_close(cfg(c, u, 1 + w), c + w * (c - u))


def test_cfg_on_denoisers():
    calls = []
    dc = lambda x, sigma: calls.append("c") or x * 2 + sigma  # noqa: E731
    du = lambda x, sigma: calls.append("u") or x - sigma  # noqa: E731
    x, sigma = torch.randn(3, 2), torch.tensor(0.5)
    torch.testing.assert_close(cfg(dc, du, 3.0)(x, sigma), cfg(dc(x, sigma), du(x, sigma), 3.0))
    calls.clear()
    torch.testing.assert_close(cfg(dc, du, 1.0)(x, sigma), dc(x, sigma))
    assert "u" not in calls


class TextNet(nn.Module):
    """A backbone that depends on text, σ and a per-sample kwarg; it records the batch sizes it sees."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x_in, c_noise, tokens, mask, crop=None):
        self.batches.append(x_in.shape[0])
        w = (tokens * mask[..., None]).sum((1, 2)).view(-1, 1, 1, 1)
        return 0.1 * w * x_in + c_noise.view(-1, 1, 1, 1) + crop.view(-1, 1, 1, 1)


@pytest.mark.parametrize("mode", ["zero", "empty"])
def test_cfg_denoiser_doubled_batch_equals_separate_calls(mode):
    net = TextNet()
    pre = EDMPrecond(net, sigma_data=0.5)
    tokens, mask = text(3)
    empty_t, empty_m = torch.randn(1, 5, 3), torch.ones(1, 5, dtype=torch.bool)
    ut, um = null_text(mode, empty_t, empty_m)
    crop = torch.tensor([1.0, 2.0, 3.0])
    x, sigma = torch.randn(3, 2, 4, 4, dtype=F64), torch.tensor(1.3, dtype=F64)
    uncond_in = (empty_t, empty_m) if mode == "empty" else (ut, um)  # batch-1 uncond is broadcast
    out = cfg_denoiser(pre, tokens, mask, *uncond_in, scale=4.0, crop=crop)(x, sigma)
    assert net.batches == [6]
    ref = cfg(pre(x, sigma, tokens, mask, crop=crop), pre(x, sigma, ut, um, crop=crop), 4.0)
    torch.testing.assert_close(out, ref)
    net.batches.clear()
    out1 = cfg_denoiser(pre, tokens, mask, ut, um, scale=1.0, crop=crop)(x, sigma)
    assert net.batches == [3]
    torch.testing.assert_close(out1, pre(x, sigma, tokens, mask, crop=crop))


def test_null_text():
    tokens, mask = text(4)
    zt, zm = null_text("zero", tokens[0], mask[0])
    assert zt.shape == (1, *tokens.shape[1:]) and zt.abs().sum() == 0
    assert zm.tolist() == [[True] + [False] * (mask.shape[1] - 1)]  # one visible slot, whatever the caption length
    et, em = null_text("empty", torch.ones(5, 3), torch.ones(5, dtype=torch.bool))
    assert et.shape == (1, 5, 3) and em.shape == (1, 5) and bool(em.all())
    with pytest.raises(ValueError, match="zero, empty"):
        null_text("none", tokens[0], mask[0])


# ---------------------------------------------------------------------------------------------------------------
# Noise-level helpers


def test_noise_helpers_round_trip():
    torch.testing.assert_close(logsnr_to_sigma(sigma_to_logsnr(SIGMAS)), SIGMAS)
    torch.testing.assert_close(alpha_bar_to_sigma(sigma_to_alpha_bar(SIGMAS)), SIGMAS)
    ab = sigma_to_alpha_bar(SIGMAS)
    torch.testing.assert_close(sigma_to_logsnr(SIGMAS), (ab / (1 - ab)).log())  # VP and EDM share the SNR
    assert sigma_to_logsnr(1.0).item() == 0.0 and sigma_to_logsnr(1.0).dtype == F64


def test_paper_tau_to_sigma():
    sigma = paper_tau_to_sigma(400, 1000)
    assert sigma == pytest.approx(math.sqrt(0.4 / 0.6), rel=1e-15)
    assert sigma_to_alpha_bar(sigma).item() == pytest.approx(0.6, rel=1e-15)
    assert paper_tau_to_sigma() == sigma
    assert paper_tau_to_sigma(500) == pytest.approx(1.0, rel=1e-15)
    with pytest.raises(ValueError):
        paper_tau_to_sigma(1000)
