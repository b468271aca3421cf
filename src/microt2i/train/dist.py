"""Distributed training, applied from outside the model (torchtitan habit): torchrun start-up, DDP or FSDP2
wrapping, activation checkpointing and compile per block, sharded checkpoints, and the few collectives the
trainer needs.

One process per device under `torchrun` (gloo on CPU, NCCL on GPU). Without torchrun's environment the run is a
single process and nothing here starts a process group, except FSDP2 (`train.parallel=fsdp`), which needs one:
a single-rank gloo/NCCL group is created so the same sharded code path and checkpoint format serve 1 … N ranks.

- DDP (default): gradients all-reduced in backward; accumulation skips the sync until the last micro-step.
- FSDP2 (`fully_shard` per transformer block, then the root; MicroDiT §B trains with FSDP): parameters, grads
  and optimizer state sharded; the EMA is a second sharded copy (never gathered except to export); training state
  is saved with `torch.distributed.checkpoint` so a run resumes on another world size (DCP reshards at load).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint
from .state import write_dcp_checksums


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0, need_group: bool = False) -> DistEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and start the process group (NCCL on GPU, gloo on CPU).

    Without them: one process, and a process group only if `need_group` (FSDP2 on one device). `timeout_s` bounds
    every collective, so a rank that died or hangs ends the job instead of blocking it for ever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}" if cuda else "cpu") if device in ("auto", "cuda") else torch.device(device)
    if cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized() and (world_size > 1 or need_group):
        if world_size == 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank, world_size, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over ranks (x itself in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank (e.g. a resume position read by rank 0 only)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def split_batch(batch_size: int, micro_batch: int, world_size: int) -> tuple[int, int]:
    """(micro-batch per rank, accumulation rounds) for global batch = micro × rounds × world size."""
    micro = micro_batch or batch_size // world_size
    if batch_size % world_size or micro <= 0 or (batch_size // world_size) % micro:
        raise ValueError(
            f"global batch train.batch_size={batch_size} must equal train.micro_batch ({micro}) × accumulation rounds "
            f"× world size ({world_size}); pick a batch size divisible by {world_size}·micro_batch, or set "
            f"train.micro_batch to a divisor of {batch_size // max(world_size, 1)}")
    return micro, batch_size // world_size // micro


# ---- wrapping from outside the model ----

def blocks(net: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks: the sharding / checkpointing unit (`blocks`, plus MicroDiT's `mixer`)."""
    out = []
    for name in ("mixer", "blocks"):
        seq = getattr(net, name, None)
        if isinstance(seq, nn.ModuleList):
            out.extend(seq)
    if not out:
        raise ValueError(f"{type(net).__name__} has no `blocks` ModuleList to shard or checkpoint")
    return out


def apply_activation_checkpointing(net: nn.Module) -> None:
    """Recompute each block's activations in backward (memory for ~⅓ more compute). Only `forward` is replaced on
    the instance, so parameter names and checkpoints are unchanged."""
    for block in blocks(net):
        block.forward = functools.partial(checkpoint, type(block).forward.__get__(block), use_reentrant=False)


def apply_compile(net: nn.Module, backend: str = "inductor") -> None:
    """torch.compile each block in place (torchtitan: per block, so recompiles stay small and names unchanged)."""
    for block in blocks(net):
        block.compile(backend=backend)


def wrap_model(net: nn.Module, *, parallel: str = "ddp", precision: str = "fp32", compile: bool = False,
               activation_checkpointing: bool = False, env: DistEnv | None = None) -> nn.Module:
    """Apply checkpointing, compile and DDP / FSDP2 to `net` (on its device); returns the module to train."""
    env = env or DistEnv()
    if activation_checkpointing:
        apply_activation_checkpointing(net)
    if compile:
        apply_compile(net)
    if parallel == "fsdp":
        shard(net, precision)
        return net
    if parallel == "ddp" and env.world_size > 1:
        return nn.parallel.DistributedDataParallel(net, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    return net


def shard(net: nn.Module, precision: str = "fp32") -> None:
    """FSDP2: `fully_shard` each block, then the root (its embeddings, heads and norms)."""
    if not dist.is_initialized():
        raise RuntimeError("train.parallel=fsdp needs a process group: start with init_distributed(need_group=True)")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None, reduce_dtype=torch.float32)
    for block in blocks(net):
        fully_shard(block, mp_policy=mp)
    fully_shard(net, mp_policy=mp)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def grad_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps; sync on the last one."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 module
        model.set_requires_gradient_sync(sync)
    yield


# ---- sharded training state (torch.distributed.checkpoint) ----

def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A consolidated CPU state dict of a (possibly sharded) model. Collective under FSDP2: call on every rank."""
    model = unwrap(model)
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _dcp_state(model, optimizer, ema_model) -> dict:
    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
            "ema": get_model_state_dict(ema_model)}


def save_sharded(path: str | Path, model: nn.Module, optimizer, ema_model: nn.Module, meta: dict) -> Path:
    """Write a DCP checkpoint folder at `path` atomically: every rank writes into `path.tmp`, rank 0 renames it
    after a barrier, so a crash mid-write leaves only a `.tmp` folder that resume ignores."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    dcp.save(_dcp_state(model, optimizer, ema_model), checkpoint_id=str(tmp))
    barrier()
    if is_main():
        (tmp / "meta.json").write_text(json.dumps(meta))

        write_dcp_checksums(tmp)  # verified before resume (state.checkpoint_problem)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    barrier()
    return path


def load_sharded(path: str | Path, model: nn.Module, optimizer, ema_model: nn.Module) -> dict:
    """Load a DCP folder into the (sharded or plain) model, optimizer and EMA at this run's world size; returns meta."""
    path = Path(path)
    state = _dcp_state(model, optimizer, ema_model)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path), no_dist=not is_sharded(model))  # a plain model: no collective
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    set_model_state_dict(ema_model, state["ema"])
    return json.loads((path / "meta.json").read_text())


def load_optimizer(model: nn.Module, optimizer, state: dict) -> None:
    """Load a plain `optimizer.state_dict()` (a `.pt` checkpoint, e.g. a recipe's stage seed) into the optimizer of
    `model`, sharded or not. torch numbers parameters in param-group order; FSDP2's state dict names them, so the
    numbering is mapped to names first. The optimizer keeps its own kernel choice (`fused` / `foreach`): a
    checkpoint's groups may come from another device (a fine-tune's seed is planned on the meta device), and the
    NaN guard's on-device skip needs the fused kernel it was built for (nan_guard.py)."""
    impl = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    _load_optimizer_state(model, optimizer, state)
    for group, kernel in zip(optimizer.param_groups, impl):
        group.update(kernel)


def _load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return

    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    named = {"state": {order[i]: s for i, s in state["state"].items()},
             "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
