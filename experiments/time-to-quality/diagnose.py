"""The session-5 and -6 diagnostics behind EXPERIMENTS.md "time-to-quality" (one thread; a minute each).

    python experiments/time-to-quality/diagnose.py spread RUN_DIR [overrides ...]   # x̂0 spread: classes vs colours
    python experiments/time-to-quality/diagnose.py target                           # the same spread of true means
    python experiments/time-to-quality/diagnose.py latent-noise                     # decode(encode(x) + noise)
    python experiments/time-to-quality/diagnose.py sdedit RUN_DIR [overrides ...]   # re-draw noised renders

`spread`: for prompts that differ only in the class or only in the colour word, how much the EMA denoiser's x̂0
varies across each, at several σ (same noise for all prompts). `target`: the spreads the optimal high-noise
prediction would have, from renders of the same (class, colour) pairs encoded by the world VAE. `latent-noise`:
class accuracy (world detector) of world-VAE reconstructions with Gaussian noise added to the latents. `sdedit`
(session 6): the 64 grid scenes rendered, encoded, noised to flow time t0 and sampled back to 0 (Heun, CFG 3) with
their own caption (does the denoiser keep the class the input still shows?) and with the class word swapped (does
it follow the caption?).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from microt2i import presets
from microt2i.config import apply_overrides
from microt2i.diffusion.guidance import cfg_denoiser
from microt2i.diffusion.objectives import build_objective
from microt2i.diffusion.samplers import heun
from microt2i.encoders import TextEncoder
from microt2i.encoders.codec import load_codec
from microt2i.models import build
from microt2i.train.state import load_latest
from microt2i.world.detect import detect
from microt2i.world.grid import grid_prompts, grid_scenes, score_samples
from microt2i.world.pixels import images_to_tensor, tensor_to_images
from microt2i.world.render import make_dataset, render
from microt2i.world.scenes import CLASSES as ALL_CLASSES
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


def sdedit(run: Path, overrides: list[str]) -> None:
    cfg = apply_overrides(presets.get("world-s"), overrides)
    specs, scenes, rng = grid_prompts(64, 0), grid_scenes(64, 0), np.random.default_rng(5)
    swapped = []
    for s in specs:  # another class, same colour and wording
        new = ALL_CLASSES[(ALL_CLASSES.index(s["class"]) + 1 + rng.integers(len(ALL_CLASSES) - 1)) % len(ALL_CLASSES)]
        swapped.append({**s, "class": new, "prompt": s["prompt"].replace(s["class"], new)})
    codec = load_codec(cfg.data.codec)
    x0 = codec.encode(images_to_tensor(np.stack([render(s, cfg.data.resolution) for s in scenes])))
    net = build(cfg.model)
    net.load_state_dict(load_latest(run)["ema"])
    obj, enc = build_objective(cfg.objective), TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len)
    null = load_file(str(run / "null_text.safetensors"))  # the caption the run was guided against
    for t0 in (0.1, 0.3, 0.5, 0.7, 0.9):
        s0 = t0 / (1 - t0)  # flow time → σ (diffusion/flow.py)
        sigmas = obj.sampling_sigmas(24)
        sigmas = torch.cat([sigmas.new_tensor([s0]), sigmas[sigmas < s0]])
        x = x0 + s0 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        acc = []
        for sp in (specs, swapped):
            e = enc.encode([p["prompt"] for p in sp])
            den = cfg_denoiser(obj.denoiser(net.eval()), e.tokens, e.mask, null["tokens"], null["mask"].bool(),
                               3.0)
            with torch.no_grad():
                images = tensor_to_images(codec.decode(heun(den, x.clone(), sigmas).float()))
            acc.append(score_samples(images, sp)[0]["class_accuracy"])
        print(f"t0 {t0}: keeps the true class {acc[0]:.2f}, follows a swapped class word {acc[1]:.2f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd = sys.argv[1]
    if cmd == "spread":
        spread(Path(sys.argv[2]), sys.argv[3:])
    elif cmd == "target":
        target()
    elif cmd == "latent-noise":
        latent_noise()
    elif cmd == "sdedit":
        sdedit(Path(sys.argv[2]), sys.argv[3:])
    else:
        raise SystemExit(f"unknown diagnostic {cmd!r}: spread, target, latent-noise or sdedit")
