"""How an objective calls a backbone: latent self-conditioning (RIN, Jabri et al. 2023 §3.4; CAD-I) and the
kept-token layout of a masked forward. Objectives wrap the backbone here, so neither the trainer nor the samplers
know which network self-conditions.

A backbone self-conditions when it has `self_cond_rate > 0` and its forward accepts `prev_latents=` and
`return_latents=True` (models/cad_i.py):

- **training** (`for_loss`): a first pass without previous latents (under no_grad: CAD runs it with gradients
  and detaches, citing an AMP bug; the values are the same), then each sample keeps those latents with
  probability `self_cond_rate`, else zeros, and the second pass is the one trained. The keep decision is drawn
  from the objective's `generator`, the trainer's per-step one, so a resumed run replays it bit for bit. Every
  step costs one extra forward.
- **sampling** (`for_sampling`): each call is fed the latents of the previous call (zeros on the first), the
  way CAD's samplers carry them from step to step. The wrapper is stateful, so build one denoiser per
  trajectory (`objective.denoiser(net)`), and feed conditional and unconditional branches as one doubled batch
  (`guidance.cfg_denoiser` does) so each keeps its own latents; a batch-size change starts afresh.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.layers import keep_tokens, patchify


def self_cond_rate(net) -> float:
    """The probability with which `net` is trained self-conditioned (0 for networks without self-conditioning)."""
    return float(getattr(net, "self_cond_rate", 0.0) or 0.0)


class _SelfCondForLoss:
    def __init__(self, net, generator: torch.Generator | None):
        self.net, self.generator, self.rate = net, generator, self_cond_rate(net)
        self.config = getattr(net, "config", None)

    def __call__(self, x, noise_cond, text_tokens, text_mask, **kw):
        with torch.no_grad():
            _, latents = self.net(x, noise_cond, text_tokens, text_mask, return_latents=True, **kw)
        device = self.generator.device if self.generator is not None else x.device
        keep = torch.rand(x.shape[0], generator=self.generator, device=device).to(x.device) < self.rate  # [B]
        prev = latents * keep.view(-1, *[1] * (latents.ndim - 1)).to(latents.dtype)  # dropped rows: zeros
        return self.net(x, noise_cond, text_tokens, text_mask, prev_latents=prev, **kw)


class _SelfCondForSampling(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.latents = net, None
        self.config = getattr(net, "config", None)

    def reset(self) -> None:
        self.latents = None

    def forward(self, x, noise_cond, text_tokens, text_mask, **kw):
        prev = self.latents if self.latents is not None and self.latents.shape[0] == x.shape[0] else None
        out, latents = self.net(x, noise_cond, text_tokens, text_mask, prev_latents=prev, return_latents=True, **kw)
        self.latents = latents.detach()
        return out


def for_loss(net, generator: torch.Generator | None = None):
    """`net` as the training loss should call it: self-conditioned with its keep decision drawn from `generator`
    (two forwards) when the network supports it, else `net` itself."""
    return _SelfCondForLoss(net, generator) if self_cond_rate(net) > 0 else net


def for_sampling(net):
    """`net` as a sampler's denoiser should call it: carrying its latents from call to call when it
    self-conditions (zeros on the first call), else `net` itself."""
    return _SelfCondForSampling(net) if self_cond_rate(net) > 0 else net


def kept(x: torch.Tensor, keep_mask: torch.Tensor | None) -> torch.Tensor:
    """x [B, C, H, W] laid out as the backbone's output under a patch keep-mask [B, N]: [B, N_keep, p²·C] (x itself
    if None). The patch size follows from the mask, N = H·W / p², so no network (nor a DDP/FSDP wrapper of one) is
    asked for its config."""
    if keep_mask is None:
        return x
    patch = math.isqrt(x.shape[-2] * x.shape[-1] // keep_mask.shape[-1])
    if patch * patch * keep_mask.shape[-1] != x.shape[-2] * x.shape[-1]:
        raise ValueError(f"keep_mask has {keep_mask.shape[-1]} tokens, which no patch size gives for a "
                         f"{x.shape[-2]}×{x.shape[-1]} latent")
    return keep_tokens(patchify(x, patch), keep_mask)
