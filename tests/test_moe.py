"""Expert-choice MoE (models/moe.py): routing counts, equivalence with a dense MLP, a loop reference, gradients, and
the experts' halved learning rate in the optimizer's parameter groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from microt2i.models.moe import ExpertChoiceMoE, tokens_per_expert
from microt2i.train.optim import param_groups


pytestmark = pytest.mark.usefixtures("one_thread")


def _moe(dim=8, hidden=16, E=4, capacity=2.0, seed=0):
    torch.manual_seed(seed)
    moe = ExpertChoiceMoE(dim, hidden, E, capacity)
    torch.nn.init.normal_(moe.router.weight, std=1.0)  # spread the gates so top-k choices are clear
    return moe


@pytest.mark.parametrize("T,E,cap,k", [(256, 8, 2.0, 64), (64, 8, 2.0, 16), (16, 4, 2.0, 8), (10, 4, 1.0, 2),
                                       (3, 8, 2.0, 1), (5, 1, 4.0, 5)])
def test_tokens_per_expert_closed_form(T, E, cap, k):
    assert tokens_per_expert(T, E, cap) == k  # ⌊cap·T/E⌋, at least 1, at most T


def test_each_expert_takes_exactly_k_distinct_tokens():
    moe = _moe(E=4, capacity=2.0)
    x = torch.randn(3, 10, 8)
    gates, idx = moe.route(x)
    k = tokens_per_expert(10, 4, 2.0)
    assert idx.shape == gates.shape == (3, 4, k) == (3, 4, 5)
    for b in range(3):
        for e in range(4):
            assert len(set(idx[b, e].tolist())) == k  # k distinct tokens per expert and sample
    # the gates are the router's softmax over experts at the chosen tokens, and each expert took its k best
    probs = moe.router(x).softmax(-1)  # [B, T, E]
    torch.testing.assert_close(gates, probs.transpose(1, 2).gather(-1, idx))
    assert bool((gates.min(-1).values[..., None] >= probs.transpose(1, 2)
                 .scatter(-1, idx, -1.0)).all())  # no unchosen token beats a chosen one


def test_one_expert_with_capacity_one_is_a_dense_gelu_mlp():
    moe = _moe(E=1, capacity=1.0)
    x = torch.randn(2, 7, 8)
    dense = F.gelu(x @ moe.w1[0]) @ moe.w2[0]  # softmax over one expert = 1, every token taken once
    torch.testing.assert_close(moe(x), dense)


def test_forward_matches_a_per_token_loop():
    moe = _moe(E=4, capacity=1.5)
    x = torch.randn(2, 8, 8)
    gates, idx = moe.route(x)
    expect = torch.zeros_like(x)
    for b in range(2):
        for e in range(4):
            for j in range(idx.shape[-1]):
                t = idx[b, e, j]
                expect[b, t] += gates[b, e, j] * (F.gelu(x[b, t] @ moe.w1[e]) @ moe.w2[e])
    torch.testing.assert_close(moe(x), expect)
    # tokens no expert chose get exactly 0 (the residual carries them)
    chosen = torch.zeros(2, 8, dtype=torch.bool).scatter_(1, idx.flatten(1), True)
    assert (moe(x)[~chosen] == 0).all()


def test_gradients_reach_router_and_every_expert():
    moe = _moe(E=4, capacity=2.0)
    x = torch.randn(2, 12, 8, requires_grad=True)
    moe(x).square().sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0  # through the gates
    for w in (moe.w1, moe.w2):
        assert (w.grad.flatten(1).abs().sum(1) > 0).all()  # every expert gets a gradient
    assert x.grad.abs().sum() > 0


def test_routing_is_per_sample_and_batch_independent():
    moe = _moe(E=4, capacity=2.0)
    x = torch.randn(3, 12, 8)
    torch.testing.assert_close(moe(x)[1:2], moe(x[1:2]))


def test_expert_weights_get_their_own_param_group():
    net = torch.nn.ModuleDict({"moe": _moe(), "lin": torch.nn.Linear(8, 8)})
    groups = param_groups(net, 0.1, expert_lr_scale=0.5)
    experts = [g for g in groups if "lr_scale" in g]
    assert len(experts) == 1 and experts[0]["lr_scale"] == 0.5 and experts[0]["weight_decay"] == 0.1
    assert {id(p) for p in experts[0]["params"]} == {id(net["moe"].w1), id(net["moe"].w2)}
    others = {id(p) for g in groups if "lr_scale" not in g for p in g["params"]}
    assert id(net["moe"].router.weight) in others  # the router sees every token: full learning rate
    # a network without experts keeps the two plain groups
    assert len(param_groups(torch.nn.Linear(2, 2), 0.1, 0.5)) == 2
