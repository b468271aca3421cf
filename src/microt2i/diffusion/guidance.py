"""Classifier-free guidance (Ho & Salimans 2022) on denoised estimates: D_cfg = D_uncond + scale·(D_cond − D_uncond).

`scale` follows DESIGN §3: scale = 1 is the conditional model, scale = 0 the unconditional one. CAD-I writes the
same rule with a guidance weight w, D_cond + w·(D_cond − D_uncond), i.e. scale = 1 + w. MicroDiT samples with
scale 3 (1.5 for its large models, 5 for qualitative grids), MicroDiT §B.

The unconditional branch is configurable (`ObjectiveConfig.uncond`, built by `encoders.text.null_text`): "zero" embeddings (MicroDiT), or the text encoder's encoding of the empty string (CAD-I). Training with caption dropout must
use the same choice as sampling.
"""

from __future__ import annotations

import torch


def cfg(cond, uncond, scale: float):
    """uncond + scale·(cond − uncond).

    On tensors returns a tensor. On two denoisers `denoise(x, sigma)` returns the guided denoiser (which skips the
    unconditional call when scale == 1).
    """
    if callable(cond):
        if scale == 1:
            return cond
        return lambda x, sigma: cfg(cond(x, sigma), uncond(x, sigma), scale)
    return uncond + scale * (cond - uncond)


def cfg_denoiser(precond, text_tokens, text_mask, uncond_tokens, uncond_mask, scale: float, **net_kwargs):
    """A sampler's `denoise(x, sigma)` for `precond` guided at `scale`, cond and uncond in one doubled batch.

    The batch is [cond; uncond] along dim 0; uncond tokens/mask of batch 1 are broadcast to the caption batch.
    Tensor `net_kwargs` are per-sample (batch-first, e.g. `crop_tokens`) and are doubled with x; other values
    pass through. With scale == 1 only the conditional branch runs.
    """
    if scale == 1:
        return lambda x, sigma: precond(x, sigma, text_tokens, text_mask, **net_kwargs)
    b = text_tokens.shape[0]
    tokens = torch.cat([text_tokens, uncond_tokens.expand(b, *uncond_tokens.shape[1:])])
    mask = torch.cat([text_mask, uncond_mask.expand(b, *uncond_mask.shape[1:])])
    kwargs = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in net_kwargs.items()}

    def denoise(x, sigma):
        sigma = torch.as_tensor(sigma)
        sigma = torch.cat([sigma, sigma]) if sigma.ndim else sigma
        cond, uncond = precond(torch.cat([x, x]), sigma, tokens, mask, **kwargs).chunk(2)
        return cfg(cond, uncond, scale)

    return denoise
