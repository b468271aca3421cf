"""The fast path (fused RMSNorm backward, fused residual/modulation ops, fused AdamW, foreach EMA) and the one
`microt2i bench` report. Wall-clock figures are not asserted (shared CPU); shapes, values and files are."""

from __future__ import annotations

import pytest
import torch

from microt2i import presets
from microt2i.bench import (
    bench_presets,
    bench_sample,
    bench_train,
    make_train_step,
    report_rows,
    write_report_md,
)
from microt2i.cli import build_parser, main
from microt2i.models.layers import LayerScale, RMSNorm, modulate, rms_norm
from microt2i.train.ema import EMA
from microt2i.train.optim import adamw_impl


def _rms_reference(x, w, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def test_rms_norm_hand_written_backward_is_exact():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))
    wq = torch.randn(2, 1, 8, dtype=torch.float64, requires_grad=True)  # broadcast gain (e.g. stacked q, k)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (torch.randn(4, 2, 3, 8, dtype=torch.float64,
                                                                               requires_grad=True), wq))
    # fp32 and bf16 inputs: same values and gradients as autograd through the composite, fp32 inside
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        xa = torch.randn(4, 6, 16).to(dtype).requires_grad_(True)
        xb = xa.detach().clone().requires_grad_(True)
        wa = torch.rand(16).requires_grad_(True)
        wb = wa.detach().clone().requires_grad_(True)
        ya, yb = rms_norm(xa, wa), _rms_reference(xb, wb)
        assert ya.dtype == dtype
        torch.testing.assert_close(ya.float(), yb.float(), atol=tol, rtol=tol)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad.float(), xb.grad.float(), atol=tol * 10, rtol=tol * 10)
        torch.testing.assert_close(wa.grad, wb.grad, atol=tol * 10, rtol=tol * 10)
    assert RMSNorm(8)(torch.zeros(2, 8)).abs().max() == 0  # ε keeps an all-zero row finite
    # the gain-free norm (QK-norm's keys): gradcheck, and equal to a gain of ones
    assert torch.autograd.gradcheck(lambda a: rms_norm(a, None, 1e-6), (x,))
    torch.testing.assert_close(rms_norm(x, None), rms_norm(x, torch.ones(8, dtype=torch.float64)))


def _attention_separate_gains(attn, x, ctx=None, mask=None):
    """Attention with QK-norm as written in the paper: each of q and k through its own RMSNorm with its own gain."""
    B, N, _ = x.shape
    H, Dh = attn.heads, attn.head_dim
    if ctx is None:
        q, k, v = attn.to_qkv(x).view(B, N, 3, H, Dh).unbind(2)
    else:
        q = attn.to_q(x).view(B, N, H, Dh)
        k, v = attn.to_kv(ctx).view(B, ctx.shape[1], 2, H, Dh).unbind(2)
    def rms(t, w):  # in t's dtype (float64 here)
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    q, k = rms(q, attn.q_norm.weight), rms(k, attn.k_norm.weight)
    m = None if mask is None else mask[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=m)
    return attn.proj(out.transpose(1, 2).reshape(B, N, H * Dh))


@pytest.mark.parametrize("cross", [False, True])
def test_attention_folds_the_qk_gains_into_the_queries_exactly(cross):
    """Attention puts w_q⊙w_k on the queries and leaves the keys gain-free: the same outputs and the same gradients
    for every parameter, both gains included, as two separately gained norms."""
    from microt2i.models.layers import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4, context_dim=24 if cross else None, qk_norm="rms").double()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.weight.uniform_(-2.0, 2.0)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    ctx = torch.randn(2, 5, 24, dtype=torch.float64) if cross else None
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool) if cross else None
    g = torch.randn(2, 6, 32, dtype=torch.float64)
    grads = []
    for fn in (lambda: attn(x, ctx, key_mask=mask), lambda: _attention_separate_gains(attn, x, ctx, mask)):
        attn.zero_grad()
        out = fn()
        out.backward(g)
        grads.append((out.detach(), [p.grad.clone() for p in attn.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_fused_residual_and_modulation_equal_the_unfused_forms():
    x, r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    ls = LayerScale(8, 0.1)
    torch.nn.init.normal_(ls.gamma)
    torch.testing.assert_close(ls(x, r), r + x * ls.gamma)
    torch.testing.assert_close(ls(x), x * ls.gamma)
    shift, scale = torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])


def test_fused_adamw_takes_the_same_steps_as_foreach():
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2)) for _ in "ab"]
    nets[1].load_state_dict(nets[0].state_dict())
    assert adamw_impl(nets[0].parameters()) == {"fused": True}
    with torch.device("meta"):
        assert adamw_impl(torch.nn.Linear(2, 2).parameters()) == {"foreach": True}
    opts = [torch.optim.AdamW(nets[0].parameters(), lr=1e-2, weight_decay=0.1, fused=True),
            torch.optim.AdamW(nets[1].parameters(), lr=1e-2, weight_decay=0.1, foreach=True)]
    x = torch.randn(16, 6)
    for _ in range(3):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_foreach_ema_closed_form_and_buffers():
    net = torch.nn.BatchNorm1d(3)
    ema = EMA(net, decay=0.75, start_nimg=10)
    with torch.no_grad():
        net.weight.fill_(2.0)
        net.running_mean.fill_(5.0)
    ema.update(net, nimg=4)  # before start_nimg: a copy
    assert torch.equal(ema.model.weight, net.weight) and torch.equal(ema.model.running_mean, net.running_mean)
    with torch.no_grad():
        net.weight.fill_(6.0)
    ema.update(net, nimg=12)  # 0.75·2 + 0.25·6 = 3
    torch.testing.assert_close(ema.model.weight, torch.full((3,), 3.0))


@pytest.mark.parametrize("name", ["world-tiny", "world-microdit-tiny", "world-cad-tiny"])
def test_make_train_step_trains_every_family(name):
    step, net = make_train_step(presets.get(name), 2, torch.device("cpu"))
    before = [p.detach().clone() for p in net.parameters()]
    step()
    step()
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_bench_presets_times_world_presets_and_counts_paper_ones_on_cpu():
    rows = bench_presets(("world-tiny", "dit-i-256"), device="cpu", batch_size=2, steps=1, warmup=0, repeats=1)
    world, paper = rows
    assert world["img_s"] > 0 and world["batch_size"] == 2 and world["mfu"] is None and world["params"] == 311_024
    assert paper["img_s"] is None and "no GPU" in paper["note"] and paper["train_flops_per_img"] > 1e11


def test_bench_sample_and_train_report_their_numbers():
    s = bench_sample("world-tiny", batch_size=2, steps=3, repeats=1, device="cpu")
    assert s["img_s"] > 0 and (s["sampler"], s["steps"]) == ("heun", 3)
    r = bench_train(presets.get("world-tiny").model, batch_size=2, steps=1, warmup=0, repeats=1, text_len=8,
                    device="cpu", name="world-tiny")
    assert r["dit_i_no_refiner"]["params"] < r["dit_i"]["params"]
    assert r["ratio_no_refiner"] == pytest.approx(r["dit_i_no_refiner"]["img_s"] / r["pixart"]["img_s"])
    # PixArt with DiT-I's QK-norm: diffusers' per-head RMSNorm (a gain of head_dim) on q and k of both attentions
    cfg = presets.get("world-tiny").model
    extra = cfg.depth * 2 * 2 * (cfg.width // cfg.heads)
    assert r["pixart_qk_norm"]["params"] == r["pixart"]["params"] + extra
    assert r["ratio_matched"] == pytest.approx(r["dit_i_no_refiner"]["img_s"] / r["pixart_qk_norm"]["img_s"])


def _fake_report(date="2026-11-24T10:00:00"):
    train = [{"preset": "world-s", "params": 10, "train_flops_per_img": 3e9, "img_s": 20.0, "mfu": None,
              "batch_size": 8, "precision": "fp32", "note": ""},
             {"preset": "dit-i-256", "params": None, "train_flops_per_img": 6e11, "img_s": None, "mfu": None,
              "batch_size": None, "precision": None, "note": "FLOPs/img only: no GPU"}]
    pixart = {"preset": "world-s", "precision": "fp32", "batch_size": 8, "device": "cpu",
              "dit_i": {"img_s": 30.0, "params": 9}, "dit_i_no_refiner": {"img_s": 40.0, "params": 7},
              "pixart": {"img_s": 40.0, "params": 7}, "pixart_qk_norm": {"img_s": 32.0, "params": 8}, "ratio": 0.75,
              "ratio_no_refiner": 1.0, "ratio_matched": 1.25}
    return {"date": date, "device": "cpu (1 threads)", "torch": "2.x", "train": train, "pixart": pixart,
            "sample": {"preset": "world-s", "sampler": "heun", "steps": 30, "cfg_scale": 3.0, "batch_size": 8,
                       "img_s": 1.5, "params": 9},
            "loader": None}


def test_write_report_md_appends_dated_rows_to_one_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Loader\n\n| a |\n|---|\n| 1 |\n")
    write_report_md(_fake_report(), path)
    write_report_md(_fake_report("2026-11-25T10:00:00"), path)
    text = path.read_text()
    assert text.count("## One report") == 1 and "## Loader\n\n| a |\n|---|\n| 1 |\n" in text
    lines = text.splitlines()
    rows = [i for i, ln in enumerate(lines) if ln.startswith("| 2026-11-2")]
    assert len(rows) == 14 and rows == list(range(rows[0], rows[0] + 14))  # one table, no gaps
    cells = report_rows(_fake_report())
    assert cells[0][-3:] == ["20.00", "n/a", ""] and cells[1][6] == "-" and "**0.75×**" in cells[2][-1]
    assert "**1.00×**" in cells[3][-1] and "QK-norm" in cells[4][-1] and "**1.25×**" in cells[4][-1]
    assert cells[-1][0] == "loader" and "skipped" in cells[-1][-1]


def test_cli_bench_defaults_to_the_one_report(tmp_path, capsys):
    assert build_parser().parse_args(["bench"]).what == "all"
    assert build_parser().parse_args(["bench", "microdit"]).what == "microdit"
    out = tmp_path / "B.md"
    assert main(["bench", "sample", "--preset", "world-tiny", "--batch-size", "2", "--repeats", "1",
                 "--out", str(out)]) == 0
    assert "| sample | world-tiny |" in out.read_text() and "heun 30 steps" in capsys.readouterr().out
