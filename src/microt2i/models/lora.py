"""LoRA adapters on the attention and MLP projections of every backbone (LoRA, Hu et al. 2021), through `peft`.

`apply_lora(net, rank, alpha, targets)` injects peft's `lora.Linear` into the chosen `nn.Linear`s: every
`Attention`'s q/k/v and output projections ("attention"), every `Mlp` / `SwiGLU`'s fc1 / fc2 ("mlp"), or both.
peft freezes everything else (base weights, norms, positions, embedders), so only the adapters train:
W x + (alpha / rank) · B A x, with B zero-initialised (the adapted network starts equal to the base).

The wrapped network's state dict names a targeted base weight `<module>.base_layer.weight`; `load_weights`
accepts either that layout (a LoRA run's own checkpoint, exact resume) or the plain one (a fine-tune's starting
checkpoint from `--init`: base weights loaded, adapters left at their seeded initialisation). `merge_lora` folds
the adapters into the base weights and restores the plain module tree (what `ema/model.safetensors` holds, so
`microt2i sample` / `export` / `eval` need nothing else); `save_adapter` / `attach_adapter` write and load the
adapter alone as safetensors (peft's key layout, settings in the metadata).

peft is an optional dependency (`pip install microt2i[lora]`); it is imported inside the functions that need it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save

from ..config import ConfigError
from ..io import atomic_write_bytes
from . import save_pretrained
from .layers import Attention, Mlp, SwiGLU

TARGETS = ("attention", "mlp", "both")
ADAPTER_NAME = "adapter.safetensors"  # next to ema/model.safetensors; shipped in the export's lora/ folder


def _peft():
    try:  # optional dependency: only LoRA runs need it
        import peft  # optional extra (microt2i[lora])
    except ImportError:
        raise ConfigError("train.lora_rank > 0 needs peft: pip install 'microt2i[lora]' (or pip install peft)") from None
    return peft


def check(rank: int, alpha: float, targets: str) -> None:
    """One clear error per bad LoRA setting (rank 0 = LoRA off)."""
    if not isinstance(rank, int) or rank < 0:
        raise ConfigError(f"train.lora_rank={rank!r} must be a positive integer (0 = no LoRA)")
    if alpha < 0:
        raise ConfigError(f"train.lora_alpha={alpha} must be > 0 (0 = the rank, i.e. scale 1)")
    if targets not in TARGETS:
        raise ConfigError(f"train.lora_targets={targets!r} is not one of {', '.join(TARGETS)}")


def target_names(net: nn.Module, targets: str) -> list[str]:
    """Full names of the nn.Linear modules LoRA adapts: Attention projections and/or Mlp / SwiGLU layers."""
    kinds = {"attention": (Attention,), "mlp": (Mlp, SwiGLU), "both": (Attention, Mlp, SwiGLU)}[targets]
    names = []
    for name, m in net.named_modules():
        if isinstance(m, kinds):
            names += [f"{name}.{c}" if name else c for c, sub in m.named_children() if isinstance(sub, nn.Linear)]
    if not names:
        raise ConfigError(f"train.lora_targets={targets} matches no projection of this {net.config.family} network")
    return names


def apply_lora(net: nn.Module, rank: int, alpha: float = 0.0, targets: str = "both") -> nn.Module:
    """Inject LoRA adapters (in place; returns `net`). Only adapter parameters keep requires_grad. The A matrices
    draw from torch's global RNG (seed it first for a reproducible run); the B matrices are zero."""
    check(rank, alpha, targets)
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=target_names(net, targets),
                             lora_dropout=0.0, bias="none")
    out = peft.inject_adapter_in_model(config, net)
    out.lora_settings = {"rank": rank, "alpha": float(alpha or rank), "targets": targets}
    return out


def has_lora(net: nn.Module) -> bool:
    return any(".lora_A." in n for n, _ in net.named_parameters())


def load_weights(net: nn.Module, state: dict) -> str:
    """Load `state` into `net` strictly. A LoRA network also takes a plain (base-only) state dict: the base
    weights load, the adapters keep their initialisation. Returns "full" or "base"."""
    if not has_lora(net) or any(".lora_A." in k for k in state):
        net.load_state_dict(state)
        return "full"
    own = net.state_dict()
    mapped = {}
    for k, v in state.items():
        head, _, leaf = k.rpartition(".")
        alt = f"{head}.base_layer.{leaf}"
        mapped[alt if alt in own and k not in own else k] = v
    for k in own:
        if ".lora_" in k:
            mapped[k] = own[k]
    net.load_state_dict(mapped)
    return "base"


def adapter_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors alone (peft's layout: `<module>.lora_A.weight`, `<module>.lora_B.weight`)."""
    peft = _peft()
    return {k: v.detach().cpu().contiguous() for k, v in peft.get_peft_model_state_dict(net).items()}


def save_adapter(net: nn.Module, path: str | Path, **meta) -> Path:
    """Write the adapter alone as safetensors (atomic), its rank / alpha / targets (+ `meta`) in the metadata."""
    path = Path(path)
    info = dict(getattr(net, "lora_settings", {}), **meta)
    atomic_write_bytes(path, save(adapter_state(net), metadata={"lora": json.dumps(info)}))
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, settings) of an adapter file `save_adapter` wrote; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter {str(path)!r} does not exist (a LoRA run writes ema/{ADAPTER_NAME})")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "lora" not in meta:
        raise ValueError(f"{path} is not a microt2i LoRA adapter (no 'lora' settings in its metadata)")
    return tensors, json.loads(meta["lora"])


def attach_adapter(net: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter file onto a plain (base) network: inject LoRA with the file's settings, then its tensors
    (strict: a key that fits no module is an error). The result computes base + adapter unmerged."""
    tensors, info = read_adapter(path)
    net = apply_lora(net, info["rank"], info["alpha"], info["targets"])
    result = _peft().set_peft_model_state_dict(net, tensors)
    if result.unexpected_keys:
        raise ValueError(f"LoRA adapter {path} does not fit this network: {result.unexpected_keys[:3]} match no module")
    return net.eval()


@torch.no_grad()
def merge_lora(net: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W ← W + (alpha/rank)·B A) and put the plain nn.Linear back, so the
    state dict has the base network's names again (in place; returns `net`)."""
    from peft.tuners.lora import LoraLayer  # optional dependency, present whenever the network has adapters

    for name, m in list(net.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge()
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, m.get_base_layer())
    if hasattr(net, "lora_settings"):
        del net.lora_settings
    return net


def save_lora_pretrained(net: nn.Module, folder: str | Path, **meta) -> None:
    """A LoRA network's inference artifact: `folder/adapter.safetensors` (the adapter alone) beside the usual
    `save_pretrained` files holding the merged weights (a copy is merged; `net` keeps its adapters)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_pretrained(merge_lora(copy.deepcopy(net)), folder)
    save_adapter(net, folder / ADAPTER_NAME, **meta)
