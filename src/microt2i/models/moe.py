"""Expert-choice mixture-of-experts feed-forward layer (Zhou et al. 2022; MicroDiT, MicroDiT App. C, Fig. 7).

Token-choice MoE lets every token pick its top experts and needs an auxiliary loss to balance the load. In expert
choice the *experts* pick: a linear router scores every (token, expert) pair, a softmax over experts turns the
scores into gates, and each expert takes the k tokens of the sample with the highest gate for it,
k = ⌊capacity · T / E⌋. Every expert therefore processes exactly k tokens (perfect balance, no auxiliary loss); a
token may be taken by several experts (their gated outputs add up) or by none (its FFN output is 0 and only the
residual carries it). With E = 8 and capacity 2 each expert sees T/4 tokens, ≈ 2 experts per token on average.

Experts are 2-layer GELU MLPs (the reference's expert MLP; its dense FFN is SwiGLU), stored as stacked [E, D, H] and
[E, H, D] weights so all experts run as one batched matmul. Tokens are gathered with `torch.gather` and the outputs
scattered back with `scatter_add_`: memory O(E·k·D), not the O(E·k·T) of the reference's dense one-hot einsum.
Routing is per sample (top-k over a sample's own tokens), so the layer works for any token count: 256 tokens
unmasked, 64 with 75 % of the patches masked.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def tokens_per_expert(num_tokens: int, num_experts: int, capacity: float) -> int:
    """k = ⌊capacity · T / E⌋ (at least 1, at most T) tokens per expert and sample."""
    return max(1, min(num_tokens, int(capacity * num_tokens / num_experts)))


class ExpertChoiceMoE(nn.Module):
    """x [B, T, D] → [B, T, D]: router → softmax over experts → each expert's top-k tokens → GELU MLP → gate · out,
    summed back into the tokens' positions."""

    def __init__(self, dim: int, hidden: int, num_experts: int = 8, capacity: float = 2.0):
        super().__init__()
        if num_experts < 1 or capacity <= 0:
            raise ValueError(f"num_experts={num_experts} must be ≥ 1 and capacity={capacity} > 0")
        self.num_experts, self.capacity, self.hidden = num_experts, capacity, hidden
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))  # [E, D, H]
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))  # [E, H, D]
        self.reset_parameters()

    def reset_parameters(self, out_std: float = 0.02) -> None:
        """Router and first layer N(0, 0.02), second layer N(0, out_std) (the block's depth-scaled std), truncated."""
        nn.init.trunc_normal_(self.router.weight, std=0.02)
        nn.init.trunc_normal_(self.w1, std=0.02)
        nn.init.trunc_normal_(self.w2, std=out_std)

    def expert_parameters(self) -> list[nn.Parameter]:
        """The experts' weights; the optimizer gives them a reduced learning rate (MicroDiT App. B). The router sees every
        token and keeps the base rate."""
        return [self.w1, self.w2]

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates [B, E, k] and token indices [B, E, k] chosen by each expert (distinct tokens per expert)."""
        k = tokens_per_expert(x.shape[1], self.num_experts, self.capacity)
        probs = self.router(x).float().softmax(dim=-1)  # [B, T, E], softmax over experts
        gates, idx = probs.transpose(1, 2).topk(k, dim=-1)  # [B, E, k] each: every expert picks its k best tokens
        return gates, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        E = self.num_experts
        gates, idx = self.route(x)  # [B, E, k]
        k = idx.shape[-1]
        flat = idx.reshape(B, E * k, 1).expand(-1, -1, D)  # [B, E·k, D]
        xin = x.gather(1, flat).view(B, E, k, D).transpose(0, 1).reshape(E, B * k, D)  # [E, B·k, D]
        h = torch.bmm(F.gelu(torch.bmm(xin, self.w1)), self.w2)  # [E, B·k, H] → [E, B·k, D]
        h = h.view(E, B, k, D).transpose(0, 1) * gates.unsqueeze(-1).to(h.dtype)  # [B, E, k, D], gated
        out = x.new_zeros(B, T, D, dtype=h.dtype)
        return out.scatter_add_(1, flat, h.reshape(B, E * k, D)).to(x.dtype)  # [B, T, D]
