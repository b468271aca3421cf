"""The session-5 diagnostics behind EXPERIMENTS.md "time-to-quality" (one thread; a minute each).

    python experiments/time-to-quality/diagnose.py spread RUN_DIR [overrides ...]   # x̂0 spread: classes vs colours
    python experiments/time-to-quality/diagnose.py target                           # the same spread of true means
    python experiments/time-to-quality/diagnose.py latent-noise                     # decode(encode(x) + noise)

`spread`: for prompts that differ only in the class or only in the colour word, how much the EMA denoiser's x̂0
varies across each, at several σ (same noise for all prompts). `target`: the spreads the optimal high-noise
prediction would have, from renders of the same (class, colour) pairs encoded by the world VAE. `latent-noise`:
class accuracy (world detector) of world-VAE reconstructions with Gaussian noise added to the latents.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from microt2i import presets
from microt2i.config import apply_overrides
from microt2i.diffusion.objectives import build_objective
from microt2i.encoders import TextEncoder
from microt2i.encoders.codec import load_codec
from microt2i.models import build
from microt2i.train.state import load_latest
from microt2i.world.detect import detect
from microt2i.world.pixels import images_to_tensor, tensor_to_images
from microt2i.world.render import make_dataset, render
from microt2i.world.scenes import Scene, WorldObject

CLASSES = ["circle", "ring", "cross", "heart", "fish", "house"]
COLORS = ["red", "blue", "green", "yellow"]


def spread(run: Path, overrides: list[str]) -> None:
    cfg = apply_overrides(presets.get("world-s"), overrides)
    net = build(cfg.model)
    net.load_state_dict(load_latest(run)["ema"])
    den = build_objective(cfg.objective).denoiser(net.eval())
    prompts = [f"A large {c} {k} is shown in the center on a flat grey backdrop." for c in COLORS for k in CLASSES]
    emb = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len).encode(prompts)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.3, 1.0, 3.0, 10.0):
        x = (sigma * torch.randn(1, 4, 8, 8, generator=g)).expand(len(prompts), -1, -1, -1)
        with torch.no_grad():
            d = den(x, torch.full((len(prompts),), sigma), emb.tokens, emb.mask).view(len(COLORS), len(CLASSES), -1)
        print(f"sigma {sigma:5.1f}: variance over classes {d.var(1).mean():.4f}, over colours {d.var(0).mean():.4f}")


def target() -> None:
    rng, codec = np.random.default_rng(0), load_codec("world-vae")
    means = torch.zeros(len(COLORS), len(CLASSES), 4 * 64)
    for i, col in enumerate(COLORS):
        for j, cls in enumerate(CLASSES):
            ims = [render(Scene(background="plain", objects=(WorldObject(
                cls=cls, color=col, size=rng.uniform(0.6, 0.8), cx=0.5 + rng.uniform(-0.05, 0.05),
                cy=0.5 + rng.uniform(-0.05, 0.05), angle=rng.uniform(-15, 15)),)), 32) for _ in range(16)]
            means[i, j] = codec.encode(images_to_tensor(np.stack(ims))).mean(0).flatten()
    print(f"true means: variance over classes {means.var(1).mean():.4f}, over colours {means.var(0).mean():.4f}")


def latent_noise() -> None:
    images, _, scenes = make_dataset(128, seed=777, resolution=32, captions="long")
    codec, g = load_codec("world-vae"), torch.Generator().manual_seed(0)
    z = codec.encode(images_to_tensor(images))

    def accuracy(ims) -> float:
        return float(np.mean([bool(d) and d[0].cls == s.objects[0].cls for d, s in zip(map(detect, ims), scenes)]))

    print(f"latent std {z.std():.3f}; renders: class accuracy {accuracy(images):.3f}")
    for s in (0.0, 0.05, 0.1, 0.2, 0.3):
        rec = tensor_to_images(codec.decode(z + s * torch.randn(z.shape, generator=g)))
        print(f"noise {s}: class accuracy {accuracy(rec):.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd = sys.argv[1]
    if cmd == "spread":
        spread(Path(sys.argv[2]), sys.argv[3:])
    elif cmd == "target":
        target()
    elif cmd == "latent-noise":
        latent_noise()
    else:
        raise SystemExit(f"unknown diagnostic {cmd!r}: spread, target or latent-noise")
