"""MicroDiT: "Stretching Each Dollar: Diffusion Training from Scratch on a Micro-Budget" (MicroDiT).

A DiT (Peebles & Xie 2023) with captions by cross-attention, read top to bottom:

- **Deferred masking** (Fig. 2 and 6, App. D): a light **patch-mixer** (a few transformer blocks at their own width) runs
  on *all* patches; only then are 75 % of the patches dropped and the backbone runs on the kept 25 %. The output is
  the kept tokens' patches, and the loss is averaged over them only (the objective gathers the same tokens of the
  target, `diffusion/edm.py`). `masking="naive"` drops the patches before the mixer (with `mixer_depth=0`: the
  paper's naive-masking baseline, Fig. 2c/8); `"block"` keeps square blocks of patches (Fig. 3b/9d). Inference runs
  unmasked with the same weights (`keep_mask=None`).
- **Layer-wise scaling** (App. C, Table 4): block i's attention width and FFN hidden size grow linearly with depth,
  multipliers linspace(0.5 → 1.0) and linspace(0.5 → 4.0) of the width; the attention width is rounded up to a
  multiple of 2·head_dim (so heads = width / head_dim stay even). Cross-attention keeps the full width (App. C).
- **Expert-choice MoE** (App. C, Fig. 7; `moe.py`) replaces the FFN in every 2nd block (never the last backbone
  block; mixer block 0 never): 8 experts, capacity 2.
- **Blocks**: bias-free LayerNorms; self-attention and FFN modulated by adaLN (shift, scale, gate) from
  c = t_emb + MLP(mean caption token); cross-attention to the refined caption un-gated and un-modulated; dense FFN
  is SwiGLU (Fig. 9f), experts are GELU MLPs; QK-norm (non-affine LayerNorm over all heads, App. B).
- **Caption path**: Mlp projection (GELU, LayerNorm in the middle) → one pre-LN self-attention + SwiGLU refiner
  block (Fig. 6 "we process the caption embeddings using an attention layer") → cross-attention K/V of every block.
- **Crop IA** (`crop_cond`; ImageNet-T2I App. F, `augment/crop.py`; our choice, the paper has no guidance): the crop's
  box (`crop_tokens`) becomes one token appended to the caption, and the mixer runs on the crop's tokens only;
  `keep_mask` (⊆ the crop) then selects the backbone's tokens among them, so 75 % masking masks the cropped image.
- **Init**: xavier-uniform linears; q/k/v and FFN-in N(0, 0.02); output projections depth-scaled
  N(0, 0.02/√(2(i+1))) in backbone block i and N(0, 0.02/√(2·depth)) in the mixer; adaLN modulations, the refiner's
  output projections and the final linear zero — the untrained network outputs exactly 0, so the EDM denoiser
  starts as c_skip·x.

Architecture facts (widths, rounding, MoE placement, parameter counts 1,165.4M / 200.7M) follow the reference code as
summarised in reference/anchors.md §2.2. Architecture only: no optimizer, logging, distributed code or environment
reads (aesthetics.md §3 habit 5); the mask *sampling* lives here as pure functions of a generator, the trainer calls
them with its per-step generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..augment.crop import box_keep_mask
from ..config import MicroDiTConfig
from .layers import (
    Attention,
    CropEmbedder,
    Mlp,
    RepaHead,
    SwiGLU,
    TimestepEmbedder,
    append_crop_token,
    forward_inputs,
    keep_tokens,
    masked_mean,
    modulate,
    patchify,
    run_blocks,
    sincos_pos_embed_2d,
    unpatchify,
)
from .moe import ExpertChoiceMoE

# ---------------------------------------------------------------------------------------------------------------
# Layer-wise scaling and MoE placement (App. C)


def round_up(n: int, multiple: int) -> int:
    return multiple * ((n + multiple - 1) // multiple)


def swiglu_hidden(mlp_hidden: int, multiple_of: int) -> int:
    """SwiGLU keeps the parameter count of a GELU MLP of hidden `mlp_hidden`: ⌈⌊2/3·mlp_hidden⌋⌉ to `multiple_of`."""
    return round_up(int(2 * mlp_hidden / 3), multiple_of)


@dataclass(frozen=True)
class BlockSpec:
    """Widths of one transformer block."""

    attn_width: int  # q/k/v width of the self-attention (heads · head_dim)
    heads: int
    mlp_hidden: int  # width · FFN multiplier; SwiGLU / expert hidden sizes are derived from it
    moe: bool
    out_std: float  # init std of the block's output projections (depth-scaled)


def backbone_specs(cfg: MicroDiTConfig) -> list[BlockSpec]:
    """Per-block widths of the backbone: multipliers linspace(qkv_ratio) and linspace(ffn_ratio) over the depth."""
    D, hd, depth = cfg.width, cfg.head_dim, cfg.depth
    qkv = np.linspace(*cfg.qkv_ratio, num=depth, dtype=float)
    ffn = np.linspace(*cfg.ffn_ratio, num=depth, dtype=float)
    specs = []
    for i in range(depth):
        # attention width rounded up to a multiple of 2·head_dim; a multiplier of exactly 1 keeps the full width
        attn = D if qkv[i] == 1.0 else round_up(int(D * qkv[i]), 2 * hd)
        moe = cfg.moe and (i + 1) % cfg.experts_every == 0 and i < depth - 1  # never the last block
        specs.append(BlockSpec(attn, attn // hd, int(D * ffn[i]), moe, 0.02 / (2 * (i + 1)) ** 0.5))
    return specs


def mixer_specs(cfg: MicroDiTConfig) -> list[BlockSpec]:
    """Patch-mixer blocks: constant width `mixer_width`, FFN `mixer_mlp_ratio`; MoE as in the backbone but never in
    block 0 (the reference's placement)."""
    Dm = cfg.mixer_width
    return [BlockSpec(Dm, Dm // cfg.head_dim, int(Dm * cfg.mixer_mlp_ratio),
                      cfg.moe and i >= 1 and (i + 1) % cfg.experts_every == 0, 0.02 / (2 * cfg.depth) ** 0.5)
            for i in range(cfg.mixer_depth)]


# ---------------------------------------------------------------------------------------------------------------
# Patch masking (Fig. 2; block masking Fig. 3b, App. D.2 / Fig. 9d). Pure functions of a generator: the trainer
# passes its per-step one.


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """⌊N·(1 − mask_ratio)⌋ tokens kept (at least 1): 64 of 256 at 75 %."""
    return max(1, int(num_tokens * (1 - mask_ratio)))


def random_keep_mask(batch: int, num_tokens: int, mask_ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """[B, N] bool, exactly `num_kept` True per row at uniformly random positions (MAE-style shuffle)."""
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, num_tokens, generator=generator, device=gen_device)  # [B, N]
    ids = noise.argsort(dim=1)[:, : num_kept(num_tokens, mask_ratio)]  # [B, N_keep]
    keep = torch.zeros(batch, num_tokens, dtype=torch.bool, device=gen_device).scatter_(1, ids, True)
    return keep.to(device)


def block_keep_mask(batch: int, grid: int, mask_ratio: float, block: int, *, generator=None,
                    device=None) -> torch.Tensor:
    """[B, grid²] bool keeping whole block×block squares of patches at random (Fig. 9d), or with block = 0 a single
    square of side round(grid·√(1 − mask_ratio)) at a random position (the paper's "square" row)."""
    gen_device = generator.device if generator is not None else device
    if block > 0:
        g = grid // block
        keep = random_keep_mask(batch, g * g, mask_ratio, generator=generator, device=gen_device).view(batch, g, g)
        keep = keep.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)  # [B, grid, grid]
    else:
        side = max(1, round(grid * (1 - mask_ratio) ** 0.5))
        y0, x0 = torch.randint(0, grid - side + 1, (2, batch, 1), generator=generator, device=gen_device)
        pos = torch.arange(grid, device=gen_device)[None]  # [1, grid]
        rows, cols = (pos >= y0) & (pos < y0 + side), (pos >= x0) & (pos < x0 + side)  # [B, grid] each
        keep = rows[:, :, None] & cols[:, None, :]  # [B, grid, grid]
    return keep.reshape(batch, grid * grid).to(device)


def sample_keep_mask(cfg: MicroDiTConfig, batch: int, *, generator=None, device=None) -> torch.Tensor | None:
    """The training keep-mask [B, N] for `cfg.masking` at `cfg.mask_ratio`; None when the model trains unmasked."""
    if cfg.mask_ratio <= 0:
        return None
    grid = cfg.input_size // cfg.patch_size
    if cfg.masking == "block":
        return block_keep_mask(batch, grid, cfg.mask_ratio, cfg.mask_block, generator=generator, device=device)
    return random_keep_mask(batch, grid * grid, cfg.mask_ratio, generator=generator, device=device)


# ---------------------------------------------------------------------------------------------------------------
# Blocks


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, bias=False)  # bias-free LayerNorm everywhere (reference `create_norm`)


def _init_swiglu(ffn: SwiGLU, out_std: float) -> None:
    """Gate N(0, 0.02); up and down projections N(0, out_std) (reference FFN init), truncated at ±2."""
    h = ffn.hidden
    nn.init.trunc_normal_(ffn.fc1.weight[:h], std=0.02)
    nn.init.trunc_normal_(ffn.fc1.weight[h:], std=out_std)
    nn.init.trunc_normal_(ffn.fc2.weight, std=out_std)


class CaptionRefiner(nn.Module):
    """One pre-LN self-attention + SwiGLU block over the projected caption tokens (Fig. 6); padded keys are masked."""

    def __init__(self, dim: int, heads: int, ffn_hidden: int, *, qk_norm: str | None, bias: bool):
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = Attention(dim, heads, qk_norm=qk_norm, bias=bias)
        self.norm2 = _norm(dim)
        self.ffn = SwiGLU(dim, ffn_hidden, bias=bias)

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.attn.to_qkv.weight, std=0.02)
        _init_swiglu(self.ffn, 0.02)
        nn.init.zeros_(self.attn.proj.weight)  # zero output projections: the refiner starts as the identity
        nn.init.zeros_(self.ffn.fc2.weight)

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = y + self.attn(self.norm1(y), key_mask=mask)
        return y + self.ffn(self.norm2(y))  # [B, L, D]


class MicroDiTBlock(nn.Module):
    """adaLN-modulated, gated self-attention → un-gated cross-attention to the caption → adaLN-modulated, gated FFN
    (dense SwiGLU or expert-choice MoE). `dim` is the residual width, `spec` the block's layer-wise widths."""

    def __init__(self, dim: int, spec: BlockSpec, cfg: MicroDiTConfig):
        super().__init__()
        qk_norm = "layer-full" if cfg.qk_norm else None
        self.out_std = spec.out_std
        self.norm1 = _norm(dim)
        self.attn = Attention(dim, spec.heads, qk_norm=qk_norm, inner_dim=spec.attn_width, bias=cfg.bias)
        self.norm2 = _norm(dim)
        # cross-attention keeps the full width: scaling it down would weaken the caption's control (App. C)
        self.cross_attn = Attention(dim, dim // cfg.head_dim, context_dim=dim, qk_norm=qk_norm, bias=cfg.bias)
        self.norm3 = _norm(dim)
        if spec.moe:
            self.ffn = ExpertChoiceMoE(dim, round_up(spec.mlp_hidden, cfg.multiple_of), cfg.num_experts,
                                       cfg.expert_capacity)
        else:
            self.ffn = SwiGLU(dim, swiglu_hidden(spec.mlp_hidden, cfg.multiple_of), bias=cfg.bias)
        # adaLN from c (backbone width, also in the mixer): shift/scale/gate for attention and FFN
        self.adaLN = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(cfg.width, 6 * dim))

    def reset_parameters(self) -> None:
        for lin in (self.attn.to_qkv, self.cross_attn.to_q, self.cross_attn.to_kv):
            nn.init.trunc_normal_(lin.weight, std=0.02)
        for lin in (self.attn.proj, self.cross_attn.proj):
            nn.init.trunc_normal_(lin.weight, std=self.out_std)
        if isinstance(self.ffn, ExpertChoiceMoE):
            self.ffn.reset_parameters(self.out_std)
        else:
            _init_swiglu(self.ffn, self.out_std)
        nn.init.zeros_(self.adaLN[-1].weight)  # adaLN-Zero: gates start at 0, the block starts as cross-attention only
        nn.init.zeros_(self.adaLN[-1].bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None, c: torch.Tensor) -> torch.Tensor:
        # x [B, N, dim] image tokens, y [B, L, dim] caption tokens, y_mask [B, L], c [B, width] conditioning
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)  # [B, dim] each
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross_attn(self.norm2(x), y, key_mask=y_mask)
        return x + gate2.unsqueeze(1) * self.ffn(modulate(self.norm3(x), shift2, scale2))


class FinalLayer(nn.Module):
    """LayerNorm → adaLN modulation (shift, scale from c) → Linear to p²·C per token; zero-initialised."""

    def __init__(self, width: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = _norm(width)
        self.adaLN = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)  # [B, D] each
        return self.linear(modulate(self.norm(x), shift, scale))  # [B, N, p²C]


# ---------------------------------------------------------------------------------------------------------------
# MicroDiT


class MicroDiT(nn.Module):
    """Patch-mixer + masked backbone with layer-wise scaling and expert-choice MoE (MicroDiT, Fig. 6)."""

    def __init__(self, cfg: MicroDiTConfig):
        super().__init__()
        self.config = cfg
        D, Dm, p, C = cfg.width, cfg.mixer_width, cfg.patch_size, cfg.in_channels
        qk_norm = "layer-full" if cfg.qk_norm else None
        self.grid = cfg.input_size // p

        # Embeddings: patches (a stride-p conv as a Linear over patchified tokens), fixed sin-cos positions
        # (interpolated at 512², `pos_interp_scale` 2), noise level, caption
        self.x_embedder = nn.Linear(p * p * C, D)
        pos = sincos_pos_embed_2d(D, self.grid, interp_scale=cfg.pos_interp_scale)  # [N, D]
        self.register_buffer("pos_embed", pos[None], persistent=False)  # [1, N, D], rebuilt from the config
        self.t_embedder = TimestepEmbedder(D, scale=cfg.noise_embed_scale, freq_dim=512, act="gelu-tanh")
        self.y_embedder = Mlp(cfg.text_dim, D, out_dim=D, mid_norm=True)  # caption projection
        self.y_refiner = CaptionRefiner(D, D // cfg.head_dim, swiglu_hidden(4 * D, cfg.multiple_of), qk_norm=qk_norm,
                                        bias=cfg.bias)
        self.y_pool = Mlp(D, D, mid_norm=True)  # mean caption token → added to the time embedding
        self.crop_embedder = CropEmbedder(D) if cfg.crop_cond else None  # Crop IA's crop-coordinate token

        # Patch-mixer over all patches; maps between the backbone and mixer widths when they differ
        self.mixer = nn.ModuleList([MicroDiTBlock(Dm, s, cfg) for s in mixer_specs(cfg)])
        mapped = cfg.mixer_depth > 0 and Dm != D
        self.mixer_in = nn.Sequential(_norm(D), nn.Linear(D, Dm, bias=cfg.bias)) if mapped else nn.Identity()
        self.mixer_y = nn.Sequential(_norm(D), nn.Linear(D, Dm, bias=cfg.bias)) if mapped else nn.Identity()
        self.mixer_out = nn.Sequential(_norm(Dm), nn.Linear(Dm, D, bias=cfg.bias)) if mapped else nn.Identity()

        self.blocks = nn.ModuleList([MicroDiTBlock(D, s, cfg) for s in backbone_specs(cfg)])
        self.final_layer = FinalLayer(D, p, C)
        # REPA's projector (training only): block `repa_depth`'s tokens → teacher features
        self.repa_head = RepaHead(D, cfg.repa_hidden, cfg.repa_dim) if cfg.repa_depth else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():  # xavier-uniform linears, zero biases (DiT)
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.y_embedder.fc1, self.y_embedder.fc2,
                    self.y_pool.fc1, self.y_pool.fc2):
            nn.init.normal_(lin.weight, std=0.02)
        self.y_refiner.reset_parameters()
        for block in [*self.mixer, *self.blocks]:
            block.reset_parameters()
        for lin in (self.final_layer.adaLN[-1], self.final_layer.linear):  # the network's output starts at 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        x: torch.Tensor,
        noise_cond: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor | None,
        *,
        keep_mask: torch.Tensor | None = None,
        crop_tokens: torch.Tensor | None = None,
        route_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, H, W] preconditioned noisy input; noise_cond [B] (or scalar) c_noise; text_tokens [B, L, text_dim];
        text_mask [B, L] bool, True = real token.

        keep_mask [B, N] bool (N = (H/p)·(W/p) tokens, row-major; the same number of True per row, e.g. from
        `sample_keep_mask`): the backbone runs on those tokens only and the output is their patches
        [B, N_keep, p²·C] in token order (compare with `layers.patchify(target, p)` gathered by `keep_tokens`).

        crop_tokens [B, 4] normalised crop boxes (x0, y0, x1, y1) of Crop IA (needs `crop_cond`; None = whole
        image): the crop token joins the caption, the mixer sees only the crop's tokens, and keep_mask (default:
        the crop) must lie inside the crop (`crop_patch_mask` below draws one).

        route_mask [B, N_keep] bool (TREAD, training only): the backbone tokens that go through blocks route_start …
        route_end − 1; the others skip them. Routing composes with deferred masking: the mixer sees every patch, the
        backbone the kept ones, and the routed span a share of those.

        Returns F(x) [B, C, H, W] (or [B, N_keep, p²·C] with keep_mask or a crop).
        """
        B, C, H, W, noise_cond = forward_inputs(self, "MicroDiT", x, noise_cond, crop_tokens,
                                                hint="; set model.input_size / model.in_channels to match the data")
        cfg, p = self.config, self.config.patch_size

        # Conditioning: caption → refined tokens y [B, L, D]; c = t_emb + MLP(mean real caption token) [B, D]
        y = self.y_embedder(text_tokens)
        if self.crop_embedder is not None:  # + crop-coordinate token [B, L+1, D], always attended and pooled
            y, text_mask = append_crop_token(self.crop_embedder, y, text_mask, crop_tokens)
        y = self.y_refiner(y, text_mask)
        c = self.t_embedder(noise_cond) + self.y_pool(masked_mean(y, text_mask))

        h = self.x_embedder(patchify(x, p)) + self.pos_embed  # [B, N, D]
        crop = None if crop_tokens is None else box_keep_mask(crop_tokens.to(x.device), self.grid)  # [B, N]
        inner = keep_mask  # the kept tokens among those the mixer sees
        if crop is not None and not bool(crop.all()):  # Crop: the mixer sees the crop's tokens only
            if keep_mask is None:
                keep_mask = crop
            elif bool((keep_mask & ~crop).any()):
                raise ValueError("keep_mask keeps tokens outside the crop of crop_tokens; draw it inside the crop "
                                 "(models.microdit.crop_patch_mask)")
            h, inner = keep_tokens(h, crop), keep_tokens(keep_mask, crop)  # [B, N_crop, D], [B, N_crop]
        if inner is not None and cfg.masking == "naive":  # naive masking: drop patches before any mixing
            h = keep_tokens(h, inner)  # [B, N_keep, D]
        if len(self.mixer):
            h, y_mixer = self.mixer_in(h), self.mixer_y(y)  # [B, N, Dm], [B, L, Dm]
            for block in self.mixer:
                h = block(h, y_mixer, text_mask, c)
        if inner is not None and cfg.masking != "naive":  # deferred masking: after the mixer saw all patches
            h = keep_tokens(h, inner)  # [B, N_keep, Dm]
        h = self.mixer_out(h)  # [B, N | N_keep, D]; mapped after masking to save compute (reference)

        h = run_blocks(self.blocks, h, lambda block, h, _layout: block(h, y, text_mask, c), route_mask, cfg.route_start,
                       cfg.route_end)
        out = self.final_layer(h, c)  # [B, N | N_keep, p²C]
        return out if keep_mask is not None else unpatchify(out, p, C, H, W)


# ---------------------------------------------------------------------------------------------------------------
# MicroDiT configs (presets.py wraps them into RunConfigs; exact counts are tested on the meta device)

MICRODIT_CONFIGS: dict[str, MicroDiTConfig] = {
    # MicroDiT large scale: DiT-XL/2-sized, 6-block mixer at 768, 13 + 3 MoE blocks. 1,165,442,320 params
    # (paper: 1.16B; mixer 186.4M, backbone 958.2M); 639,980,816 with every MoE FFN a dense SwiGLU (moe=False)
    "microdit-xl-2": MicroDiTConfig(in_channels=4, input_size=32, text_dim=1024, width=1024, depth=28, head_dim=64,
                                    mixer_depth=6, mixer_width=768),
    # The same network at 512² (64×64 latents): positions interpolated ×2 (stage 3/4 of Table 3)
    "microdit-xl-2-512": MicroDiTConfig(in_channels=4, input_size=64, text_dim=1024, width=1024, depth=28,
                                        head_dim=64, mixer_depth=6, mixer_width=768, pos_interp_scale=2.0),
    # MicroDiT small scale (App. D ablations): DiT-Tiny/2, 4-block mixer at 512, 7 + 2 MoE blocks. 200,692,752 params
    "microdit-tiny-2": MicroDiTConfig(in_channels=4, input_size=32, text_dim=1024, width=512, depth=16, head_dim=32,
                                      mixer_depth=4, mixer_width=512),
    # CPU world: 3×32×32 pixels with p = 2 → 256 tokens (the paper's 256² token count), MiniLM (384-d) captions,
    # a 1-block mixer narrower than the backbone so 75 % masking pays off on a CPU. 9,767,692 params
    "world-microdit-s": MicroDiTConfig(in_channels=3, input_size=32, text_dim=384, width=192, depth=8, head_dim=32,
                                       mixer_depth=1, mixer_width=128, multiple_of=64),
    # CI: 3×16×16 pixels, 64 tokens, 4 experts. 516,428 params
    "world-microdit-tiny": MicroDiTConfig(in_channels=3, input_size=16, text_dim=384, width=64, depth=4, head_dim=16,
                                          mixer_depth=1, mixer_width=32, multiple_of=16, num_experts=4),
}


def crop_patch_mask(crop_keep: torch.Tensor, mask_ratio: float, *, generator=None) -> torch.Tensor:
    """MicroDiT under Crop: keep a uniform random ⌊N_crop·(1 − mask_ratio)⌋ (≥ 1) of each row's crop tokens;
    [B, N] bool, a subset of `crop_keep`."""
    B, N = crop_keep.shape
    n_crop = int(crop_keep[0].sum())
    gen_device = generator.device if generator is not None else crop_keep.device
    noise = torch.rand(B, N, generator=generator, device=gen_device).to(crop_keep.device)
    noise = noise.masked_fill(~crop_keep, 2.0)  # tokens outside the crop sort last
    ids = noise.argsort(dim=1)[:, : num_kept(n_crop, mask_ratio)]
    return torch.zeros_like(crop_keep).scatter_(1, ids, True)
