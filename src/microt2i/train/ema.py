"""Exponential moving average of the weights (DiT/PixArt: decay 0.9999 per step; MicroDiT stage 3: 0.99975)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, start_nimg: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay={decay} must be in [0, 1)")
        self.decay, self.start_nimg = decay, start_nimg
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, nimg: int) -> None:
        """ema ← decay·ema + (1 − decay)·θ; a plain copy until `start_nimg` images have been seen."""
        decay = self.decay if nimg >= self.start_nimg else 0.0
        ema_p = list(self.model.parameters())
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd)
