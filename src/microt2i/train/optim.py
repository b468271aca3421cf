"""AdamW, LAMB or Muon + AdamW with decay only on matrices, and the learning-rate schedule as a pure function of
images seen."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ConfigError, TrainConfig


def param_groups(model: nn.Module, weight_decay: float, expert_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on ≥2-D weights only; norms, biases, LayerScale γ and tables are not decayed.

    Mixture-of-experts weights (modules with `expert_parameters()`, e.g. `ExpertChoiceMoE`) go to a third group
    with `lr_scale` = expert_lr_scale: each expert sees only a fraction of the tokens, and MicroDiT halves their
    learning rate (MicroDiT App. B). The trainer sets every group's lr to schedule(nimg) · lr_scale. (The reference
    selects them by the name "moe", which its modules do not carry, so its halving never happens.)
    """
    experts = {id(p) for m in model.modules() if hasattr(m, "expert_parameters") for p in m.expert_parameters()}
    decay, no_decay, expert = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            (expert if id(p) in experts else decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if expert:
        groups.append({"params": expert, "weight_decay": weight_decay, "lr_scale": expert_lr_scale})
    return groups


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020, Algorithm 2) as CAD-I trains with it (the CAD code's `utils/optimizers.py`).

    Per parameter tensor θ with gradient g, Adam moments with bias correction and decoupled decay λ:

        m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,  u = m̂/(√v̂ + ε) + λ·θ  (m̂ = m/(1−β1^t), v̂ = v/(1−β2^t))
        θ ← θ − lr·r·u,  r = ‖θ‖/‖u‖ (1 when either norm is 0)

    The layer-wise trust ratio r applies in groups with `trust_ratio=True` only; elsewhere r = 1, a plain Adam step.
    CAD switches it off together with the decay for LayerNorm and bias parameters (`make_optimizer` does the
    same for every 1-D tensor: norms, biases, LayerScale gains).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, trust_ratio: bool = True):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"LAMB needs lr >= 0, eps >= 0 and betas in [0, 1), got {lr}, {eps}, {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      trust_ratio=trust_ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                if group["trust_ratio"]:
                    w_norm, u_norm = p.norm(), update.norm()
                    update.mul_(torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)))
                p.add_(update, alpha=-group["lr"])
        return loss


# Input and output layers stay on AdamW under Muon (Jordan et al. 2024: Muon is for the hidden 2-D weights); these are
# the top-level module names of every family's embeddings and heads.
MUON_EXCLUDE = ("x_embedder", "patch_embed", "y_embedder", "text_proj", "t_embedder", "t_block", "crop_embedder",
                "final_layer", "out", "y_pool", "repa_head")


def muon_params(model: nn.Module) -> set[int]:
    """ids of the weights Muon updates: every nn.Linear weight outside the input / output layers (MUON_EXCLUDE)."""
    return {id(m.weight) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name and name.split(".")[0] not in MUON_EXCLUDE}


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the hidden matrices and AdamW on the rest, as one optimizer (one state dict, one list of
    param groups, so checkpoints, LR schedules and fine-tuning treat it like AdamW).

    Muon's step is `torch.optim.Muon` with `adjust_lr_fn="match_rms_adamw"` (update RMS matched to AdamW's, Liu et al.
    2025), so the AdamW learning rate and decay carry over. Groups carry `muon: bool`; the two inner torch optimizers
    share this optimizer's groups and state."""

    def __init__(self, groups: list[dict], lr: float, betas, eps: float, momentum: float = 0.95):
        muon = [g for g in groups if g["muon"]]
        adamw = [g for g in groups if not g["muon"]]
        self._muon = torch.optim.Muon(muon, lr=lr, momentum=momentum, adjust_lr_fn="match_rms_adamw") if muon else None
        self._adamw = torch.optim.AdamW(adamw, lr=lr, betas=betas, eps=eps,
                                        **adamw_impl(p for g in adamw for p in g["params"])) if adamw else None
        inner = [g for opt in (self._muon, self._adamw) if opt is not None for g in opt.param_groups]
        super().__init__(inner, {})
        self._bind()

    def _bind(self) -> None:
        """Point the inner optimizers at this optimizer's groups and state (also after load_state_dict)."""
        for opt, flag in ((self._muon, True), (self._adamw, False)):
            if opt is not None:
                opt.param_groups = [g for g in self.param_groups if g["muon"] == flag]
                opt.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._bind()

    def step(self, closure=None):
        inner = [opt for opt in (self._muon, self._adamw) if opt is not None]
        loss = inner[0].step(closure)  # the first inner optimizer evaluates the closure, if any
        for opt in inner[1:]:
            opt.step()
        return loss


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.expert_lr_scale)
    if cfg.optimizer == "muon":  # split the decayed matrices into Muon's hidden weights and AdamW's embeddings / heads
        hidden = muon_params(model)
        split = []
        for g in groups:
            for flag in (True, False):
                ps = [p for p in g["params"] if (id(p) in hidden) == flag]
                if ps:
                    split.append({**g, "params": ps, "muon": flag})
        return MuonAdamW(split, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, momentum=cfg.muon_momentum)
    if cfg.optimizer == "lamb":
        for g in groups:  # layer adaptation on matrices and tables; plain Adam on norms, biases, gains (CAD)
            g["trust_ratio"] = all(p.ndim >= 2 for p in g["params"])
        return Lamb(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **adamw_impl(model.parameters()))


def adamw_impl(params) -> dict:
    """{"fused": True} when every parameter is a plain floating-point tensor on CPU or CUDA (one fused kernel for the
    whole update: ≈ 10 % faster training steps for the world presets on CPU), else {"foreach": True} (multi-tensor
    ops; also for FSDP2's sharded DTensor parameters). Both compute the same AdamW update; the optimizer state has
    the same layout, so checkpoints interchange."""
    params = list(params)
    fused_ok = params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                              and not hasattr(p, "device_mesh") for p in params)
    return {"fused": True} if fused_ok else {"foreach": True}


def lr_at(nimg: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_nimg`, then constant or cosine down to lr·min_lr_ratio at `total_nimg`.

    The cosine factor is ½(1 + cos(rate·π·progress)): rate = 1 is the full half-period; CAD's `rate` < 1 stops
    early (0.7 ends at ½(1 + cos 0.7π) ≈ 0.206 of the peak), and min_lr_ratio raises the floor under it."""
    if cfg.warmup_nimg > 0 and nimg < cfg.warmup_nimg:
        return cfg.lr * (nimg + cfg.batch_size) / (cfg.warmup_nimg + cfg.batch_size)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(cfg.total_nimg - cfg.warmup_nimg, 1)
    progress = min(max(nimg - cfg.warmup_nimg, 0) / span, 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * cfg.cosine_rate * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def freeze(net: torch.nn.Module, prefixes, log=print) -> int:
    """requires_grad_(False) on every parameter whose name starts with one of `prefixes`; returns how many tensors.
    A prefix that matches nothing is an error listing the network's top-level modules."""
    names = [n for n, _ in net.named_parameters()]
    unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unknown:
        top = sorted({n.split(".")[0] for n in names})
        raise ConfigError(f"train.freeze prefixes {unknown} match no parameter of this {net.config.family} network; "
                          f"its top-level modules are {', '.join(top)} (e.g. train.freeze=[{top[0]}])")
    count = 0
    for n, p in net.named_parameters():
        if any(n.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)
            count += 1
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    log(f"[finetune] froze {count} tensors ({frozen / 1e6:.2f}M of {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M "
        f"parameters) under {list(prefixes)}")
    return count
