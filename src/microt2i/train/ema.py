"""Exponential moving average of the weights (DiT/PixArt: decay 0.9999 per step; MicroDiT stage 3: 0.99975)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor's local shard (foreach ops have no sharding rule); a plain tensor as is."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    def __init__(self, model: nn.Module, decay: float, start_nimg: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay={decay} must be in [0, 1)")
        self.decay, self.start_nimg = decay, start_nimg
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, nimg: int) -> None:
        """ema ← decay·ema + (1 − decay)·θ; a plain copy until `start_nimg` images have been seen. Multi-tensor
        (foreach) ops: one kernel launch per op for all parameters, no per-tensor Python loop, no host sync."""
        decay = self.decay if nimg >= self.start_nimg else 0.0
        ema_p = [local_shard(p) for p in self.model.parameters()]  # FSDP2: each rank updates its own shards
        src_p = [local_shard(p.detach()) for p in model.parameters()]
        if decay == 0.0:
            torch._foreach_copy_(ema_p, src_p)
        else:
            torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)
        ema_b, src_b = [local_shard(b) for b in self.model.buffers()], [local_shard(b) for b in model.buffers()]
        if ema_b:
            torch._foreach_copy_(ema_b, src_b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd)
