"""The training loop: one function, EDM2-style.

Time is counted in images seen (nimg); the global batch is the hyper-parameter and micro-batches only bound
memory. Every step reseeds its noise from (seed, rank, nimg), the data order is a function of nimg, and the LR
is a function of nimg, so a run resumed from its folder replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from tqdm import tqdm

from ..augment.crop import crop_patch_mask, crop_sides, sample_crop
from ..augment.cutmix import build_cutmix_store, ia_gate, twin_index
from ..config import ConfigError, RunConfig, save_yaml, to_dict
from ..data.sampler import ResumableSampler
from ..data.store import Store, load_or_build
from ..diffusion.objectives import build_objective
from ..io import atomic_write_bytes
from ..encoders import TextEncoder, load_codec
from ..eval.live import LiveEval
from ..models import build, count_params, sample_keep_mask, save_pretrained
from .ema import EMA
from .optim import lr_at, make_optimizer
from .state import list_checkpoints, load_latest, save_checkpoint


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_seed(seed: int, rank: int, nimg: int) -> int:
    """A 63-bit seed for the noise of the micro-batch that starts at image `nimg` (EDM2 reseeds per step)."""
    return int(np.random.SeedSequence([seed, rank, nimg]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def prepare_data(cfg: RunConfig, device: torch.device, log=print) -> Store:
    """Load the cached store or build it (render, encode images with the codec, encode captions); with
    `data.store_dir`, open the sharded store `microt2i precompute` wrote, refusing one built with other settings."""
    if cfg.data.store_dir:
        from ..data.store import open_store, store_key

        sharded = open_store(cfg.data.store_dir, store_key(cfg.data))
        if sharded.text_mode == "ids":  # token ids are encoded on the fly by the store's own text encoder
            sharded.attach_text_encoder(TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device))
        log(f"[data] sharded store {cfg.data.store_dir}: {len(sharded)} samples ({sharded.latent_mode} latents, "
            f"text {sharded.text_mode})")
        return sharded

    def make_encoders():
        return (load_codec(cfg.data.codec, device=device),
                TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device))

    return load_or_build(cfg.data, make_encoders, log=log)


def prepare_cutmix(cfg: RunConfig, device: torch.device, log=print) -> Store:
    """The CutMix composite store of `cfg.augment.cutmix` (augment/cutmix.py), built and cached on first use."""
    def make_encoders():
        return (load_codec(cfg.data.codec, device=device),
                TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device))

    return build_cutmix_store(cfg.data, cfg.augment.cutmix, make_encoders, log=log)


def _check_augment(cfg: RunConfig, store: Store, cutmix: Store | None) -> None:
    """Image augmentation (paper 000 §2.2) needs a model and data that can take it; fail before training."""
    crop = cfg.augment.crop
    if crop.enabled:
        if not getattr(cfg.model, "crop_cond", False):
            raise ConfigError(f"augment.crop.enabled=true needs the crop-coordinate token: set model.crop_cond=true "
                              f"(model.family={cfg.model.family!r}: dit-i and microdit support it)")
        crop_sides(cfg.model.input_size // cfg.model.patch_size, crop.min_side)
    if cutmix is not None:
        times = cfg.augment.cutmix.times
        if len(cutmix) != len(store) * times or cutmix.text_tokens.shape[1:] != store.text_tokens.shape[1:]:
            raise ValueError(f"the CutMix store has {len(cutmix)} composites with tokens "
                             f"{list(cutmix.text_tokens.shape[1:])} but the data set needs {len(store)}×{times} "
                             f"with {list(store.text_tokens.shape[1:])}; rebuild it with `microt2i cutmix`")


class StatsLog:
    """Appends one JSON object per report to stats.jsonl (every stat, EDM2 habit)."""

    def __init__(self, path: Path, resume_nimg: int):
        self.path = path
        if path.exists():  # drop reports written after the checkpoint we resume from
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["nimg"] <= resume_nimg]
            path.write_text("".join(ln + "\n" for ln in keep))

    def append(self, stats: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(stats) + "\n")


def _check_same_run(saved: dict, cfg: RunConfig, run_dir: Path) -> None:
    now = to_dict(cfg)
    for section in ("model", "objective", "data"):
        if saved.get(section) != now[section]:
            raise ValueError(
                f"run folder {run_dir} holds a checkpoint trained with a different `{section}` config; "
                f"resume with the run's own config.yaml or start a new run folder"
            )


def train(cfg: RunConfig, run_dir: str | Path, *, stop_nimg: int | None = None, progress: bool = True,
          log=print, store: Store | None = None, cutmix_store: Store | None = None) -> dict:
    """Train `cfg` in `run_dir`, resuming from its newest checkpoint. Returns a summary dict.

    `stop_nimg` ends the job early (after a checkpoint) the way EDM2's `slice_nimg` does on preemptible clusters.
    `store` / `cutmix_store` replace the cached data set / CutMix composites (composite k = i·times + j of source i).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    rank, world_size = 0, 1
    micro = t.micro_batch or t.batch_size
    rounds = t.batch_size // micro

    # ---- data, model, objective, optimizer ----
    store = store if store is not None else prepare_data(cfg, device, log=log)
    if store.text_tokens.shape[-1] != cfg.model.text_dim:
        raise ValueError(f"model.text_dim={cfg.model.text_dim} but the text encoder gives {store.text_tokens.shape[-1]}; "
                         f"set model.text_dim={store.text_tokens.shape[-1]}")
    aug = cfg.augment
    if aug.cutmix.enabled and cutmix_store is None:
        cutmix_store = prepare_cutmix(cfg, device, log=log)
    cutmix_store = cutmix_store if aug.cutmix.enabled else None
    _check_augment(cfg, store, cutmix_store)
    grid = cfg.model.input_size // cfg.model.patch_size  # Crop works on the patch grid
    torch.manual_seed(t.seed)
    net = build(cfg.model).to(device)
    objective = build_objective(cfg.objective)
    opt = make_optimizer(net, t)
    ema = EMA(net, t.ema_decay, t.ema_start_nimg)
    sampler = ResumableSampler(len(store), seed=t.seed)
    uncond_tokens, uncond_mask = (v.to(device) for v in store.null_text(cfg.objective.uncond))

    # ---- resume ----
    nimg, step, elapsed, nan_skips = 0, 0, 0.0, 0
    payload = load_latest(run_dir)
    if payload is not None:
        _check_same_run(payload["config"], cfg, run_dir)
        net.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        opt.load_state_dict(payload["optimizer"])
        nimg, step, elapsed, nan_skips = payload["nimg"], payload["step"], payload["elapsed"], payload["nan_skips"]
        log(f"[resume] {run_dir} at {nimg} images (step {step})")
    save_yaml(cfg, run_dir / "config.yaml")
    stats_log = StatsLog(run_dir / "stats.jsonl", nimg)
    live_eval = LiveEval(cfg, run_dir, device, log=log) if cfg.eval.every_nimg else None
    log(f"[train] {cfg.name}: {count_params(net) / 1e6:.2f}M params, {len(store)} samples, batch {t.batch_size} "
        f"({rounds}×{micro}), {t.total_nimg} images, device {device}")

    def checkpoint():
        save_checkpoint(run_dir, nimg, {
            "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "nimg": nimg, "step": step, "elapsed": elapsed, "nan_skips": nan_skips, "config": to_dict(cfg),
        })

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    end_nimg = t.total_nimg if stop_nimg is None else min(stop_nimg, t.total_nimg)
    bar = tqdm(total=t.total_nimg, initial=nimg, unit="img", unit_scale=True, disable=not progress, dynamic_ncols=True)
    acc = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
    t_report, nimg_report = time.perf_counter(), nimg
    net.train()

    # ---- loop ----
    while nimg < end_nimg:
        t_step = time.perf_counter()
        lr = lr_at(nimg, t)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # e.g. MoE experts at lr × train.expert_lr_scale
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for r in range(rounds):
            start = nimg + r * micro
            idx = sampler.rank_indices(start, micro, rank, world_size)
            gen = torch.Generator(device).manual_seed(step_seed(t.seed, rank, start))
            # Each sample's noise level first (EDM σ for every objective): IA gating depends on it (Algorithm 1)
            sigma = objective.sample_sigma(micro, gen, device)
            batch = store.batch(idx, device, generator=gen)  # a posterior store re-samples z = mean + std·ε
            if cutmix_store is not None:  # CutMix: above τ and with prob. p a sample becomes one of its composites
                swap = ia_gate(sigma, aug.cutmix.tau, aug.cutmix.p, generator=gen).to(device)
                twins = twin_index(idx, aug.cutmix.times, generator=gen)
                if bool(swap.any()):  # fetch the selected samples' twins only
                    twin = cutmix_store.batch(twins[swap.cpu().numpy()], device, generator=gen)
                    for k in ("x0", "text_tokens", "text_mask"):
                        batch[k][swap] = twin[k]
            # Caption dropout for classifier-free guidance: swap in the unconditional caption.
            drop = torch.rand(micro, generator=gen, device=device) < cfg.objective.cond_drop
            tokens = torch.where(drop[:, None, None], uncond_tokens, batch["text_tokens"])
            mask = torch.where(drop[:, None], uncond_mask, batch["text_mask"])
            # Patch masking (MicroDiT): a fresh keep-mask per micro-batch from the same per-step generator
            keep = sample_keep_mask(cfg.model, micro, generator=gen, device=device)
            net_kwargs = {}
            if aug.crop.enabled:  # Crop: one side per micro-batch, a corner per sample (augment/crop.py)
                crop_keep, net_kwargs["crop_tokens"] = sample_crop(aug.crop, grid, micro, generator=gen, device=device)
                if crop_keep is not None:  # MicroDiT's patch masking then masks the crop
                    keep = crop_keep if keep is None else crop_patch_mask(crop_keep, cfg.model.mask_ratio,
                                                                          generator=gen)
            if keep is not None:
                net_kwargs["keep_mask"] = keep
            with autocast:
                loss = objective.loss(net, batch["x0"], tokens, mask, generator=gen, sigma=sigma, **net_kwargs).mean()
            (loss / rounds).backward()
            loss_sum += loss.item() / rounds
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
        if torch.isfinite(grad_norm) and np.isfinite(loss_sum):
            opt.step()
        else:  # NaN guard: skip the update, keep going, count it
            nan_skips += 1
        nimg += t.batch_size
        step += 1
        ema.update(net, nimg)
        elapsed += time.perf_counter() - t_step
        acc["loss"] += loss_sum
        acc["grad_norm"] += float(grad_norm)
        acc["n"] += 1
        bar.update(t.batch_size)
        bar.set_postfix(loss=f"{loss_sum:.4f}", refresh=False)

        done = nimg >= end_nimg
        if nimg // t.log_every_nimg != (nimg - t.batch_size) // t.log_every_nimg or done:
            now = time.perf_counter()
            stats = {"nimg": nimg, "step": step, "loss": acc["loss"] / acc["n"], "grad_norm": acc["grad_norm"] / acc["n"],
                     "lr": lr, "img_per_s": (nimg - nimg_report) / max(now - t_report, 1e-9),
                     "elapsed_s": round(elapsed, 3), "nan_skips": nan_skips,
                     "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            stats_log.append(stats)
            acc = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
            t_report, nimg_report = now, nimg
        if live_eval is not None and live_eval.due(nimg, t.batch_size):  # EMA samples; training RNG untouched
            stats_log.append(live_eval(ema.model, nimg, uncond_tokens, uncond_mask))
        if nimg // t.ckpt_every_nimg != (nimg - t.batch_size) // t.ckpt_every_nimg or done:
            checkpoint()
    bar.close()

    if not list_checkpoints(run_dir):
        checkpoint()
    finished = nimg >= t.total_nimg
    if finished:  # the inference artifacts: EMA weights + the unconditional caption CFG needs
        save_pretrained(ema.model, run_dir / "ema")
        atomic_write_bytes(run_dir / "null_text.safetensors",
                           save({"tokens": uncond_tokens.cpu().contiguous(), "mask": uncond_mask.cpu().to(torch.uint8)}))
    return {"nimg": nimg, "step": step, "finished": finished, "elapsed_s": elapsed, "nan_skips": nan_skips,
            "params": count_params(net), "net": net, "ema": ema.model, "store": store}
