"""Crop image augmentation (ImageNet-T2I §2.2, App. F): the model sees only a square crop of the image's tokens.

The authors never released Crop, so every choice here is ours and written down:

- **What is cropped**: tokens, not pixels. A crop is a square of `side` × `side` patches; only the tokens inside it
  enter the backbone (self- and cross-attention) and the loss (App. F: "mask out the rest from both the loss
  function and cross-attention layers"). The network gathers them with `keep_mask` after adding the positional
  embedding, so each kept token keeps the position of its place in the whole image.
- **Sizes**: side ∈ [⌈min_side·grid⌉, grid − 1] patches, uniform (App. F: "crop resolution of > 50 %").
- **One size per micro-batch, positions per sample**: the model contract needs the same number of kept tokens in
  every row of `keep_mask`, so the Bernoulli(p) and the side are drawn once per micro-batch and the top-left
  corner per sample. The expected fraction of cropped samples is still p.
- **Crop-coordinate token**: the normalised box (x0, y0, x1, y1) ∈ [0, 1]⁴ is embedded by a small learned MLP
  (`models.layers.CropEmbedder`) into one token appended to the caption tokens (always visible, also when the caption is
  dropped for CFG). Uncropped samples and inference say "whole image", the box (0, 0, 1, 1).
- **Caption**: the whole image's (App. F: "We keep the same captions").
- **MicroDiT**: its patch-mixer runs on the crop's tokens only (the network reads the crop from `crop_tokens`),
  then the 75 % patch masking keeps a random ⌊N_crop·(1 − mask_ratio)⌋ of them (`crop_patch_mask`; block masking
  falls back to random masking inside a crop). So masking composes with Crop as a mask of the cropped image.

Everything random is drawn from the trainer's per-step generator, so a resumed run replays it exactly.
"""

from __future__ import annotations

import math

import torch

from ..config import CropConfig

WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


def whole_image_boxes(batch: int, device=None) -> torch.Tensor:
    """The crop token's "whole image" box (0, 0, 1, 1), [B, 4] float32."""
    return torch.tensor(WHOLE_IMAGE, device=device).expand(batch, 4).contiguous()


def crop_sides(grid: int, min_side: float) -> tuple[int, int]:
    """The smallest and largest crop side in patches: ⌈min_side·grid⌉ … grid − 1."""
    lo, hi = max(1, math.ceil(min_side * grid - 1e-9)), grid - 1
    if lo > hi:
        raise ValueError(f"a {grid}×{grid} patch grid has no square crop with side >= {min_side:.0%} of it and "
                         f"smaller than the image; lower augment.crop.min_side or use a smaller model.patch_size")
    return lo, hi


def box_keep_mask(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, grid²] bool (row-major tokens): True where the token's centre lies inside the normalised box [B, 4]
    = (x0, y0, x1, y1); x runs along columns, y along rows."""
    centre = (torch.arange(grid, device=boxes.device, dtype=torch.float32) + 0.5) / grid  # [grid]
    x0, y0, x1, y1 = boxes.float().unbind(-1)  # [B] each
    cols = (centre >= x0[:, None]) & (centre < x1[:, None])  # [B, grid]
    rows = (centre >= y0[:, None]) & (centre < y1[:, None])
    return (rows[:, :, None] & cols[:, None, :]).reshape(boxes.shape[0], grid * grid)


def sample_crop(cfg: CropConfig, grid: int, batch: int, *, generator=None,
                device=None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One micro-batch's crop: (keep_mask [B, grid²] or None, boxes [B, 4]).

    With probability cfg.p the micro-batch is cropped: one side for all rows, a uniform top-left corner per row;
    otherwise keep_mask is None and every box is the whole image. The same number of draws is made either way.
    """
    gen_device = generator.device if generator is not None else device
    lo, hi = crop_sides(grid, cfg.min_side)
    fire = torch.rand(1, generator=generator, device=gen_device)
    side = torch.randint(lo, hi + 1, (1,), generator=generator, device=gen_device)
    corner = torch.rand(batch, 2, generator=generator, device=gen_device)  # uniform over the grid - side + 1 spots
    if not bool(fire < cfg.p):
        return None, whole_image_boxes(batch, device)
    s = int(side)
    start = (corner * (grid - s + 1)).floor().clamp(max=grid - s)  # [B, 2] (col, row) in patches
    boxes = torch.cat([start, start + s], dim=1) / grid  # (x0, y0, x1, y1)
    boxes = boxes.to(device, torch.float32)
    return box_keep_mask(boxes, grid), boxes
