"""The memorisation check shared by the model tests: four smooth 8×8 images with distinct captions; after training,
sampling each caption must give back its own image."""

import torch

from microt2i.diffusion.generate import generate

SIGNS = ([1, 1, 1], [-1, -1, -1], [1, -1, 1], [-1, 1, -1])  # per-channel ramp directions of the four images


def ramp_images() -> torch.Tensor:
    """[4, 3, 8, 8]: smooth, well separated images (easier to memorise than uniform noise)."""
    base = torch.linspace(-1, 1, 8)
    return torch.stack([torch.stack([base[None, :].expand(8, 8) * s for s in sign]) for sign in SIGNS])


class Ident:
    """A codec that decodes latents as they are (the store already holds images)."""

    def decode(self, z):
        return z


def memorisation_errors(net, cfg, store, null_mode: str):
    """[sample, train image] mean absolute error in 0…255 between each caption's sample and every training image."""
    imgs = generate(net, cfg, store.text_tokens.float(), store.text_mask, *store.null_text(null_mode), codec=Ident())
    target = ((store.latents.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    return abs(imgs.astype(float)[:, None] - target[None]).mean(axis=(2, 3, 4))

