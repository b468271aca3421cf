"""Building blocks shared by the microt2i diffusion transformers (DiT-I, CAD-I, MicroDiT).

- `Attention`: self- or cross-attention over `F.scaled_dot_product_attention`, optional QK-normalisation
  (Henry et al. 2020; SD3 §5.2.1) and a key padding mask that can never turn a fully padded row into NaN; its
  q/k/v width may differ from the residual width (MicroDiT's layer-wise scaling).
- `Mlp` (GELU-tanh, DiT/PixArt) and `SwiGLU` (MicroDiT), `LayerScale` (CaiT, Touvron et al. 2021).
- `TimestepEmbedder`: sinusoid of the noise condition followed by an MLP (DiT §3.2).
- `sincos_pos_embed_2d`: fixed 2-D sin-cos positions (MAE), with PixArt-α's interpolation scale.
- `TransformerBlock` / `TextRefiner`: pre-LN blocks that refine the caption tokens before cross-attention.
- `patchify` / `unpatchify`, `keep_tokens` (gather the kept tokens of a patch mask), `modulate`.

Pure architecture: no optimizer, logging, distributed code or environment reads (aesthetics.md §3 habit 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment.crop import whole_image_boxes

# ---------------------------------------------------------------------------------------------------------------
# Patches and modulation


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] → [B, N, p·p·C] with N = (H/p)·(W/p), tokens in row-major order, (p, p, C) inside a patch."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"image side {H}x{W} is not divisible by the patch size {p}")
    h, w = H // p, W // p
    x = x.reshape(B, C, h, p, w, p)  # [B, C, h, p, w, p]
    x = x.permute(0, 2, 4, 3, 5, 1)  # [B, h, w, p, p, C]
    return x.reshape(B, h * w, p * p * C)  # [B, N, p²C]


def unpatchify(x: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, N, p·p·C] → [B, C, H, W]."""
    B = x.shape[0]
    h, w = H // p, W // p
    x = x.reshape(B, h, w, p, p, C)  # [B, h, w, p, p, C]
    x = x.permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
    return x.reshape(B, C, H, W)


def keep_tokens(x: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """The kept tokens of x [B, N, ...] in token order → [B, N_keep, ...]; keep_mask [B, N] bool with the same
    number of True per row (patch masking, Crop)."""
    B, N = x.shape[:2]
    counts = keep_mask.sum(dim=1) if keep_mask.dtype == torch.bool and keep_mask.shape == (B, N) else None
    if counts is None or not bool((counts == counts[0]).all()):
        raise ValueError(
            f"keep_mask must be bool [B={B}, N={N}] with the same number of kept tokens per row, got "
            f"{keep_mask.dtype} {list(keep_mask.shape)}" + ("" if counts is None else f" with counts {counts.tolist()}")
        )
    return x[keep_mask].view(B, -1, *x.shape[2:])


def restore_tokens(full: torch.Tensor, kept: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """Inverse of `keep_tokens`: `full` [B, N, D] with the kept rows replaced by `kept` [B, N_keep, D] in token
    order (TREAD: routed tokens rejoin with the values they had before the span)."""
    return full.masked_scatter(keep_mask[..., None].expand_as(full), kept.to(full.dtype))


@dataclass
class TokenLayout:
    """Where the tokens a block sees sit on the image's token grid: ids [B, N'] (row-major index of each token on the
    rows × cols grid) and, with RoPE, their rotations [B, N', Dh/2, 2] (`rope_rotation`). Masking and routing keep
    both in step."""

    ids: torch.Tensor
    rows: int
    cols: int
    rope: torch.Tensor | None = None

    def keep(self, mask: torch.Tensor) -> "TokenLayout":
        rope = None if self.rope is None else keep_tokens(self.rope, mask)
        return TokenLayout(keep_tokens(self.ids, mask), self.rows, self.cols, rope)


def run_blocks(blocks, h: torch.Tensor, call, route_mask: torch.Tensor | None = None, route_start: int = 0,
               route_end: int = 0, layout: TokenLayout | None = None) -> torch.Tensor:
    """h = call(block, h, layout) for each block; with a TREAD `route_mask` [B, N] (True = the token takes the routed
    span) only those tokens go through blocks route_start … route_end − 1, the others skip them unchanged (TREAD §3).
    `layout` (the tokens' grid positions, or None) follows its tokens into the span."""
    full = full_layout = None
    for i, block in enumerate(blocks):
        if route_mask is not None and i == route_start:
            full, h = h, keep_tokens(h, route_mask)  # [B, N_route, D]
            if layout is not None:
                full_layout, layout = layout, layout.keep(route_mask)
        h = call(block, h, layout)
        if full is not None and i == route_end - 1:
            h, full = restore_tokens(full, h, route_mask), None  # [B, N, D], token order restored
            layout = full_layout
    return h


def rope_angles(grid: int, head_dim: int, *, cols: int | None = None, theta: float = 100.0,
                interp_scale: float = 1.0) -> torch.Tensor:
    """Axial 2-D rotary position angles [N, head_dim/2] of a grid × cols (default square) token map, row-major
    (RoPE, Su et al. 2021; the axial 2-D form of FiT / Lumina-Next / FLUX): the first head_dim/4 channel pairs turn
    with the token's row, the rest with its column, pair j of an axis at frequency theta^(−j/(head_dim/4)).
    Positions are in base-grid units (divided by interp_scale), like `sincos_pos_embed_2d`."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
    q = head_dim // 4
    freqs = theta ** (-torch.arange(q, dtype=torch.float64) / q)  # [Dh/4]
    cols = grid if cols is None else cols
    r = torch.arange(grid, dtype=torch.float64).repeat_interleave(cols) / interp_scale  # [N] rows, row-major
    c = torch.arange(cols, dtype=torch.float64).repeat(grid) / interp_scale  # [N] columns
    return torch.cat([r[:, None] * freqs, c[:, None] * freqs], dim=1).float()  # [N, Dh/2]


def rope_rotation(angles: torch.Tensor) -> torch.Tensor:
    """angles [..., Dh/2] → their (cos, sin) [..., Dh/2, 2]: computed once per forward, used by every block."""
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of x [B, N, H, Dh] by the angles whose (cos, sin) are rot [B, N, Dh/2, 2]
    (`rope_rotation`; RoPE): relative positions then enter the attention logits q·k as a function of the two
    tokens' offset only."""
    cos, sin = rot[:, :, None].unbind(-1)  # [B, N, 1, Dh/2] each
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, N, H, Dh/2] each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(x.dtype)


class RepaHead(nn.Module):
    """REPA's projector (Yu et al. 2024 §3.3): a 3-layer SiLU MLP from the backbone width to the teacher's feature
    width, applied per token. Trained only through the REPA loss; unused at inference."""

    def __init__(self, dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)  # [B, N, out_dim]


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x [B, L, D] over the real tokens of mask [B, L] (None = all) → [B, D]; a row with none gives 0."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)  # [B, L, 1]
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x [B, N, D] with per-sample shift, scale [B, D] (DiT §3.2); one fused op (addcmul)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


# ---------------------------------------------------------------------------------------------------------------
# Normalisation, LayerScale, MLPs


class _RMSNormFn(torch.autograd.Function):
    """y = x̂·w, x̂ = x·r, r = 1/√(mean(x²) + ε) over the last dim, computed in (at least) fp32, with a hand-written
    backward: 3 element-wise passes forward and 5 backward, where autograd through the composite takes ≈ 12 (the
    CPU has no fused RMSNorm kernel; QK-norm runs it 4× per block). w may broadcast over x's leading dims (e.g.
    [2, 1, D] normalises stacked q and k with their own gains in one call); w = None is the gain-free norm (2 passes
    forward, 3 backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        r = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        xhat = xf * r  # [..., D]
        ctx.save_for_backward(xhat, r, weight)
        return (xhat if weight is None else xhat * weight.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        xhat, r, weight = ctx.saved_tensors
        gyf, D = gy.to(xhat.dtype), xhat.shape[-1]
        if weight is None:  # ∂L/∂x̂ = gy
            dot = torch.linalg.vecdot(gyf, xhat).unsqueeze(-1)  # [..., 1]
            return torch.addcmul(gyf, xhat, dot, value=-1.0 / D).mul_(r).to(gy.dtype), None, None
        w = weight.to(xhat.dtype)
        p = gyf * xhat  # [..., D]: ∂L/∂w summed over rows, and ⟨∂L/∂x̂, x̂⟩ = p·w per row
        gw = p.sum_to_size(weight.shape).to(weight.dtype) if ctx.needs_input_grad[1] else None
        dot = (p @ w if w.ndim == 1 else (p * w).sum(dim=-1)).unsqueeze(-1)  # [..., 1]
        # ∂L/∂x = r·(g − x̂·⟨g, x̂⟩/D) with g = ∂L/∂x̂ = gy·w: the normaliser's Jacobian is r·(I − x̂x̂ᵀ/D)
        gx = torch.addcmul(gyf * w, xhat, dot, value=-1.0 / D).mul_(r)
        return gx.to(gy.dtype), gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm of x over its last dim with gain `weight` (broadcast over x's leading dims; None = no gain), fp32
    inside."""
    return _RMSNormFn.apply(x, weight, eps)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019), computed in fp32 for stability under bf16 autocast."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def make_norm(kind: str | None, dim: int) -> nn.Module:
    """'rms' → RMSNorm, 'layer' → LayerNorm (affine), 'layer-full' → LayerNorm without affine parameters, None →
    identity. Used for the QK-norm ('layer-full' normalises all heads' channels at once, as MicroDiT does)."""
    if kind is None:
        return nn.Identity()
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-6)
    if kind == "layer-full":
        return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
    raise ValueError(f"qk_norm={kind!r} must be 'rms', 'layer', 'layer-full' or None")


class LayerScale(nn.Module):
    """Learned per-channel gain on a residual branch, initialised small (CaiT §2.1; ImageNet-T2I App. C)."""

    def __init__(self, dim: int, init: float = 0.1):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x·γ, or residual + x·γ in one fused op (addcmul) when `residual` is given."""
        return x * self.gamma if residual is None else torch.addcmul(residual, x, self.gamma)


class Mlp(nn.Module):
    """Linear → GELU(tanh) → Linear, as in DiT and PixArt-α; output width `out_dim` (default: `dim`).

    `mid_norm` adds a bias-free LayerNorm after the activation (timm's `Mlp(norm_layer=…)`, MicroDiT's caption
    projection and pooled-caption MLP)."""

    def __init__(self, dim: int, hidden: int, *, out_dim: int | None = None, bias: bool = True,
                 mid_norm: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.norm = nn.LayerNorm(hidden, eps=1e-6, bias=False) if mid_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.gelu(self.fc1(x), approximate="tanh")))


class MixFFN(nn.Module):
    """Linear → depthwise 3×3 conv over the token grid → GELU(tanh) → Linear: Sana's Mix-FFN (Xie et al. 2024, §2.3,
    after SegFormer), a local inductive bias for the transformer at the cost of 9 multiply-adds per hidden channel.
    Tokens missing from the grid (masked or routed away, `TokenLayout`) read as zeros."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        h = self.fc1(x)  # [B, N', Dh]
        B, N, C = h.shape
        R, Cg = layout.rows, layout.cols
        full = N == R * Cg  # every token present, in row-major order
        grid = h if full else h.new_zeros(B, R * Cg, C).scatter(1, layout.ids[..., None].expand(-1, -1, C), h)
        grid = self.dw(grid.transpose(1, 2).reshape(B, C, R, Cg)).flatten(2).transpose(1, 2)  # [B, R·Cg, C]
        h = grid if full else grid.gather(1, layout.ids[..., None].expand(-1, -1, C))  # [B, N', C]
        return self.fc2(F.gelu(h, approximate="tanh"))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): fc2(silu(x W_gate) · x W_up); MicroDiT's FFN."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = True):
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=bias)  # gate and up projections, fused: [gate; up]
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


# ---------------------------------------------------------------------------------------------------------------
# Attention


class Attention(nn.Module):
    """Multi-head self-attention (context_dim=None) or cross-attention to a context of width context_dim.

    qk_norm normalises each head's queries and keys ('rms' or 'layer', one norm shared by all heads) before the
    dot product: this bounds the attention logits and avoids the entropy collapse that destabilises training
    (QK-norm, Henry et al. 2020; SD3 §5.2.1; ImageNet-T2I App. C puts it in every self- and cross-attention).

    inner_dim (default dim) is the width of q, k, v (heads · head_dim): MicroDiT's layer-wise scaling narrows it
    per block while the residual stream keeps width dim. With qk_norm='layer-full' one non-affine LayerNorm spans
    all heads' channels (MicroDiT) instead of each head's.

    key_mask [B, L_k] bool (True = real token) hides padded keys. A row with no real key at all (a fully
    padded caption, e.g. a dropped one) would give softmax over -inf everywhere = NaN; such rows attend to all
    keys instead and their output is then zeroed, so that attention branch contributes exactly nothing.
    """

    def __init__(self, dim: int, heads: int, *, context_dim: int | None = None, qk_norm: str | None = "rms",
                 inner_dim: int | None = None, bias: bool = True):
        super().__init__()
        inner = dim if inner_dim is None else inner_dim
        if inner % heads:
            raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, inner // heads
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.to_q = nn.Linear(dim, inner, bias=bias)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=bias)
        else:
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.qk_norm_full = qk_norm == "layer-full"
        self.q_norm = make_norm(qk_norm, inner if self.qk_norm_full else self.head_dim)
        self.k_norm = make_norm(qk_norm, inner if self.qk_norm_full else self.head_dim)
        self.proj = nn.Linear(inner, dim, bias=bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, N, _ = x.shape
        H, Dh = self.heads, self.head_dim
        if self.is_cross:
            L = context.shape[1]
            q = self.to_q(x).view(B, N, H, Dh)  # [B, N, H, Dh]
            k, v = self.to_kv(context).view(B, L, 2, H, Dh).unbind(2)  # 2 × [B, L, H, Dh]
        else:
            q, k, v = self.to_qkv(x).view(B, N, 3, H, Dh).unbind(2)  # 3 × [B, N, H, Dh]
        if self.qk_norm_full:  # one norm over all heads' channels [B, N, H·Dh]
            q, k = self.q_norm(q.flatten(2)).view_as(q), self.k_norm(k.flatten(2)).view_as(k)
        elif isinstance(self.q_norm, RMSNorm):
            # The logits see the two gains only through their product, Σ_d q̂_d·w_q,d·k̂_d·w_k,d: put w_q⊙w_k on
            # the queries and leave the keys gain-free (the same function and gradients, 4 fewer passes)
            q = rms_norm(q, self.q_norm.weight * self.k_norm.weight, self.q_norm.eps)
            k = rms_norm(k, None, self.k_norm.eps)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # self-attention only: rotary positions on the normalised queries and keys
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N|L, Dh]

        attn_mask = has_key = None
        if key_mask is not None:
            has_key = key_mask.any(dim=-1)  # [B]
            attn_mask = (key_mask | ~has_key[:, None])[:, None, None, :]  # [B, 1, 1, L]; empty rows see all keys
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, N, Dh]
        out = self.proj(out.transpose(1, 2).reshape(B, N, H * Dh))  # [B, N, dim]
        if has_key is not None:
            out = out * has_key[:, None, None].to(out.dtype)  # rows without any real key contribute 0
        return out


# ---------------------------------------------------------------------------------------------------------------
# Embeddings: noise level and 2-D positions


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[B] float → [B, dim]: [cos(t·ω_i), sin(t·ω_i)] with ω_i = max_period^(−i/(dim/2)) (DiT's convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Noise condition → vector: sinusoid of (noise_cond · scale), then Linear → SiLU → Linear (DiT §3.2).

    The scale maps the preconditioner's c_noise (EDM: ln σ / 4 ≈ −1.5 … 1.1) to the range of the integer
    timesteps (0 … 1000) the 10 000-period sinusoid was designed for.
    """

    def __init__(self, dim: int, *, scale: float = 1000.0, freq_dim: int = 256, act: str = "silu"):
        super().__init__()
        self.scale, self.freq_dim = scale, freq_dim
        acts = {"silu": nn.SiLU, "gelu-tanh": lambda: nn.GELU(approximate="tanh")}  # DiT; MicroDiT
        if act not in acts:
            raise ValueError(f"act={act!r} must be one of {', '.join(acts)}")
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), acts[act](), nn.Linear(dim, dim))

    def forward(self, noise_cond: torch.Tensor) -> torch.Tensor:
        emb = timestep_sinusoid(noise_cond * self.scale, self.freq_dim)  # [B, freq_dim], fp32
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # [B, dim]


def sincos_pos_embed_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions → [M, dim]: [sin(pos·ω_i), cos(pos·ω_i)], ω_i = 10000^(−i/(dim/2)) (MAE / Transformer)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width {dim} must be even")
    omega = 1.0 / 10_000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    args = pos.to(torch.float64)[:, None] * omega[None]  # [M, dim/2]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_pos_embed_2d(
    dim: int, grid_size: int, *, interp_scale: float = 1.0, base_size: int | None = None
) -> torch.Tensor:
    """Fixed 2-D positions for a grid_size² token grid → [grid_size², dim] float32 (tokens row-major).

    Coordinates are arange(grid_size) · base_size / grid_size / interp_scale (PixArt-α §2.4, MicroDiT
    `pos_interp_scale`): base_size defaults to grid_size, and interp_scale 2 at 512² keeps the 256² range of
    positions while doubling their density. The first half of the channels encodes the column (x), the second
    half the row (y), as in MAE/DiT.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width {dim} must be divisible by 4")
    base_size = grid_size if base_size is None else base_size
    coords = torch.arange(grid_size, dtype=torch.float64) * (base_size / grid_size) / interp_scale
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # [G, G] each
    emb_x = sincos_pos_embed_1d(dim // 2, xs.reshape(-1))  # [G², dim/2]
    emb_y = sincos_pos_embed_1d(dim // 2, ys.reshape(-1))  # [G², dim/2]
    return torch.cat([emb_x, emb_y], dim=1).float()  # [G², dim]


def sincos_pos_embed_hw(dim: int, grid_h: int, grid_w: int, *, step: float = 1.0) -> torch.Tensor:
    """`sincos_pos_embed_2d` on a grid_h × grid_w grid (an aspect-ratio bucket, data/buckets.py) → [gh·gw, dim],
    coordinates arange · step. With the square model's step, (base_size / grid) / interp_scale, a bucket's positions
    are the square grid's extended along one axis and cut along the other; gh = gw = grid gives
    `sincos_pos_embed_2d(dim, grid, interp_scale=…, base_size=…)` exactly."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width {dim} must be divisible by 4")
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64) * step,
                            torch.arange(grid_w, dtype=torch.float64) * step, indexing="ij")
    return torch.cat([sincos_pos_embed_1d(dim // 2, xs.reshape(-1)), sincos_pos_embed_1d(dim // 2, ys.reshape(-1))],
                     dim=1).float()


# ---------------------------------------------------------------------------------------------------------------
# Plain pre-LN transformer block and the text refiner


class TransformerBlock(nn.Module):
    """Pre-LN self-attention + MLP, each residual branch scaled by LayerScale; honours a key padding mask."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0, qk_norm: str | None = "rms",
                 layerscale_init: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale_init)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ls1(self.attn(self.norm1(x), key_mask=mask), x)  # x + γ1·attn
        return self.ls2(self.mlp(self.norm2(x)), x)  # x + γ2·mlp


class TextRefiner(nn.Module):
    """A few self-attention blocks over the projected caption tokens, then a final LayerNorm (ImageNet-T2I App. C:
    "before feeding the text condition to the model, we refine it using two self-attention layers").

    Padded tokens are never attended to, so real tokens come out independent of the padding's values; the
    padded positions carry garbage that the caller must keep masked in the cross-attention.
    """

    def __init__(self, dim: int, depth: int, heads: int, *, mlp_ratio: float = 4.0, qk_norm: str | None = "rms",
                 layerscale_init: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, heads, mlp_ratio=mlp_ratio, qk_norm=qk_norm, layerscale_init=layerscale_init)
             for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            y = block(y, mask)
        return self.norm(y)  # [B, L, D]


class CropEmbedder(nn.Module):
    """Normalised crop box [B, 4] → one crop-coordinate token [B, 1, D]: an MLP on the box mapped to [−1, 1]."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"crop_tokens must be normalised boxes [B, 4] = (x0, y0, x1, y1), got "
                             f"{list(boxes.shape)}; pass augment.crop.whole_image_boxes(B) for the whole image")
        return self.mlp(boxes.to(self.mlp[0].weight.dtype) * 2 - 1).unsqueeze(1)


def append_crop_token(embedder: CropEmbedder, y: torch.Tensor, y_mask: torch.Tensor | None,
                      boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption tokens y [B, L, D] (mask [B, L]) with the crop token appended: [B, L+1, D], [B, L+1]. A missing box
    means the whole image (inference)."""
    B, L = y.shape[:2]
    if boxes is None:
        boxes = whole_image_boxes(B, y.device)
    y = torch.cat([y, embedder(boxes.to(y.device)).to(y.dtype)], dim=1)
    if y_mask is None:
        y_mask = torch.ones(B, L, dtype=torch.bool, device=y.device)
    return y, torch.cat([y_mask.bool(), y_mask.new_ones(B, 1, dtype=torch.bool)], dim=1)


def forward_inputs(net: nn.Module, name: str, x: torch.Tensor, noise_cond, crop_tokens=None, *,
                   hint: str = "", buckets: bool = False) -> tuple[int, int, int, int, torch.Tensor]:
    """The forward preamble every backbone shares: crop_tokens need the crop-coordinate token (`crop_embedder`), x
    must be the [B, C, H, W] the network was built for (`net.config`; with `buckets`, any H, W in multiples of the
    patch size within the input_size² budget: an aspect bucket, data/buckets.py), noise_cond (scalar or [B])
    becomes [B]. Returns (B, C, H, W, noise_cond [B])."""
    if crop_tokens is not None and getattr(net, "crop_embedder", None) is None:
        raise ValueError(f"crop_tokens given to a {name} built without the crop-coordinate token; "
                         f"set model.crop_cond=true (and train with augment.crop.enabled=true)")
    cfg = net.config
    B, C, H, W = x.shape
    if buckets:
        p = cfg.patch_size
        if C != cfg.in_channels or H % p or W % p or H * W > cfg.input_size ** 2:  # an aspect bucket fits the budget
            raise ValueError(
                f"{name} built for inputs [B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}] (or an aspect "
                f"bucket of at most {cfg.input_size}² in multiples of {p}), got {list(x.shape)}{hint}")
    elif (C, H, W) != (cfg.in_channels, cfg.input_size, cfg.input_size):
        raise ValueError(f"{name} built for inputs [B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}], "
                         f"got {list(x.shape)}{hint}")
    return B, C, H, W, torch.as_tensor(noise_cond, device=x.device).expand(B)  # [B]
