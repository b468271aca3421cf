"""Fine-tuning from a checkpoint (`microt2i train --init <run | export folder>`; ImageNet-T2I §5: "ImageNet pretrained
models can be fine-tuned on task specific datasets").

Like a recipe stage (train/recipe.py `seed_stage`), the carried state is written into the new run folder as its
checkpoint at 0 images, so the ordinary trainer simply resumes from it; the LR schedule, warm-up and length are the
new run's (`train.*`), counted from 0. What carries over (`train.init_mode`):
- "weights": the source's EMA weights (what `ema/` exports hold), a fresh optimizer, the EMA restarted from them;
- "state": weights, EMA and the AdamW / LAMB moments (a run folder only), moved to the new run's parameter order by
  name, so freezing other parameters keeps each moment with its tensor.
`train.freeze` lists parameter-name prefixes that keep their weights (requires_grad off before the optimizer is
built, in the trainer). A resolution change needs no weights for DiT-I / MicroDiT (their sin-cos positions are
rebuilt from `input_size` and `pos_interp_scale`); a learned position table (CAD-I's `data_pos`) is interpolated
bicubically on its 2-D grid (position interpolation, PixArt-α §2.4), and its optimizer moments are reset.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError, ModelConfig, RunConfig, from_dict, load_yaml, to_dict
from ..io import atomic_write_text
from ..models import build
from ..models.lora import apply_lora
from .dist import broadcast_object, is_main
from .optim import make_optimizer, param_groups
from .recipe import latest_payload
from .state import list_checkpoints, save_checkpoint
import contextlib
import os
from safetensors.torch import load_file
from .loop import train
from .state import run_lock
from ..encoders.hub import resolve_init_hub
from ..models import from_pretrained


def resolve_init(init: str | Path) -> tuple[str, Path]:
    """("run", folder) for a run folder with checkpoints, ("export", folder) for a saved model (model.safetensors +
    config.json, e.g. a run's ema/ or `microt2i export` output)."""
    p = Path(init).expanduser()
    if not p.exists():  # a Hugging Face Hub id (owner/name): downloaded into the HF cache, then read like a folder
        p = resolve_init_hub(str(init))
    if list_checkpoints(p) and (p / "config.yaml").is_file():
        return "run", p
    for folder in (p, p / "ema"):
        if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
            return "export", folder
    if (p / "transformer" / _DIFFUSERS_WEIGHTS).is_file() and (p / "transformer" / "config.json").is_file():
        return "export", p / "transformer"  # a `microt2i export` (diffusers) folder, e.g. one pushed to the Hub
    raise FileNotFoundError(f"train.init={str(init)!r} is neither a run folder (training-state-*.pt + config.yaml) nor "
                            f"an exported model folder (model.safetensors + config.json)")


def _export_weights(folder: Path) -> tuple[dict, ModelConfig]:
    d = json.loads((folder / "config.json").read_text())
    if (folder / _DIFFUSERS_WEIGHTS).is_file() and isinstance(d.get("model"), dict):  # MicroT2ITransformer's layout
        d = dict(d["model"])
        d.pop("format_version", None)
        weights = load_file(str(folder / _DIFFUSERS_WEIGHTS))
        return {k[4:]: v for k, v in weights.items() if k.startswith("net.")}, from_dict(ModelConfig, d, "model")
    d.pop("format_version", None)
    return load_file(str(folder / "model.safetensors")), from_dict(ModelConfig, d, "model")


_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"  # the transformer/ weights of a `microt2i export`


def interpolate_positions(table: torch.Tensor, n_new: int) -> torch.Tensor:
    """A learned [G², D] (or [1, G², D]) position table resized bicubically to [G'², D] on its 2-D grid."""
    lead = table.shape[:-2]
    n_old, dim = table.shape[-2:]
    g_old, g_new = math.isqrt(n_old), math.isqrt(n_new)
    if g_old * g_old != n_old or g_new * g_new != n_new:
        raise ValueError(f"a position table of {n_old} → {n_new} rows is not a square grid; cannot interpolate it")
    grid = table.reshape(g_old, g_old, dim).permute(2, 0, 1)[None].float()
    out = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).reshape(*lead, n_new, dim).to(table.dtype)


def adapt_weights(weights: dict, net: torch.nn.Module) -> tuple[dict, list[str]]:
    """`weights` fitted to `net`'s shapes: equal shapes pass, position tables (a "pos" name, rows on a square grid)
    are interpolated; anything else that differs is an error naming it. Returns (weights, interpolated names)."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise ValueError(f"the init weights do not fit this {net.config.family} network: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}; fine-tune with the source's model.* settings (only the resolution "
                         f"may change)")
    out, moved = {}, []
    for k, shape in expected.items():
        w = weights[k]
        if tuple(w.shape) == shape:
            out[k] = w
        elif "pos" in k.split(".")[-1] and w.ndim >= 2 and w.shape[-1] == shape[-1] and w.shape[:-2] == shape[:-2]:
            out[k] = interpolate_positions(w, shape[-2])
            moved.append(k)
        else:
            raise ValueError(f"init weight {k} is {tuple(w.shape)}, this network needs {shape}: the architectures "
                             f"differ (fine-tune with the source's model.* settings; only the resolution may change)")
    return out, moved


def _optimizer_names(net: torch.nn.Module, train_cfg) -> list[str]:
    """Parameter names in the optimizer's index order (`param_groups` flattened)."""
    name = {id(p): n for n, p in net.named_parameters()}
    return [name[id(p)] for g in param_groups(net, train_cfg.weight_decay, train_cfg.expert_lr_scale)
            for p in g["params"]]


def _meta_net(model_cfg, freeze_prefixes=()):
    with torch.device("meta"):
        net = build(model_cfg)
    for n, p in net.named_parameters():
        if any(n.startswith(pre) for pre in freeze_prefixes):
            p.requires_grad_(False)
    return net


def init_run(cfg: RunConfig, run_dir: str | Path, log=print) -> str | None:
    """Write `run_dir`'s starting checkpoint from `cfg.train.init` (see the module docstring). Returns "weights" or
    "state"; None when the run folder already has a checkpoint (it resumes, the init is not read again)."""
    run_dir = Path(run_dir)
    t = cfg.train
    if not t.init:
        raise ConfigError("init_run needs train.init=<run folder or exported model folder>")
    if list_checkpoints(run_dir):
        return None
    kind, src = resolve_init(t.init)
    if t.init_mode == "state" and kind != "run":
        raise ConfigError(f"train.init_mode=state needs a run folder with training-state checkpoints; {src} is an "
                          f"exported model (weights only): use train.init_mode=weights")
    net = _meta_net(cfg.model, t.freeze)
    if kind == "run":
        src_cfg = load_yaml(src / "config.yaml")
        payload = latest_payload(src_cfg, src)
        if payload is None:
            raise FileNotFoundError(f"no readable checkpoint in {src}")
        src_model, weights, ema = src_cfg.model, payload["ema"], payload["ema"]
        if src_cfg.train.lora_rank:  # its checkpoints hold adapters beside the base; ema/ holds them merged
            raise ConfigError(f"train.init={src} is a LoRA run: start from its merged weights, train.init={src}/ema")
        if t.init_mode == "state":
            weights = payload["model"]
    else:
        weights, src_model = _export_weights(src)
        ema = weights
    if src_model.family != cfg.model.family:
        raise ConfigError(f"train.init={src} holds a {src_model.family} network; this run builds {cfg.model.family} "
                          f"(set model.* to the source's)")
    weights, moved = adapt_weights(weights, net)
    ema, _ = adapt_weights(ema, net)
    if t.lora_rank:  # the optimizer holds the adapters only; the trainer loads these base weights under them
        net = apply_lora(net, t.lora_rank, t.lora_alpha, t.lora_targets)
    groups = make_optimizer(net, t).state_dict()["param_groups"]  # the new run's lr, betas, decay, frozen params
    state = {}
    if t.init_mode == "state":  # moments by parameter name, from the source's order to this run's
        src_names = _optimizer_names(_meta_net(src_model, src_cfg.train.freeze), src_cfg.train)
        index = {n: i for i, n in enumerate(_optimizer_names(net, t))}
        for i, s in payload["optimizer"]["state"].items():
            name = src_names[int(i)]
            if name in index and name not in moved:
                state[index[name]] = s
    save_checkpoint(run_dir, 0, {"model": weights, "ema": ema, "optimizer": {"state": state, "param_groups": groups},
                                 "nimg": 0, "step": 0, "elapsed": 0.0, "nan_skips": 0, "config": to_dict(cfg)})
    info = {"init": str(src), "kind": kind, "mode": t.init_mode, "interpolated": moved, "freeze": list(t.freeze),
            "source_model": dataclasses.asdict(src_model)}
    atomic_write_text(run_dir / "init.json", json.dumps(info, indent=1))
    log(f"[finetune] {run_dir} starts from {src} ({'weights, EMA and optimizer' if t.init_mode == 'state' else 'EMA weights'}"
        f"{', positions interpolated: ' + ', '.join(moved) if moved else ''})")
    return t.init_mode


def finetune(cfg: RunConfig, run_dir: str | Path, *, log=print, **train_kwargs) -> dict:
    """`init_run` (rank 0 writes; the others wait), then the ordinary trainer, which resumes from it."""
    main = int(os.environ.get("RANK", "0")) == 0  # the run-folder lock covers the seeding write too (re-entrant)
    with run_lock(run_dir, log=log) if main else contextlib.nullcontext():
        mode = init_run(cfg, run_dir, log=log) if is_main() else None
        broadcast_object(mode)
        return train(cfg, run_dir, log=log, **train_kwargs)


# --------------------------------------------------------------------------------------------------- before / after


def init_sampler(cfg: RunConfig, run_dir: str | Path, device="cpu"):
    """(config, network) of the model a fine-tune started from (its init.json), for before/after comparisons."""
    info = json.loads((Path(run_dir) / "init.json").read_text())
    src = Path(info["init"])
    if info["kind"] == "export":
        net = from_pretrained(src, device=device)
    else:
        src_cfg = load_yaml(src / "config.yaml")
        payload = latest_payload(src_cfg, src)
        with torch.device(device):
            net = build(src_cfg.model)
        net.load_state_dict(payload["ema"])
        net.eval()
    return dataclasses.replace(cfg, model=net.config), net
