"""DiT-I: the text-conditional DiT of "How far can we go with ImageNet for Text-to-Image generation?" (ImageNet-T2I,
App. C, Fig. 6 left).

DiT (Peebles & Xie 2023) adapted to captions, read top to bottom:

- **Text by cross-attention**, as in PixArt-α (Chen et al. 2023, §2.3): each block is self-attention →
  cross-attention to the caption tokens → MLP, each pre-LN with a residual. The caption's key padding mask is
  honoured everywhere, and a fully padded caption (dropped for classifier-free guidance) contributes nothing.
- **Text refiner**: the projected caption tokens first go through two self-attention blocks (App. C).
- **QK-normalisation** (RMSNorm on per-head queries and keys) in every self- and cross-attention, "to
  mitigate sudden growths of attention entropy" (App. C, after SD3).
- **LayerScale** (γ initialised to `layerscale_init`) on every residual branch "for further stability" (App. C).
- **Timestep conditioning by adaLN-single** (PixArt-α §2.3). The paper replaces DiT's adaLN-Zero by
  cross-attention but the network still needs the noise level. DiT's adaLN-Zero spends a Linear(D, 6D) per
  block (≈ 6·D² parameters: 6.3M per block, 151M of a 24-block D=1024 model). adaLN-single computes the
  shift/scale vectors once, from the time embedding with one shared Linear(D, 6D), and each block adds its own
  learned [6, D] table to them. We modulate all three sub-layers (shift + scale per sub-layer = 6 vectors) and
  drop DiT's gates: the LayerScale γ plays the role of the residual gate.
- **Init**: xavier-uniform linears, normal(0.02) for the time MLPs (DiT), randn/√D tables (PixArt), and a
  zero-initialised final linear so the initial output is exactly 0 — with EDM preconditioning
  D(x) = c_skip·x + c_out·F(x) the untrained denoiser then starts as the optimal-at-σ→0 skip connection.
- **Token keep-mask**: `keep_mask` drops image tokens after patch embedding + positions (for the Crop
  augmentation and MicroDiT's patch masking); the network then returns the kept tokens' patches.
- **Crop token** (`crop_cond`, Crop IA, App. F; `augment/crop.py`): the crop's normalised box is embedded into one
  token appended to the caption before the refiner; without `crop_tokens` it says "whole image" (0, 0, 1, 1).

Architecture only: no optimizer, logging, distributed code or environment reads (aesthetics.md §3 habit 5).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import DiTIConfig
from .layers import (
    Attention,
    CropEmbedder,
    LayerScale,
    MixFFN,
    Mlp,
    RepaHead,
    TextRefiner,
    TimestepEmbedder,
    TokenLayout,
    append_crop_token,
    forward_inputs,
    keep_tokens,
    masked_mean,
    modulate,
    patchify,
    rope_angles,
    rope_rotation,
    run_blocks,
    sincos_pos_embed_2d,
    sincos_pos_embed_hw,
    unpatchify,
)

# ---------------------------------------------------------------------------------------------------------------
# Core DiT-I block


class DiTIBlock(nn.Module):
    """Self-attention → cross-attention to the refined text → MLP; pre-LN, adaLN-single modulation, LayerScale."""

    def __init__(self, cfg: DiTIConfig, qk_norm: str | None):
        super().__init__()
        D = cfg.width
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)  # affine comes from the modulation
        self.attn = Attention(D, cfg.heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(D, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(D, cfg.heads, context_dim=D, qk_norm=qk_norm)
        self.ls2 = LayerScale(D, cfg.layerscale_init)
        self.norm3 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = MixFFN(D, int(D * cfg.mlp_ratio)) if cfg.mix_ffn else Mlp(D, int(D * cfg.mlp_ratio))
        self.ls3 = LayerScale(D, cfg.layerscale_init)
        # adaLN-single (PixArt-α §2.3): this block's learned offset to the shared shift/scale vectors
        self.scale_shift_table = nn.Parameter(torch.randn(6, D) / D**0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None, t6: torch.Tensor,
                layout: TokenLayout | None = None) -> torch.Tensor:
        # x [B, N, D] image tokens, y [B, L, D] refined text, y_mask [B, L], t6 [B, 6, D] shared modulation,
        # layout: the tokens' grid positions (needed by model.rope / model.mix_ffn, else None)
        shift1, scale1, shift2, scale2, shift3, scale3 = (self.scale_shift_table[None] + t6).unbind(1)  # [B, D]
        rope = None if layout is None else layout.rope
        x = self.ls1(self.attn(modulate(self.norm1(x), shift1, scale1), rope=rope), x)  # x + γ1·attn, one fused op
        x = self.ls2(self.cross_attn(modulate(self.norm2(x), shift2, scale2), y, key_mask=y_mask), x)
        h = modulate(self.norm3(x), shift3, scale3)
        x = self.ls3(self.mlp(h, layout) if isinstance(self.mlp, MixFFN) else self.mlp(h), x)
        return x


class FinalLayer(nn.Module):
    """LayerNorm → adaLN-single modulation (from the raw time embedding, PixArt-α) → Linear to p²·C per token."""

    def __init__(self, width: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, width) / width**0.5)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).unbind(1)  # [B, D] each
        return self.linear(modulate(self.norm(x), shift, scale))  # [B, N, p²C]


# ---------------------------------------------------------------------------------------------------------------
# DiT-I


class DiTI(nn.Module):
    """Text-conditional DiT with cross-attention, text refiner, QK-norm and LayerScale (ImageNet-T2I, App. C)."""

    def __init__(self, cfg: DiTIConfig):
        super().__init__()
        self.config = cfg
        D, p, C = cfg.width, cfg.patch_size, cfg.in_channels
        if cfg.input_size % p:
            raise ValueError(f"input_size {cfg.input_size} is not divisible by patch_size {p}")
        self.grid = cfg.input_size // p
        qk_norm = "rms" if cfg.qk_norm else None

        # Embeddings: patches (a stride-p conv written as a Linear over patchified tokens), fixed 2-D sin-cos
        # positions, noise level, caption
        self.x_embedder = nn.Linear(p * p * C, D)
        pos = sincos_pos_embed_2d(D, self.grid, interp_scale=cfg.pos_interp_scale)  # [N, D]
        self.register_buffer("pos_embed", pos[None], persistent=False)  # [1, N, D], rebuilt from the config
        if cfg.rope:  # + 2-D RoPE in the self-attention (a convergence option, not in ImageNet-T2I)
            rot = rope_rotation(rope_angles(self.grid, D // cfg.heads, interp_scale=cfg.pos_interp_scale))
            self.register_buffer("rope_rot", rot[None], persistent=False)  # [1, N, Dh/2, 2]
        self.t_embedder = TimestepEmbedder(D, scale=cfg.noise_embed_scale)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # adaLN-single: shared by all blocks
        self.y_embedder = nn.Linear(cfg.text_dim, D)
        self.crop_embedder = CropEmbedder(D) if cfg.crop_cond else None  # Crop IA's crop-coordinate token
        self.text_refiner = TextRefiner(D, cfg.refiner_depth, cfg.heads, mlp_ratio=cfg.mlp_ratio, qk_norm=qk_norm,
                                        layerscale_init=cfg.layerscale_init)
        # model.text_film: the mean refined caption token joins the time embedding, so adaLN-single modulates every
        # block by the caption too (MicroDiT §3's pooled-caption conditioning; not in ImageNet-T2I)
        self.y_pool = Mlp(D, D) if cfg.text_film else None

        self.blocks = nn.ModuleList([DiTIBlock(cfg, qk_norm) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(D, p, C)
        # REPA's projector (training only): block `repa_depth`'s tokens → teacher features
        self.repa_head = RepaHead(D, cfg.repa_hidden, cfg.repa_dim) if cfg.repa_depth else None
        self.initialize_weights()

    def initialize_weights(self):
        # Xavier-uniform for every linear, zero biases (DiT)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Time embedding MLP and the shared adaLN-single projection: normal(0, 0.02) (DiT, PixArt-α)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        if self.y_pool is not None:  # starts as a no-op: the caption's share of the modulation grows from 0
            nn.init.zeros_(self.y_pool.fc2.weight)
        # Zero-init the output projection: F(x) = 0 at step 0, so the EDM denoiser starts as c_skip·x
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

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
        """x [B, C, H, W] noisy input (preconditioned by the objective); noise_cond [B] (or scalar) the
        preconditioner's c_noise; text_tokens [B, L, text_dim]; text_mask [B, L] bool, True = real token.

        keep_mask [B, N] bool (N = (H/p)·(W/p) tokens, row-major), the same number of True per row: only those
        tokens are processed, and the output is their patches [B, N_keep, p²·C] in token order instead of an
        image (the caller compares them with `layers.patchify(target, p)[keep_mask]`).

        crop_tokens [B, 4] the normalised crop boxes (x0, y0, x1, y1) of Crop IA (needs `crop_cond`); None = the
        whole image. Under Crop the trainer passes the crop's tokens as keep_mask (`augment.crop.sample_crop`).

        route_mask [B, N | N_keep] bool (TREAD, training only; `models.sample_route_mask`): the tokens that go through
        blocks route_start … route_end − 1; the others skip them.

        Returns F(x) [B, C, H, W] (or [B, N_keep, p²·C] with keep_mask).
        """
        B, C, H, W, noise_cond = forward_inputs(self, "DiT-I", x, noise_cond, crop_tokens, buckets=True)
        cfg, p = self.config, self.config.patch_size

        # Image tokens: patch embedding + fixed positions (a bucket's grid: the square's spacing, data/buckets.py)
        square = H == W == cfg.input_size
        pos = self.pos_embed if square else sincos_pos_embed_hw(
            self.pos_embed.shape[-1], H // p, W // p, step=1.0 / cfg.pos_interp_scale).to(x.device)[None]
        h = self.x_embedder(patchify(x, p)) + pos  # [B, N, D]
        layout = None
        if cfg.rope or cfg.mix_ffn:  # the tokens' places on the grid, kept in step with masking and routing
            rope = None
            if cfg.rope:  # [B, N, Dh/2, 2]
                rope = (self.rope_rot if square else rope_rotation(rope_angles(
                    H // p, cfg.width // cfg.heads, cols=W // p, interp_scale=cfg.pos_interp_scale)).to(x.device)[None])
                rope = rope.expand(B, -1, -1, -1)
            ids = torch.arange(h.shape[1], device=x.device).expand(B, -1)  # [B, N]
            layout = TokenLayout(ids, H // p, W // p, rope)
        if keep_mask is not None:  # Crop / patch masking: positions stay those of the whole image
            h = keep_tokens(h, keep_mask)  # [B, N_keep, D]
            layout = None if layout is None else layout.keep(keep_mask)

        # Conditioning: noise level → t [B, D] and the shared modulation t6 [B, 6, D]; caption → refined y [B, L, D]
        t = self.t_embedder(noise_cond)
        y = self.y_embedder(text_tokens)
        if self.crop_embedder is not None:  # + crop-coordinate token [B, L+1, D], always attended
            y, text_mask = append_crop_token(self.crop_embedder, y, text_mask, crop_tokens)
        y = self.text_refiner(y, text_mask)
        if self.y_pool is not None:  # t += MLP(mean over the real caption tokens)
            t = t + self.y_pool(masked_mean(y, text_mask))
        t6 = self.t_block(t).view(B, 6, -1)

        h = run_blocks(self.blocks, h, lambda block, h, layout: block(h, y, text_mask, t6, layout), route_mask,
                       cfg.route_start, cfg.route_end, layout)
        out = self.final_layer(h, t)  # [B, N | N_keep, p²C]
        if keep_mask is not None:
            return out
        return unpatchify(out, p, C, H, W)  # [B, C, H, W]


# ---------------------------------------------------------------------------------------------------------------
# DiT-I configs (the lead's presets.py wraps them into RunConfigs; counts are exact, tested in test_models.py)

DIT_I_CONFIGS: dict[str, DiTIConfig] = {
    # ImageNet-T2I: DiT-L/2 backbone on 4×32×32 SD-VAE latents, flan-T5-XL tokens. 438,143,248 params (paper: 0.4B)
    "dit-i-256": DiTIConfig(in_channels=4, input_size=32, text_dim=2048, patch_size=2, width=1024, depth=24, heads=16),
    # The same network fine-tuned at 512² (64×64 latents), positions interpolated ×2. 438,143,248 params
    "dit-i-512": DiTIConfig(in_channels=4, input_size=64, text_dim=2048, patch_size=2, width=1024, depth=24, heads=16,
                            pos_interp_scale=2.0),
    # CI: 3×16×16 pixels, 16 tokens, MiniLM (384-d) tokens. 311,024 params
    "world-tiny": DiTIConfig(in_channels=3, input_size=16, text_dim=384, patch_size=4, width=64, depth=2, heads=4),
    # CPU demo: 4×8×8 world-VAE latents (32 px images), patch 1 → 64 tokens, MiniLM tokens. 573,380 params: width
    # 64 trains 2.5× the images per CPU second of width 128 and ends ahead in the same minutes (EXPERIMENTS.md,
    # time-to-quality, session 6)
    "world-s": DiTIConfig(in_channels=4, input_size=8, text_dim=384, patch_size=1, width=64, depth=6, heads=4),
}
