"""The world's tiny VAE: a diffusers `AutoencoderKL` (factor 4, 4 latent channels) trained on world renders.

It ships inside the package (`world/vae/`, fp16 safetensors, ~1 MB) so the embedded world has a latent space like
the papers' SD VAE (latent diffusion, ImageNet-T2I App. C) and the CPU demo exercises the real `DiffusersVAE` path.
`load_codec("world-vae")` loads it. Regenerate it with `python -m microt2i.world.vae` (about 5 min on 2 cores);
`scaling_factor` in its config is set so encoded latents have std 0.5 (= EDM's σ_data).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .pixels import images_to_tensor
from .render import make_dataset

WORLD_VAE_DIR = Path(__file__).parent / "vae"
TARGET_STD = 0.5


def world_vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
                block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, sample_size=32)


def _batch(step: int, batch_size: int, resolution: int, seed: int) -> torch.Tensor:
    images, _, _ = make_dataset(batch_size, seed=seed * 1_000_003 + step, resolution=resolution, captions="aio")
    return images_to_tensor(images)


def train_world_vae(out_dir: str | Path = WORLD_VAE_DIR, *, steps: int = 3000, batch_size: int = 32,
                    resolution: int = 32, lr: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0, log=print) -> dict:
    """Train on a stream of fresh world renders (L1 + L2 reconstruction + a small KL), save fp16 safetensors."""
    from diffusers import AutoencoderKL  # heavy (seconds to import): only when a diffusers model is used

    torch.manual_seed(seed)
    vae = AutoencoderKL(**world_vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        x = _batch(step, batch_size, resolution, seed)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"[world-vae] step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s")

    # scaling_factor so that scaled latents have std TARGET_STD on held-out renders
    vae.eval()
    with torch.no_grad():
        held_out = torch.cat([_batch(10**6 + i, 64, resolution, seed) for i in range(4)])
        mean = vae.encode(held_out).latent_dist.mean
        rec = vae.decode(mean).sample
    scaling = TARGET_STD / float(mean.std())
    vae.register_to_config(scaling_factor=scaling)
    out_dir = Path(out_dir)
    vae.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    report = {"steps": steps, "batch_size": batch_size, "resolution": resolution, "scaling_factor": scaling,
              "heldout_l1": float((rec - held_out).abs().mean()), "heldout_psnr_db": _psnr(rec, held_out),
              "params": sum(p.numel() for p in vae.parameters()), "train_seconds": round(time.perf_counter() - t0)}
    (out_dir / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"[world-vae] saved to {out_dir}: {report}")
    return report


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) / 2).square().mean())  # images in [-1, 1] → [0, 1]
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Train the embedded world's tiny VAE and save it as the shipped asset.")
    ap.add_argument("--out", default=str(WORLD_VAE_DIR))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 1 is steadier on a shared CPU")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    train_world_vae(a.out, steps=a.steps, batch_size=a.batch_size, seed=a.seed)
