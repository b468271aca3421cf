"""CAD-I: the text-conditional RIN of "How far can we go with ImageNet for Text-to-Image generation?" (ImageNet-T2I,
App. C, Fig. 6 right), i.e. the network of CAD (Dufour et al. 2024, App.) trained on ImageNet only.

A Recurrent Interface Network (RIN, Jabri et al. 2023) splits the computation between two token sets: the *data*
tokens (one per image patch, narrow) and a small set of learned *latent* tokens (wide) that do most of the work.
Read top to bottom:

- **Data tokens**: patchify → Linear (a stride-p conv) → LayerNorm → + learned positions.
- **Latents**: `num_latents` learned tokens with the time embedding **added** to every one of them (CAD sets
  `concat_cond_token_to_latents: false`). The time embedding is the sinusoid of noise_cond·1000 (the VP
  objective feeds γ = ᾱ, the signal level, as CAD does), then an MLP from latent_dim/4 to latent_dim.
- **Latent self-conditioning** (RIN §3.4): the latents of a previous forward pass come back through
  LN → MLP residual → LN (the last LN zero-initialised, so an untrained network ignores them) and are added to
  the initial latents. `prev_latents=None` means zeros, which is also what a dropped self-condition feeds. The
  network only *accepts* previous latents and *returns* its own (`return_latents=True`); the two-pass training
  (keep with probability `self_cond_rate`) and the carry-over between sampler steps live in
  `diffusion/backbone.py`, outside the model.
- **Text**: Linear(text_dim → latent_dim) on the caption tokens, 16 learned registers prepended, then two
  self-attention refiner blocks with LayerScale 0.1 (CAD `RINTextCond`). The cross-attention context is
  [time token; registers; caption]: the time token and the registers are always visible, so a fully padded
  (dropped) caption still leaves keys to attend to.
- **Each block** (`RINBlock`): (1) latents cross-attend to the text context, padding mask honoured; (2) latents
  *read* from the data tokens; (3) `block_depth` latent self-attention layers; (4) data tokens *write* back from
  the latents. Every layer is pre-LN attention + GELU MLP; in cross-attention only the query side is normalised
  and the attention width is min(query width, context width) (CAD's `CrossAttentionBlock`). No QK-norm unless
  `qk_norm` (CAD has none).
- **Output**: LayerNorm → Linear(data_dim → p²·C) on the data tokens → unpatchify. The objective decides what
  that means (ε for VP as in CAD-I, F for EDM, velocity for flow).
- **Init** (CAD): xavier-uniform linears with zero biases, truncated normal(0.02) tables.
- **Deviations** from the CAD code, none changing a parameter count: the output linear is zero-initialised (DiT),
  so every objective's denoiser starts at its skip path. Measured on the world (VP ε, 48 steps of 64): with
  CAD's xavier output the loss sinks to 1.0 (the "predict zero" plateau) and stays there under AdamW and LAMB
  alike, while the zero-initialised output keeps descending. The shared `TimestepEmbedder` and `Mlp` are used
  as they are (CAD also standardises the sinusoid over its channels; its MLPs use exact, not tanh, GELU).

Architecture only: no optimizer, logging, distributed code or environment reads (aesthetics.md §3 habit 5).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import CADIConfig
from .layers import (Attention, LayerScale, Mlp, TimestepEmbedder, forward_inputs, keep_tokens, patchify,
                     sincos_pos_embed_2d, unpatchify)

# ---------------------------------------------------------------------------------------------------------------
# One residual layer for every attention in the network


class Layer(nn.Module):
    """Pre-LN attention then pre-LN MLP, each residual (optionally scaled by LayerScale).

    Self-attention when context_dim is None. As cross-attention, only the queries are normalised (the context
    enters the keys/values as it is) and the attention runs at width min(dim, context_dim) (CAD's RIN).
    """

    def __init__(self, dim: int, heads: int, *, context_dim: int | None = None, mlp_ratio: float = 4.0,
                 qk_norm: str | None = None, layerscale_init: float | None = None):
        super().__init__()
        inner = dim if context_dim is None else min(dim, context_dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, context_dim=context_dim, qk_norm=qk_norm, inner_dim=inner)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        scale = (lambda: LayerScale(dim, layerscale_init)) if layerscale_init is not None else nn.Identity
        self.ls1, self.ls2 = scale(), scale()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), context, key_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------------------------------
# RIN block: text → read → process → write


class RINBlock(nn.Module):
    def __init__(self, cfg: CADIConfig, qk_norm: str | None):
        super().__init__()
        Dl, Dd = cfg.latent_dim, cfg.data_dim
        self.text = Layer(Dl, cfg.rw_heads, context_dim=Dl, mlp_ratio=cfg.latent_mlp_ratio, qk_norm=qk_norm)
        self.read = Layer(Dl, cfg.rw_heads, context_dim=Dd, mlp_ratio=cfg.latent_mlp_ratio, qk_norm=qk_norm)
        self.process = nn.ModuleList([Layer(Dl, cfg.heads, mlp_ratio=cfg.latent_mlp_ratio, qk_norm=qk_norm)
                                      for _ in range(cfg.block_depth)])
        self.write = Layer(Dd, cfg.rw_heads, context_dim=Dl, mlp_ratio=cfg.data_mlp_ratio, qk_norm=qk_norm)

    def forward(self, data: torch.Tensor, z: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor):
        # data [B, N, Dd] patch tokens, z [B, M, Dl] latents, ctx [B, 1+R+L, Dl] text context, ctx_mask [B, 1+R+L]
        z = self.text(z, ctx, ctx_mask)  # (1) latents retrieve the caption
        z = self.read(z, data)  # (2) latents read the image
        for layer in self.process:  # (3) compute on the latents
            z = layer(z)
        data = self.write(data, z)  # (4) the image tokens read the result back
        return data, z


# ---------------------------------------------------------------------------------------------------------------
# CAD-I


class CADI(nn.Module):
    """Text-conditional RIN with registers, a two-block text refiner and latent self-conditioning (ImageNet-T2I App. C)."""

    def __init__(self, cfg: CADIConfig):
        super().__init__()
        self.config = cfg
        self.self_cond_rate = cfg.self_cond_rate  # read by diffusion/backbone.py: this network self-conditions
        Dl, Dd, p, C = cfg.latent_dim, cfg.data_dim, cfg.patch_size, cfg.in_channels
        if cfg.input_size % p:
            raise ValueError(f"input_size {cfg.input_size} is not divisible by patch_size {p}")
        num_patches = (cfg.input_size // p) ** 2
        qk_norm = "rms" if cfg.qk_norm else None

        # Data tokens: patch embedding, LayerNorm, learned positions
        self.patch_embed = nn.Linear(p * p * C, Dd)
        self.data_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.data_pos = nn.Parameter(torch.zeros(num_patches, Dd))

        # Latents, time embedding (added to every latent), self-conditioning path
        self.latents = nn.Parameter(torch.zeros(cfg.num_latents, Dl))
        self.t_embedder = TimestepEmbedder(Dl, scale=cfg.noise_embed_scale, freq_dim=Dl // 4)
        self.prev_norm = nn.LayerNorm(Dl, eps=1e-6)
        self.prev_mlp = Mlp(Dl, int(Dl * cfg.latent_mlp_ratio))
        self.prev_out_norm = nn.LayerNorm(Dl, eps=1e-6)

        # Text: projection, registers, refiner
        self.text_proj = nn.Linear(cfg.text_dim, Dl)
        self.registers = nn.Parameter(torch.zeros(cfg.num_registers, Dl))
        self.refiner = nn.ModuleList([Layer(Dl, cfg.refiner_heads, qk_norm=qk_norm, layerscale_init=cfg.layerscale_init)
                                      for _ in range(cfg.refiner_depth)])

        self.blocks = nn.ModuleList([RINBlock(cfg, qk_norm) for _ in range(cfg.num_blocks)])
        self.out_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.out = nn.Linear(Dd, p * p * C)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():  # CAD: xavier-uniform weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for table in (self.data_pos, self.latents, self.registers):
            nn.init.trunc_normal_(table, std=0.02, a=-0.04, b=0.04)
        if self.config.pos_init == "sincos":  # still learned; starts as DiT's fixed table (a deviation from CAD)
            with torch.no_grad():
                self.data_pos.copy_(sincos_pos_embed_2d(self.data_pos.shape[1],
                                                        self.config.input_size // self.config.patch_size))
        # The self-conditioning path starts switched off (its output LayerNorm is all zeros, CAD)
        nn.init.zeros_(self.prev_out_norm.weight)
        nn.init.zeros_(self.prev_out_norm.bias)
        # Zero output (DiT; not CAD): ε̂ = 0 / F = 0 / v̂ = 0 at step 0, whatever the objective
        nn.init.zeros_(self.out.weight)

    def forward(
        self,
        x: torch.Tensor,
        noise_cond: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor | None,
        *,
        keep_mask: torch.Tensor | None = None,
        crop_tokens: torch.Tensor | None = None,
        prev_latents: torch.Tensor | None = None,
        return_latents: bool = False,
    ):
        """x [B, C, H, W] noisy input (as the objective prepares it); noise_cond [B] (or scalar); text_tokens
        [B, L, text_dim]; text_mask [B, L] bool, True = real token (None = all real).

        prev_latents [B, num_latents, latent_dim]: latents of a previous pass (self-conditioning; None = zeros).
        keep_mask [B, N] bool with the same count per row keeps only those data tokens; the output is then their
        patches [B, N_keep, p²·C]. Returns the output [B, C, H, W] (or kept patches), and the final latents
        [B, num_latents, latent_dim] too with `return_latents=True`.
        """
        if crop_tokens is not None:
            raise NotImplementedError(
                "crop_tokens (crop-coordinate conditioning) arrives with the image-augmentation (Crop) issue; "
                "CAD-I does not accept it yet — pass crop_tokens=None"
            )
        B, C, H, W, noise_cond = forward_inputs(self, "CAD-I", x, noise_cond)
        cfg, p = self.config, self.config.patch_size

        # Data tokens
        data = self.data_norm(self.patch_embed(patchify(x, p))) + self.data_pos  # [B, N, Dd]
        if keep_mask is not None:
            data = keep_tokens(data, keep_mask)  # [B, N_keep, Dd]

        # Latents: learned tokens + time embedding + the self-conditioning residual
        t = self.t_embedder(noise_cond)  # [B, Dl]
        z = self.latents[None] + t[:, None]  # [B, M, Dl]
        if prev_latents is None:
            prev_latents = z.new_zeros(z.shape)
        elif prev_latents.shape != z.shape:
            raise ValueError(f"prev_latents must be [B, {cfg.num_latents}, {cfg.latent_dim}] = {list(z.shape)}, "
                             f"got {list(prev_latents.shape)}")
        prev_latents = prev_latents.to(z.dtype)
        z = z + self.prev_out_norm(prev_latents + self.prev_mlp(self.prev_norm(prev_latents)))

        # Text context: [time token; refined (registers; caption)], registers and time always visible
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=x.device)
        R = cfg.num_registers
        y = torch.cat([self.registers[None].expand(B, -1, -1), self.text_proj(text_tokens)], dim=1)  # [B, R+L, Dl]
        y_mask = torch.cat([text_mask.new_ones(B, R), text_mask.bool()], dim=1)  # [B, R+L]
        for layer in self.refiner:
            y = layer(y, key_mask=y_mask)
        ctx = torch.cat([t[:, None].to(y.dtype), y], dim=1)  # [B, 1+R+L, Dl]
        ctx_mask = torch.cat([y_mask.new_ones(B, 1), y_mask], dim=1)  # [B, 1+R+L]

        for block in self.blocks:
            data, z = block(data, z, ctx, ctx_mask)
        out = self.out(self.out_norm(data))  # [B, N | N_keep, p²C]
        if keep_mask is None:
            out = unpatchify(out, p, C, H, W)  # [B, C, H, W]
        return (out, z) if return_latents else out


# ---------------------------------------------------------------------------------------------------------------
# CAD-I configs (presets.py wraps them into RunConfigs; counts are exact, tested in tests/test_cad_i.py)

CAD_I_CONFIGS: dict[str, CADIConfig] = {
    # ImageNet-T2I CAD-I = the CAD code's `imagenet_256_rin_L_text_ldm`: 4×32×32 SD-VAE latents, flan-T5-XL tokens.
    # 330,235,152 params (paper: 0.3B; the reference RINTextCond: 330.2M)
    "cad-i-256": CADIConfig(in_channels=4, input_size=32, text_dim=2048),
    # The CAD code's `rin_base`: 128 latents × 768, 12 compute heads. 188,372,752 params (reference: 188.4M)
    "cad-i-base": CADIConfig(in_channels=4, input_size=32, text_dim=2048, num_latents=128, latent_dim=768, heads=12),
    # CI: 3×16×16 pixels, 16 data tokens, MiniLM (384-d) tokens. 427,152 params
    "world-cad-tiny": CADIConfig(in_channels=3, input_size=16, text_dim=384, patch_size=4, data_dim=32, num_latents=16,
                                 latent_dim=64, num_blocks=2, block_depth=1, rw_heads=4, heads=4, num_registers=4,
                                 refiner_depth=1, refiner_heads=4, pos_init="sincos"),
    # CPU demo: 4×8×8 world-VAE latents (32 px images), patch 1 → 64 data tokens, MiniLM tokens. 11,996,036 params
    "world-cad-s": CADIConfig(in_channels=4, input_size=8, text_dim=384, patch_size=1, data_dim=128, num_latents=64,
                              latent_dim=256, num_blocks=3, block_depth=2, rw_heads=4, heads=4, num_registers=16,
                              refiner_depth=2, refiner_heads=4, pos_init="sincos"),
}
