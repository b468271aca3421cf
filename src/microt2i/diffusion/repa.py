"""REPA's alignment loss (Yu et al. 2024, "Representation Alignment for Generation", Eq. 8): the tokens of an early
block, through a small projector (`models.layers.RepaHead`), are pulled towards a frozen teacher's patch features
of the clean image by negative cosine similarity, averaged over tokens; the trainer adds λ times it to the diffusion
loss. Only the aligned block and those below it (and the projector) receive its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def repa_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample −mean_t cos(projected[b, t], target[b, t]); both [B, T, dim]. Returns [B] in float32."""
    return -F.cosine_similarity(projected.float(), target.float(), dim=-1).mean(dim=1)


class RepaCapture:
    """Captures block `depth`'s output tokens (1-based) of `net` in every forward (a forward hook, so the network
    stays architecture only) and scores them against teacher features with the network's `repa_head`."""

    def __init__(self, net: nn.Module, depth: int):
        if getattr(net, "repa_head", None) is None or not hasattr(net, "blocks"):
            raise ValueError(f"REPA needs a DiT-I or MicroDiT built with model.repa_depth >= 1, not "
                             f"{type(net).__name__}")
        self.head, self.tokens = net.repa_head, None
        self.handle = net.blocks[depth - 1].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.tokens = output  # [B, N_kept, D]

    def loss(self, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B] REPA loss of the last forward against target [B, N_kept, dim]; rows with valid = 0 contribute 0."""
        if self.tokens is None or self.tokens.shape[:2] != target.shape[:2]:
            raise ValueError(f"REPA: block tokens {None if self.tokens is None else list(self.tokens.shape)} do not "
                             f"match the teacher targets {list(target.shape)}")
        out = repa_loss(self.head(self.tokens), target) * valid
        self.tokens = None
        return out

    def remove(self) -> None:
        self.handle.remove()
