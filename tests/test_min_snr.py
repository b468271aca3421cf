"""`objective.snr_gamma`: min-SNR-γ weighting (Hang et al. 2023 §3.4) of the VP ε and flow losses."""

import pytest
import torch

from microt2i.config import ConfigError, ObjectiveConfig
from microt2i.diffusion.noise import min_snr_weight
from microt2i.diffusion.objectives import build_objective


class Net(torch.nn.Module):
    """A fixed random map standing in for a backbone: (x, noise_cond, tokens, mask) → like x."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, c, tokens, mask, **kw):
        return self.conv(x) + c.view(-1, 1, 1, 1)


def _losses(kind, gamma, **kw):
    x0 = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    tok, mask = torch.zeros(6, 2, 4), torch.ones(6, 2, dtype=torch.bool)
    out = {}
    for g in (None, gamma):
        obj = build_objective(ObjectiveConfig(kind=kind, snr_gamma=g, **kw))
        out[g] = obj.loss(Net(), x0, tok, mask, generator=torch.Generator().manual_seed(2), return_sigma=True)
    return x0, out


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vp_eps_weight_is_min_snr_over_snr(schedule):
    gamma = 5.0
    x0, out = _losses("vp", gamma, schedule=schedule)
    (plain, sigma), (weighted, sigma2) = out[None], out[gamma]
    assert torch.equal(sigma, sigma2)
    abar = 1 / (1 + sigma.double() ** 2)
    snr = abar / (1 - abar)  # ᾱ/(1−ᾱ), the paper's SNR of the VP forward process
    want = torch.clamp(snr, max=gamma) / snr
    torch.testing.assert_close(weighted.double() / plain.double(), want, rtol=1e-5, atol=1e-7)
    assert (want < 1).any() and (want == 1).any()  # both regimes are exercised


def test_flow_weight_equals_the_min_snr_x0_loss():
    """The derived flow form: weighted ‖v − v̂‖² == min(SNR, γ)·‖x0 − x̂0‖² with x̂0 = x_t − t·v̂ (the paper's
    x0-space definition), SNR = ((1 − t)/t)²."""
    gamma = 2.0
    x0, out = _losses("flow", gamma, logit_std=1.5)
    (plain, sigma), (weighted, _) = out[None], out[gamma]
    t = (sigma / (1 + sigma)).double()
    snr = ((1 - t) / t) ** 2
    # rebuild v̂ from the same draws: the noise is the generator's second draw after σ
    g = torch.Generator().manual_seed(2)
    torch.randn(6, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    tt = t.float().view(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * noise
    v_hat = Net()(x_t, tt.flatten(), None, None)
    x0_hat = x_t - tt * v_hat
    x0_loss = (x0_hat - x0).double().square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(weighted.double(), torch.clamp(snr, max=gamma) * x0_loss, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(plain.double(), (v_hat - (noise - x0)).double().square().mean(dim=(1, 2, 3)),
                               rtol=1e-5, atol=1e-7)


def test_weight_forms_closed_form():
    s = torch.tensor([0.01, 0.3, 1.0, 4.0, 3e4], dtype=torch.float64)
    snr = 1 / s**2
    torch.testing.assert_close(min_snr_weight(s, 5.0, "eps"), torch.clamp(snr, max=5.0) / snr)
    torch.testing.assert_close(min_snr_weight(s, 5.0, "v"), torch.clamp(snr, max=5.0) / (snr + 1))
    torch.testing.assert_close(min_snr_weight(s, 5.0, "x0"), torch.clamp(snr, max=5.0))
    assert torch.isfinite(min_snr_weight(s.float(), 5.0, "eps")).all()


@pytest.mark.parametrize("kw, msg", [({"kind": "vp", "snr_gamma": 0.0}, "must be > 0"),
                                     ({"kind": "flow", "snr_gamma": -1.0}, "must be > 0"),
                                     ({"kind": "edm", "snr_gamma": 5.0}, "weights the vp and flow losses")])
def test_bad_snr_gamma_is_one_clear_error(kw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        ObjectiveConfig(**kw)
    assert "\n" not in str(e.value) and "objective.snr_gamma" in str(e.value)
