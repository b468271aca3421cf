"""The training loop: one function, EDM2-style.

Time is counted in images seen (nimg); the global batch is the hyper-parameter and micro-batches only bound
memory. Every step reseeds its noise from (seed, rank, nimg), the data order is a function of nimg, and the LR
is a function of nimg, so a run resumed from its folder replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save

from ..augment.crop import crop_sides, sample_crop
from ..augment.cutmix import build_cutmix_store, ia_gate, twin_index

from ..config import ConfigError, RunConfig, plain, check_device, save_yaml, to_dict
from ..data.loader import make_loader
from ..data.holdout import train_sampler
from ..data.buckets import BucketPositions, check_bucket_store, run_buckets
from ..data.store import Store, load_or_build
from ..diffusion.objectives import build_objective
from ..diffusion.samplers import count_diverged
from ..io import atomic_write_bytes
from ..encoders import TextEncoder, codec_of
from ..diffusion.repa import RepaCapture
from ..progress import Progress, heartbeat
from ..models import build, count_params, sample_keep_mask, sample_route_mask, save_pretrained
from ..models.lora import apply_lora, load_weights, save_lora_pretrained
from ..models.layers import keep_tokens
from ..models.microdit import crop_patch_mask
from .ema import EMA, local_shard
from .logger import RunLogger
from .nan_guard import NanGuard
from .optim import freeze, lr_at, make_optimizer
from .dist import (all_reduce_mean, barrier, full_state_dict, grad_sync, init_distributed, is_main, is_sharded,
                   load_optimizer, load_sharded, save_sharded, shard, split_batch, wrap_model)
from .validation import HeldOutLoss, check_validation
from .state import (TRAINING_KEYS, checkpoint_path, list_checkpoints, non_finite, prune_checkpoints,
                    remove_stale_temp, resume_point, run_lock, save_checkpoint)
from ..augment.cutmix import open_cutmix_store
from ..data.mix import open_mixture
from ..data.store import open_store, store_key
from ..data.teacher import teacher_features
from ..encoders.teacher import load_teacher


def resolve_device(name: str) -> torch.device:
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the micro-batch whose first sample is the run's `position`-th image (EDM2 reseeds per
    step). Keyed on the global position, not on (rank, step): at a fixed micro-batch size, how the global batch is
    split over ranks and accumulation rounds changes no random draw (2 ranks × 1 round ≡ 1 rank × 2 rounds)."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def main_first(fn):
    """fn() on rank 0, then on the other ranks (which then hit the cache rank 0 wrote). One process: just fn()."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    out = fn() if is_main() else None
    barrier()
    return out if is_main() else fn()


def prepare_data(cfg: RunConfig, device: torch.device, log=print) -> Store:
    """Load the cached store or build it (render, encode images with the codec, encode captions); with
    `data.store_dir`, open the sharded store `microt2i precompute` wrote, refusing one built with other settings."""
    cfg.data.require_dataset()
    if cfg.data.store_dir:
        sharded = open_store(cfg.data.store_dir, store_key(cfg.data, buckets=run_buckets(cfg)))
        if sharded.text_mode == "ids":  # token ids are encoded on the fly by the store's own text encoder
            sharded.attach_text_encoder(TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device))
        log(f"[data] sharded store {cfg.data.store_dir}: {len(sharded)} samples ({sharded.latent_mode} latents, "
            f"text {sharded.text_mode})")
        return sharded
    if cfg.data.mix:  # several finished stores mixed by weight into one stream (data/mix.py)

        return open_mixture(cfg.data, seed=cfg.train.seed, log=log, text_encoder=lambda: TextEncoder(
            cfg.data.text_encoder, max_length=cfg.data.text_len, device=device))
    return load_or_build(cfg.data, lambda: _encoders(cfg, device), log=log)


def _encoders(cfg: RunConfig, device: torch.device):
    """(codec, text encoder) of `cfg.data`, loaded only when a cache has to be built."""
    return (codec_of(cfg.data, device=device),
            TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device))


def prepare_cutmix(cfg: RunConfig, device: torch.device, log=print) -> Store:
    """The CutMix composite store of `cfg.augment.cutmix` (augment/cutmix.py): with `data.store_dir` the sharded
    composites `microt2i cutmix` built (a separate job: LLaVA captions them), else the world's, built on first use."""
    if cfg.data.mix:
        raise ConfigError("augment.cutmix.enabled=true pairs the images of one store; data.mix mixes several: "
                          "train on one data.store_dir, or switch CutMix off")
    if cfg.data.store_dir:
        cutmix = open_cutmix_store(cfg.data, cfg.augment.cutmix)
        if cutmix.text_mode == "ids":
            cutmix.attach_text_encoder(TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device))
        log(f"[data] CutMix composites {cutmix.dir}: {len(cutmix)} ({cfg.augment.cutmix.setting}, "
            f"×{cfg.augment.cutmix.times})")
        return cutmix
    return build_cutmix_store(cfg.data, cfg.augment.cutmix, lambda: _encoders(cfg, device), log=log)


def prepare_teacher(cfg: RunConfig, store: Store, device: torch.device, log=print) -> torch.Tensor:
    """REPA's teacher features of every training sample [N, tokens, dim] (data/teacher.py), cached on first use."""
    m = cfg.model
    if not getattr(m, "repa_depth", 0):
        raise ConfigError(f"objective.repa_weight={cfg.objective.repa_weight} needs the projector: set model.repa_depth "
                          f"(the block to align, e.g. 2) and model.repa_dim (model.family={m.family!r}: dit-i and "
                          f"microdit support REPA)")
    if cfg.data.mix:
        raise ConfigError("REPA reads teacher features of one store; it does not take data.mix yet (train on one "
                          "data.store_dir, or set objective.repa_weight=0)")
    grid = m.input_size // m.patch_size
    feats = teacher_features(cfg.data, store, grid, load_teacher(cfg.data.repa_teacher, device), log=log)
    if feats.shape[-1] != m.repa_dim:
        raise ConfigError(f"model.repa_dim={m.repa_dim} but the teacher {cfg.data.repa_teacher!r} gives "
                          f"{feats.shape[-1]}-d features; set model.repa_dim={feats.shape[-1]}")
    return feats


def _check_augment(cfg: RunConfig, store: Store, cutmix: Store | None) -> None:
    """Image augmentation (ImageNet-T2I §2.2) needs a model and data that can take it; fail before training."""
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


def micro_batch(cfg: RunConfig, objective, store: Store, cutmix_store: Store | None, idx: np.ndarray,
                gen: torch.Generator, device: torch.device, uncond_tokens: torch.Tensor, uncond_mask: torch.Tensor,
                rows: dict | None = None, teacher: torch.Tensor | None = None):
    """One micro-batch, every draw from `gen`: noise levels, the IA gate and twins (CutMix), caption dropout, the
    keep-mask of MicroDiT's patch masking and / or Crop, and TREAD's route mask. `rows` are samples `idx` already read
    by a loader worker; `teacher` [N, T, dim] the store's REPA features.
    Returns (x0, text tokens, text mask, σ, net kwargs, REPA target [B, T_kept, dim] and validity [B] or None)."""
    aug, n = cfg.augment, len(idx)
    swap = None
    # Each sample's noise level first (EDM σ for every objective): IA gating depends on it (ImageNet-T2I Algorithm 1)
    sigma = objective.sample_sigma(n, gen, device)
    # a posterior store re-samples z = mean + std·ε
    batch = store.batch(idx, device, generator=gen) if rows is None else store.to_batch(rows, device, gen)
    if cutmix_store is not None:  # CutMix: above τ and with prob. p a sample becomes one of its composites
        swap = ia_gate(sigma, aug.cutmix.tau, aug.cutmix.p, generator=gen).to(device)
        twins = twin_index(idx, aug.cutmix.times, generator=gen)
        if bool(swap.any()):  # fetch the selected samples' twins only
            twin = cutmix_store.batch(twins[swap.cpu().numpy()], device, generator=gen)
            for k in ("x0", "text_tokens", "text_mask"):
                batch[k][swap] = twin[k]
    # Caption dropout for classifier-free guidance: swap in the unconditional caption.
    drop = torch.rand(n, generator=gen, device=device) < cfg.objective.cond_drop
    tokens = torch.where(drop[:, None, None], uncond_tokens, batch["text_tokens"])
    mask = torch.where(drop[:, None], uncond_mask, batch["text_mask"])
    # Patch masking (MicroDiT): a fresh keep-mask per micro-batch from the same generator
    keep = sample_keep_mask(cfg.model, n, generator=gen, device=device)
    net_kwargs = {}
    if aug.crop.enabled:  # Crop: one side per micro-batch, a corner per sample (augment/crop.py)
        grid = cfg.model.input_size // cfg.model.patch_size
        crop_keep, net_kwargs["crop_tokens"] = sample_crop(aug.crop, grid, n, generator=gen, device=device)
        if crop_keep is not None:  # MicroDiT's patch masking then masks the crop
            keep = crop_keep if keep is None else crop_patch_mask(crop_keep, cfg.model.mask_ratio, generator=gen)
    if keep is not None:
        net_kwargs["keep_mask"] = keep
    if getattr(cfg.model, "route_ratio", 0.0):  # TREAD: a share of the tokens entering the blocks skips a span
        grid = cfg.model.input_size // cfg.model.patch_size
        tokens_in = grid * grid if keep is None else int(keep[0].sum())  # the kept count needs a read: only here
        net_kwargs["route_mask"] = sample_route_mask(cfg.model, n, tokens_in, generator=gen, device=device)
    repa = None
    if teacher is not None:  # REPA targets: the kept tokens' teacher features; a CutMix composite has none of its own
        target = teacher[torch.as_tensor(np.asarray(idx), dtype=torch.long)].to(device, torch.float32)
        if keep is not None:
            target = keep_tokens(target, keep)
        valid = torch.ones(n, device=device) if swap is None else (~swap).float()
        repa = (target, valid)
    return batch["x0"], tokens, mask, sigma, net_kwargs, repa


def _check_same_run(saved: dict, cfg: RunConfig, run_dir: Path) -> None:
    saved, now = plain(saved), plain(to_dict(cfg))  # tuples vs lists: .pt keeps tuples, a DCP meta.json lists
    for section in ("model", "objective", "data"):
        if saved.get(section) != now[section]:
            raise ValueError(
                f"run folder {run_dir} holds a checkpoint trained with a different `{section}` config; "
                f"resume with the run's own config.yaml or start a new run folder"
            )


@torch.no_grad()
def _outputs_finite(net, objective, cfg: RunConfig, tokens, mask, device) -> bool:
    """One denoiser call of `net` at the first sampling σ on fixed noise (the unconditional caption): finite weights
    can still be far enough off to give NaN / Inf images, which sampling would write as black squares."""
    m = cfg.model
    sigma = objective.sampling_sigmas(2, device=device)[0].float()
    x = torch.randn(1, m.in_channels, m.input_size, m.input_size, device=device,
                    generator=torch.Generator(device).manual_seed(0)) * sigma
    was_training = net.training
    out = objective.denoiser(net.eval())(x, sigma, tokens.float(), mask)
    net.train(was_training)
    return bool(all_reduce_mean(torch.tensor([float(count_diverged(out))], device=device)) == 0)


def train(cfg: RunConfig, run_dir: str | Path, **kwargs) -> dict:
    """Train `cfg` in `run_dir` (see `_train`), holding the run-folder lock (rank 0; `state.run_lock`) throughout:
    a second process on the same folder fails at once, before touching a file."""
    check_device(cfg.train.device)
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(cfg, run_dir, **kwargs)
    with run_lock(run_dir, log=kwargs.get("log", print)):
        return _train(cfg, run_dir, **kwargs)


def _train(cfg: RunConfig, run_dir: str | Path, *, stop_nimg: int | None = None, progress: bool = True,
           log=print, store: Store | None = None, cutmix_store: Store | None = None, evaluate=None) -> dict:
    """Train `cfg` in `run_dir`, resuming from its newest intact checkpoint. Returns a summary dict.

    Under `torchrun` every rank calls this; rank 0 alone writes logs, checkpoints (except sharded ones, which every
    rank writes) and the final weights. `stop_nimg` ends the job early (after a checkpoint) the way EDM2's
    `slice_nimg` does on preemptible clusters. `store` / `cutmix_store` replace the cached data set / CutMix
    composites (composite k = i·times + j of source i). `evaluate(cfg, run_dir, device, log=)` builds the in-training
    evaluation when `eval.every_nimg` > 0 (the caller's: `eval.live.LiveEval`; the trainer never imports eval; it
    also gets `captions=`, a callable giving the data's captions, the grid's prompts off world data): an object with `due(nimg, batch_size)` and `__call__(ema_net, nimg, null_tokens, null_mask) -> stats line`.

    Read top to bottom like EDM2's training loop: set-up (data, then model), resume, the loop, finish.
    """
    r = _setup_data(cfg, Path(run_dir), progress=progress, log=log, store=store, cutmix_store=cutmix_store)
    _setup_model(r)
    _resume(r)
    _start(r, evaluate)
    _loop(r, stop_nimg=stop_nimg, progress=progress)
    return _finish(r)


class _Run(SimpleNamespace):
    """What the parts of `_train` share: the config, the distributed environment, data, networks, optimizer and the
    progress counters (nimg, step, elapsed, nan_skips), which checkpoints save and resume restores."""


def _setup_data(cfg: RunConfig, run_dir: Path, *, progress: bool, log, store, cutmix_store) -> _Run:
    """The process group, the batch split, and the data (rank 0 builds a missing cache first; the others then read
    it), checked against the model config; REPA's teacher features when asked for."""
    t = cfg.train
    check_validation(cfg)  # train.val_every_nimg needs data.val_fraction (train/validation.py)
    if t.threads:
        torch.set_num_threads(t.threads)
    env = init_distributed(t.device, timeout_s=t.dist_timeout_s, need_group=t.parallel == "fsdp")
    device, main = env.device, env.is_main
    log = log if main else (lambda *a, **k: None)
    micro, rounds = split_batch(t.batch_size, t.micro_batch, env.world_size)  # global batch = micro × rounds × ranks
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    aug = cfg.augment

    def data():
        s = store if store is not None else prepare_data(cfg, device, log=log)
        c = cutmix_store if cutmix_store is not None or not aug.cutmix.enabled else prepare_cutmix(cfg, device, log=log)
        return s, c

    with heartbeat("data", "preparing the training data (cached after the first run)", enabled=progress and main):
        store, cutmix_store = main_first(data)
    cutmix_store = cutmix_store if aug.cutmix.enabled else None
    if store.text_tokens.shape[-1] != cfg.model.text_dim:
        raise ValueError(f"model.text_dim={cfg.model.text_dim} but the text encoder gives {store.text_tokens.shape[-1]}; "
                         f"set model.text_dim={store.text_tokens.shape[-1]}")
    m, latent = cfg.model, tuple(store.latents.shape[1:])
    if cfg.data.buckets:  # aspect buckets (data/buckets.py): latents of several shapes, one per batch
        check_bucket_store(cfg, store)
    elif latent != (m.in_channels, m.input_size, m.input_size):
        raise ValueError(f"the data's latents are {list(latent)} (data.resolution={cfg.data.resolution}, data.codec="
                         f"{cfg.data.codec!r}) but the model takes [{m.in_channels}, {m.input_size}, {m.input_size}]; "
                         f"set model.in_channels={latent[0]} model.input_size={latent[-1]} or change data.resolution")
    _check_augment(cfg, store, cutmix_store)
    repa_w = cfg.objective.repa_weight
    teacher = main_first(lambda: prepare_teacher(cfg, store, device, log=log)) if repa_w else None
    return _Run(cfg=cfg, t=t, run_dir=run_dir, env=env, device=device, rank=env.rank, world_size=env.world_size,
                main=main, log=log, micro=micro, rounds=rounds, store=store, cutmix_store=cutmix_store,
                repa_w=repa_w, teacher=teacher)


def _setup_model(r: _Run) -> None:
    """Network, EMA, REPA hook, objective, data order and the unconditional caption."""
    cfg, t = r.cfg, r.t
    torch.manual_seed(t.seed)
    r.net = build(cfg.model).to(r.device)
    if t.freeze:  # fine-tuning: parameters under these name prefixes keep their weights (train/finetune.py)
        freeze(r.net, t.freeze, log=r.log)
    if t.lora_rank:  # LoRA: adapters on the attention / MLP projections train, nothing else (models/lora.py)
        r.net = apply_lora(r.net, t.lora_rank, t.lora_alpha, t.lora_targets)
    r.ema = EMA(r.net, t.ema_decay, t.ema_start_nimg)
    r.repa = RepaCapture(r.net, cfg.model.repa_depth) if r.repa_w else None  # REPA reads the aligned block's tokens
    r.objective = build_objective(cfg.objective)
    r.sampler = train_sampler(cfg, len(r.store))  # the training split only (data.val_fraction, data/holdout.py)
    if cfg.data.buckets:  # every batch from one aspect bucket, in a resumable order (data/buckets.py)
        r.sampler = BucketPositions(r.store.bucket_of, t.batch_size, seed=t.seed)
    r.uncond_tokens, r.uncond_mask = (v.to(r.device) for v in r.store.null_text(cfg.objective.uncond))


def _resume(r: _Run) -> None:
    """The newest intact checkpoint (a `.pt` payload, or a `.dcp` folder that loads after wrapping), the wrapping
    from outside (dist.py) and the optimizer; the progress counters from the checkpoint, else zero."""
    cfg, t, run_dir = r.cfg, r.t, r.run_dir
    if r.main:  # temp files of checkpoint writes a kill interrupted: never read, so only disk space
        remove_stale_temp(run_dir)
    ckpts = list_checkpoints(run_dir)
    latest, payload = resume_point(run_dir, log=r.log, require=TRAINING_KEYS)
    if ckpts and latest is None:
        raise RuntimeError(f"no readable checkpoint in {run_dir} ({', '.join(p.name for p in ckpts)} are damaged "
                           f"or incomplete); move them away to start over, or pass another run folder")
    if payload is not None:
        _check_same_run(payload["config"], cfg, run_dir)
        load_weights(r.net, payload["model"])  # a LoRA run's first checkpoint (--init) holds base weights only
        load_weights(r.ema.model, payload["ema"])
    r.model = wrap_model(r.net, parallel=t.parallel, precision=t.precision, compile=t.compile,
                         activation_checkpointing=t.activation_checkpointing, env=r.env)
    if t.parallel == "fsdp":
        shard(r.ema.model, t.precision)
    r.opt = make_optimizer(r.net, t)
    r.nimg, r.step, r.elapsed, r.nan_skips = 0, 0, 0.0, 0
    if payload is not None:
        load_optimizer(r.model, r.opt, payload["optimizer"])
        meta = payload
    elif latest is not None:  # a sharded checkpoint: loads at any world size (DCP reshards)
        meta = load_sharded(latest, r.model, r.opt, r.ema.model)
        _check_same_run(meta["config"], cfg, run_dir)
    if latest is not None:
        r.nimg, r.step, r.elapsed, r.nan_skips = meta["nimg"], meta["step"], meta["elapsed"], meta["nan_skips"]
        if cfg.data.buckets:  # the bucket sampler's state (seed, batch, data size checked; its position = nimg)
            r.sampler.load_state_dict(meta["bucket_sampler"])
        r.log(f"[resume] {run_dir} at {r.nimg} images (step {r.step})")
    r.sharded = is_sharded(r.model)


def _start(r: _Run, evaluate) -> None:
    """The run's config.yaml, the stats logger, the in-training evaluation (the caller's `evaluate`), one line."""
    cfg, t = r.cfg, r.t
    if r.main:
        save_yaml(cfg, r.run_dir / "config.yaml")
    r.stats_log = RunLogger(r.run_dir, r.nimg, tensorboard=t.tensorboard, wandb=t.wandb,
                            config=plain(to_dict(cfg))) if r.main else None  # JSONL (+ TensorBoard / W&B)
    r.live_eval = None
    if cfg.eval.every_nimg:
        if evaluate is None:
            raise ConfigError(f"eval.every_nimg={cfg.eval.every_nimg} needs an in-training evaluator: train with "
                              f"`microt2i train`, pass evaluate=microt2i.eval.live.LiveEval, or set eval.every_nimg=0")
        r.live_eval = evaluate(cfg, r.run_dir, r.device, log=r.log, captions=lambda: r.store.captions)
    r.held_out = HeldOutLoss(cfg, r.store, r.objective, r.device) if t.val_every_nimg else None
    ws = r.world_size
    r.log(f"[train] {cfg.name}: {count_params(r.net) / 1e6:.2f}M params, {len(r.store)} samples, batch {t.batch_size} "
          f"({ws} rank{'s' if ws > 1 else ''} × {r.rounds} × {r.micro}"
          f"{', ' + t.parallel if ws > 1 or r.sharded else ''}), {t.total_nimg} images, device {r.device}")


def _diverged(r: _Run) -> tuple[list[str], bool]:
    """(this rank's NaN / Inf weight and EMA tensors, whether any rank has one)."""
    names = non_finite({f"model.{k}": local_shard(v) for k, v in r.net.state_dict().items()},
                       {f"ema.{k}": local_shard(v) for k, v in r.ema.state_dict().items()})
    return names, bool(all_reduce_mean(torch.tensor([float(bool(names))], device=r.device)) > 0)


def _healthy(r: _Run) -> str:
    """Why the live state must not be checkpointed ("" = it may): NaN / Inf weights or EMA, or finite weights
    whose outputs overflow (divergence: the last good checkpoint must survive for "lower the lr and resume")."""
    names, bad = _diverged(r)
    if bad:
        return f"NaN / Inf weights ({', '.join(names[:3]) or 'on another rank'})"
    for name, m in (("network", r.net), ("EMA network", r.ema.model)):
        if not _outputs_finite(m, r.objective, r.cfg, r.uncond_tokens, r.uncond_mask, r.device):
            return f"the {name}'s denoised images overflow (finite weights, far off)"
    return ""


def _checkpoint(r: _Run) -> None:
    r.guard.sync()  # a streak that reached train.nan_abort_streak aborts before anything is written
    r.nan_skips = r.guard.nan_skips
    why = _healthy(r)
    if why:
        good = [p.name for p in list_checkpoints(r.run_dir)]
        r.log(f"[train] not writing a checkpoint at {r.nimg} images: {why}; the newest one stays "
              f"{good[-1] if good else '(none)'}")
        return
    meta = {"nimg": r.nimg, "step": r.step, "elapsed": r.elapsed, "nan_skips": r.nan_skips, "config": to_dict(r.cfg)}
    if r.cfg.data.buckets:
        r.sampler.seek(r.nimg)
        meta["bucket_sampler"] = r.sampler.state_dict()
    if r.sharded:  # every rank writes its shards
        save_sharded(checkpoint_path(r.run_dir, r.nimg, sharded=True), r.model, r.opt, r.ema.model, plain(meta))
        if r.main:
            prune_checkpoints(r.run_dir)
    elif r.main:
        save_checkpoint(r.run_dir, r.nimg, {"model": r.net.state_dict(), "ema": r.ema.state_dict(),
                                            "optimizer": r.opt.state_dict(), **meta})
    barrier()


def _loop(r: _Run, *, stop_nimg: int | None, progress: bool) -> None:
    """Steps until `stop_nimg` (or the end): one optimizer step, then the due report, evaluation and checkpoint."""
    t = r.t
    r.autocast = torch.autocast(r.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    end_nimg = t.total_nimg if stop_nimg is None else min(stop_nimg, t.total_nimg)
    bar = Progress(end_nimg, initial=r.nimg, desc="train", unit="img", enabled=progress and r.main,
                   work=f"{-(-(end_nimg - r.nimg) // t.batch_size)} steps of {t.batch_size}"
                        + (f", stopping at {end_nimg} of {t.total_nimg}" if end_nimg < t.total_nimg else ""))
    r.acc = torch.zeros(4, device=r.device, dtype=torch.float64)  # Σ loss, Σ grad norm, steps, Σ REPA: on device
    r.t_report, r.nimg_report = time.perf_counter(), r.nimg
    # non-finite steps are skipped on the device (fused AdamW's found_inf): no host sync per step (nan_guard.py)
    r.guard = NanGuard(r.opt, r.device, nan_skips=r.nan_skips, abort_streak=t.nan_abort_streak,
                       resume_hint=str(r.run_dir), log=r.log)
    r.model.train()
    r.reader = None  # loader workers read a sharded store's next micro-batches, in the loop's order (data/loader.py)
    if t.loader_workers and hasattr(r.store, "read"):
        steps_left = -(-(end_nimg - r.nimg) // t.batch_size)
        r.reader = iter(make_loader(r.store, r.sampler, start=r.nimg, end=r.nimg + steps_left * t.batch_size,
                                    micro=r.micro, rank=r.rank, world_size=r.world_size, workers=t.loader_workers))
    while r.nimg < end_nimg:
        _step(r)
        bar.update(t.batch_size)
        done = r.nimg >= end_nimg
        if r.nimg // t.log_every_nimg != (r.nimg - t.batch_size) // t.log_every_nimg or done:
            _report(r, bar)
        if r.live_eval is not None and r.live_eval.due(r.nimg, t.batch_size):  # every rank samples (a sharded EMA
            ev = r.live_eval(r.ema.model, r.nimg, r.uncond_tokens, r.uncond_mask)  # needs all): none waits
            if r.main:
                r.stats_log.append(ev)
        if r.held_out is not None and r.held_out.due(r.nimg, t.batch_size):  # fixed σ, noise (train/validation.py)
            ev = r.held_out(r.model, r.nimg)
            if r.main:
                r.stats_log.append(ev)
        if r.nimg // t.ckpt_every_nimg != (r.nimg - t.batch_size) // t.ckpt_every_nimg or done:
            _checkpoint(r)
    bar.close()
    if r.stats_log is not None:
        r.stats_log.close()


def _step(r: _Run) -> None:
    """One optimizer step over the global batch: `rounds` micro-batches per rank, clip, skip a non-finite update."""
    t, cfg, model = r.t, r.cfg, r.model
    t_step = time.perf_counter()
    r.lr = lr = lr_at(r.nimg, t)
    for group in r.opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # e.g. MoE experts at lr × train.expert_lr_scale
    r.opt.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=r.device)
    repa_sum = torch.zeros((), device=r.device)
    micro, rounds = r.micro, r.rounds
    for k in range(rounds):
        # This rank's slice of round k: global positions start … start + micro (data order and draws: step_seed)
        start = r.nimg + k * micro * r.world_size + r.rank * micro
        gen = torch.Generator(r.device).manual_seed(step_seed(t.seed, start))
        x0, tokens, mask, sigma, net_kwargs, repa_target = micro_batch(
            cfg, r.objective, r.store, r.cutmix_store, r.sampler.indices(start, micro), gen, r.device, r.uncond_tokens,
            r.uncond_mask, rows=None if r.reader is None else next(r.reader), teacher=r.teacher)
        with grad_sync(model, k == rounds - 1):  # accumulation: all-reduce on the last micro-step only
            with r.autocast:
                loss = r.objective.loss(model, x0, tokens, mask, generator=gen, sigma=sigma, **net_kwargs).mean()
                total = loss
                if r.repa is not None:  # + λ·REPA (Yu et al. 2024 Eq. 8)
                    repa_l = r.repa.loss(*repa_target).mean()
                    total = loss + r.repa_w * repa_l
                    repa_sum += repa_l.detach() / rounds
            (total / rounds).backward()
        loss_sum += loss.detach() / rounds
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    r.guard.step(grad_norm, r.nimg)  # opt.step() unless the gradient is non-finite, decided on the device
    r.nimg += t.batch_size
    r.step += 1
    r.ema.update(model, r.nimg)
    r.elapsed += time.perf_counter() - t_step
    ok = torch.isfinite(loss_sum) & torch.isfinite(grad_norm)  # skipped steps stay out of the averages
    r.acc += torch.where(ok, torch.stack([loss_sum.double(), grad_norm.double(), torch.ones_like(r.acc[0]),
                                          repa_sum.double()]), 0.0)


def _report(r: _Run, bar: Progress) -> None:
    """One stats line (rank-mean loss, grad norm, lr, img/s, …) into stats.jsonl; the accumulators restart."""
    now = time.perf_counter()
    r.guard.sync()
    r.nan_skips = r.guard.nan_skips
    loss_sum_, gn_sum, n, repa_sum_ = all_reduce_mean(r.acc).tolist()
    stats = {"nimg": r.nimg, "step": r.step, "loss": loss_sum_ / n if n else None,
             "grad_norm": gn_sum / n if n else None, "lr": r.lr,
             "img_per_s": (r.nimg - r.nimg_report) / max(now - r.t_report, 1e-9), "elapsed_s": round(r.elapsed, 3),
             "nan_skips": r.nan_skips, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if r.repa is not None:  # the mean cosine similarity to the teacher (REPA's alignment, higher is better)
        stats["repa_cos"] = -repa_sum_ / n if n else None
    if r.main:
        r.stats_log.append(stats)
    bar.set_postfix(loss=f"{stats['loss']:.4f}" if stats["loss"] is not None else "skipped")
    r.acc.zero_()
    r.t_report, r.nimg_report = now, r.nimg


def _finish(r: _Run) -> dict:
    """A checkpoint if none was written; refuse a diverged run; a finished one writes its inference artifacts."""
    cfg, t, run_dir = r.cfg, r.t, r.run_dir
    if not list_checkpoints(run_dir):
        _checkpoint(r)
    names, bad = _diverged(r)
    what = f"NaN / Inf in {len(names) or 'some'} weight tensors (e.g. {', '.join(names[:2]) or 'on another rank'})"
    if not bad and not _outputs_finite(r.ema.model, r.objective, cfg, r.uncond_tokens, r.uncond_mask, r.device):
        what, bad = "the EMA network's denoised images overflow (finite weights, far off)", True
    if bad:  # divergence is never a success: nothing is exported, the newest (finite) checkpoint stays the resume point
        good = [p.name for p in list_checkpoints(run_dir)]
        raise FloatingPointError(
            f"training diverged at {r.nimg} images: {what}; nothing was exported. Lower train.lr (now {t.lr:g}), keep "
            f"train.grad_clip > 0, then re-run: it resumes from "
            f"{good[-1] + ', the newest finite checkpoint' if good else 'scratch (no finite checkpoint was written)'}")
    finished = r.nimg >= t.total_nimg
    ema_model = r.ema.model
    if finished:  # the inference artifacts: consolidated EMA weights + the unconditional caption CFG needs
        weights = full_state_dict(r.ema.model)  # a collective under FSDP2; the full copy lands on rank 0 only
        if r.sharded and r.main:
            ema_model = build(cfg.model)
            ema_model.load_state_dict(weights)
        if r.main:
            (save_lora_pretrained if t.lora_rank else save_pretrained)(ema_model, run_dir / "ema")
            atomic_write_bytes(run_dir / "null_text.safetensors", save({
                "tokens": r.uncond_tokens.cpu().contiguous(), "mask": r.uncond_mask.cpu().to(torch.uint8)}))
        barrier()
    return {"nimg": r.nimg, "step": r.step, "finished": finished, "elapsed_s": r.elapsed, "nan_skips": r.nan_skips,
            "params": count_params(r.net), "net": r.net, "ema": ema_model, "store": r.store, "rank": r.rank,
            "world_size": r.world_size}
