"""Training cost accounting (MicroDiT App. B "Cost analysis", Table 6): FLOPs per image, per stage and in total,
GPU-days on 8×A100 / 8×H100 and dollars, and the MFU of a measured throughput.

- **FLOPs per image** are counted, not modelled: the real preset is built on the `meta` device (no memory, no
  compute) and one training loss + backward runs under `torch.utils.flop_counter.FlopCounterMode`, which counts
  matmuls, convolutions and attention (2 FLOPs per multiply-add) and ignores element-wise work. Masked stages
  draw their keep-mask on `meta` as well; `_ShapeOnlyMasks` gives the boolean gathers their known output shape.
  The text encoder and the VAE are not counted: like the paper, latents and caption embeddings are computed once,
  offline (MicroDiT App. B).
- **Time** per stage = images / (throughput per GPU · GPUs). Throughput is stated or measured (`img_s`), or
  derived from an assumed MFU on an H100 (`mfu`), or — for `microdit-xl-2` — the one Table 6 implies.
- **Dollars** at the paper's rates: $1.5 per A100-hour, $3.75 per H100-hour, A100 time = 2.5 × H100 time
  (MicroDiT App. B "We observe a 2.5x reduction in wall-clock time on H100 GPUs"), so both give the same bill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .config import ConfigError, RunConfig
from .encoders.text import TextEncoderCost
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count
from .diffusion.objectives import build_objective
from .models import build, sample_keep_mask, sample_route_mask
from .models.moe import ExpertChoiceMoE, tokens_per_expert

# Dense bf16 tensor-core peak FLOP/s per GPU (vendor datasheets, SXM parts), for MFU. Matched by substring of
# `torch.cuda.get_device_name()`, first match wins (H200 before H100).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12),
)
PRICE_PER_GPU_HOUR = {"A100": 1.5, "H100": 3.75}  # MicroDiT App. B
H100_SPEEDUP = 2.5  # MicroDiT App. B: the same run takes 2.5× less wall-clock time on H100 than on A100
GPUS = 8  # MicroDiT App. B: one 8×H100 node

# Table 6 of MicroDiT (MicroDiT_XL_2, global batch 2048): resolution, mask ratio, steps, total FLOPs, 8×A100 days,
# 8×H100 days, cost ($). Total 3.45e20 FLOPs, 2.6 days on 8×H100, $1,890.
PAPER_TABLE6: tuple[tuple[int, float, int, float, float, float, int], ...] = (
    (256, 0.75, 250_000, 1.47e20, 2.77, 1.11, 800),
    (256, 0.00, 30_000, 4.53e19, 0.94, 0.38, 271),
    (512, 0.75, 50_000, 1.18e20, 2.18, 0.88, 630),
    (512, 0.00, 5_000, 3.48e19, 0.65, 0.26, 189),
)
PAPER_BATCH = 2048  # Table 3


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a known GPU named `device_name`; None for CPUs and unknown GPUs (no MFU then)."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def mfu(flops_per_image: float, img_per_s: float, device_name: str) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s (counted training FLOPs/image × images/s) ÷ the device's peak."""
    peak = peak_flops(device_name)
    return None if peak is None else flops_per_image * img_per_s / peak


def paper_table6_img_s() -> list[float]:
    """Images/s per H100 that Table 6 implies for each stage: steps · 2048 / (8 · days · 86 400 s)."""
    return [steps * PAPER_BATCH / (GPUS * h100_days * 86_400) for _, _, steps, _, _, h100_days, _ in PAPER_TABLE6]


# ---------------------------------------------------------------------------------------------------------------
# FLOPs per image


class _ShapeOnlyMasks(TorchDispatchMode):
    """Lets a masked forward/backward run on `meta` tensors, which hold no values: a boolean gather x[mask] with
    mask [B, N] returns [B·kept[N], ...] (every row keeps kept[N] of its N tokens: MicroDiT's / Crop's keep-mask,
    TREAD's route mask), its backward scatter returns the input's shape, and a data-dependent bool (the mask
    validity checks) reads True. Anything else that needs values fails loudly."""

    def __init__(self, kept: dict[int, int]):
        super().__init__()
        self.kept = kept

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if not any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            if args[0].dtype != torch.bool:
                raise RuntimeError(f"FLOP counting on meta cannot read a {args[0].dtype} value (.item()); only the "
                                   f"boolean keep-mask checks are supported")
            return True
        if func is aten.index.Tensor and len(args[1]) == 1 and args[1][0] is not None and args[1][0].dtype == torch.bool:
            x, mask = args[0], args[1][0]
            if mask.ndim != 2 or tuple(x.shape[:2]) != tuple(mask.shape):
                raise RuntimeError(f"FLOP counting on meta supports x[keep_mask] with keep_mask [B, N] only, got "
                                   f"x {list(x.shape)} and mask {list(mask.shape)}")
            return torch.empty((mask.shape[0] * self.kept[mask.shape[1]], *x.shape[2:]), dtype=x.dtype, device="meta")
        if func is aten.index_put.default:
            return torch.empty_like(args[0])
        if func in (aten.index_put_.default, aten._index_put_impl_.default):
            return args[0]
        return func(*args, **kwargs)


@dataclass(frozen=True)
class TrainFlops:
    """Counted FLOPs per image of one training step: forward (loss included), backward, and their sum.

    `onehot_moe` is what the reference MoE would add (forward, per image): it dispatches tokens to experts and
    combines them back with two einsums against a dense one-hot [B, E, k, T] tensor (micro_diffusion
    `FeedForwardECMoe`), 2·E·k·T·D FLOPs each, where ours gathers and scatters by index (no FLOPs)."""

    forward: float
    backward: float
    onehot_moe: float = 0.0

    @property
    def train(self) -> float:
        return self.forward + self.backward

    @property
    def train_reference(self) -> float:
        """Training FLOPs as the reference network would be counted: ours + its one-hot einsums (3× forward)."""
        return self.train + 3 * self.onehot_moe


def count_train_flops(run: RunConfig, *, mask_ratio: float | None = None, text_len: int | None = None,
                      batch: int = 2) -> TrainFlops:
    """FLOPs per image of `run`'s training step (its objective's loss on its network, then backward), counted on
    the `meta` device. `mask_ratio` overrides the model's (MicroDiT), `text_len` the caption length
    (default `run.data.text_len`). Per image = the batch's count / batch (nothing here mixes samples)."""
    cfg = run.model
    if mask_ratio is not None:
        if not hasattr(cfg, "mask_ratio"):
            raise ConfigError(f"mask_ratio={mask_ratio} needs a network that trains masked (MicroDiT), "
                              f"not model.family={cfg.family!r}")
        cfg = replace(cfg, mask_ratio=mask_ratio)
    L = text_len or run.data.text_len
    key = (repr(cfg), repr(run.objective), L, batch)
    if key not in _FLOPS_CACHE:  # a pure function of the configs: count each network once per process
        _FLOPS_CACHE[key] = _count(run, cfg, L, batch)
    return _FLOPS_CACHE[key]


_FLOPS_CACHE: dict[tuple, TrainFlops] = {}


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward with groups honoured: torch's formula (torch 2.13) counts the weight
    gradient of a grouped conv as if it were dense, `groups`× too many for Mix-FFN's depthwise conv."""
    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input: a (transposed) conv of grad_out with the weight
        flops += conv_flop_count(list(grad_out_shape), list(w_shape), list(x_shape), not transposed)
    if output_mask[1]:  # grad_weight: a conv of the input with grad_out, one group's channels at a time
        a, b = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        flops += conv_flop_count(a, b, t(w_shape)) // groups
    return flops


def _count(run: RunConfig, cfg, L: int, batch: int) -> TrainFlops:
    keep = sample_keep_mask(cfg, 1)  # a real one on CPU: how many tokens a row keeps, whatever the masking kind
    kept = 0 if keep is None else int(keep.sum())
    objective = build_objective(run.objective)
    with torch.device("meta"):
        net = build(cfg).train()
        x0 = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
        tokens = torch.randn(batch, L, cfg.text_dim)
        mask = torch.ones(batch, L, dtype=torch.bool)
        keep_mask = sample_keep_mask(cfg, batch, device="meta")
    kwargs = {} if keep_mask is None else {"keep_mask": keep_mask}
    n_all = (cfg.input_size // cfg.patch_size) ** 2
    n_tokens = kept or n_all
    counts = {n_all: kept}
    route = sample_route_mask(cfg, 1, n_tokens)  # TREAD: a real one on CPU, for how many tokens take the span
    if route is not None:
        counts[n_tokens] = int(route.sum())
        with torch.device("meta"):
            kwargs["route_mask"] = sample_route_mask(cfg, batch, n_tokens, device="meta")
    onehot = []

    def moe_hook(module, args, out):  # the reference's dispatch + combine einsums: 2 × 2·E·k·T·D per sample
        B, T, D = args[0].shape
        onehot.append(2 * 2 * module.num_experts * tokens_per_expert(T, module.num_experts, module.capacity) * T * D)

    hooks = [m.register_forward_hook(moe_hook) for m in net.modules() if isinstance(m, ExpertChoiceMoE)]
    with _ShapeOnlyMasks(counts):
        with FlopCounterMode(display=False) as fwd:
            loss = objective.loss(net, x0, tokens, mask, **kwargs).mean()
        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as bwd:
            loss.backward()
    for h in hooks:
        h.remove()
    return TrainFlops(fwd.get_total_flops() / batch, bwd.get_total_flops() / batch, float(sum(onehot)))


# ---------------------------------------------------------------------------------------------------------------
# Per stage and total


@dataclass
class StageCost:
    name: str
    resolution: int
    mask_ratio: float
    batch_size: int
    steps: int
    images: int
    flops: TrainFlops  # per image, this stage's masking
    flops_unmasked: TrainFlops  # per image, the same network unmasked
    img_s: float | None  # per GPU (H100), None when no throughput is known
    source: str  # where img_s comes from
    paper: tuple | None = None  # this stage's row of PAPER_TABLE6 when the recipe is the paper's

    @property
    def total_flops(self) -> float:
        return self.flops.train * self.images

    @property
    def h100_days(self) -> float | None:
        return None if self.img_s is None else self.images / (self.img_s * GPUS) / 86_400

    @property
    def a100_days(self) -> float | None:
        return None if self.img_s is None else self.h100_days * H100_SPEEDUP

    @property
    def dollars(self) -> float | None:
        return None if self.img_s is None else self.h100_days * 24 * GPUS * PRICE_PER_GPU_HOUR["H100"]

    @property
    def mfu_h100(self) -> float | None:
        return None if self.img_s is None else self.flops.train * self.img_s / peak_flops("H100")


def _is_paper_recipe(stages: list[RunConfig]) -> bool:
    return len(stages) == len(PAPER_TABLE6) and all(
        (s.data.resolution, getattr(s.model, "mask_ratio", None), s.train.total_nimg // s.train.batch_size,
         s.train.batch_size) == (res, mask, steps, PAPER_BATCH)
        for s, (res, mask, steps, *_) in zip(stages, PAPER_TABLE6))


def recipe_cost(stages: list[RunConfig], *, img_s: list[float] | None = None, mfu: float | None = None) -> list[StageCost]:
    """Cost of each stage of a recipe (`presets.recipe(name)`): images = the stage's `train.total_nimg`.

    Throughput per H100, in order of precedence: `img_s` (one value per stage, or one for all), an assumed `mfu`
    (img/s = mfu · 989 TFLOP/s / FLOPs per image), Table 6's for the paper's MicroDiT recipe, else none (FLOPs only).
    """
    if img_s is not None and len(img_s) not in (1, len(stages)):
        raise ConfigError(f"img_s has {len(img_s)} values; give one per stage ({len(stages)}) or one for all")
    if img_s is not None and min(img_s) <= 0 or mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"throughput must be positive and mfu in (0, 1], got img_s={img_s}, mfu={mfu}")
    paper = _is_paper_recipe(stages)
    out = []
    for i, s in enumerate(stages):
        ratio = getattr(s.model, "mask_ratio", 0.0)
        f = count_train_flops(s)
        fu = count_train_flops(s, mask_ratio=0.0) if ratio > 0 else f
        if img_s is not None:
            rate, source = img_s[i if len(img_s) > 1 else 0], "stated"
        elif mfu is not None:
            rate, source = mfu * peak_flops("H100") / f.train, f"MFU {mfu:.0%} assumed"
        elif paper:
            rate, source = paper_table6_img_s()[i], "Table 6"
        else:
            rate, source = None, "none"
        out.append(StageCost(name=s.name, resolution=s.data.resolution, mask_ratio=ratio,
                             batch_size=s.train.batch_size, steps=s.train.total_nimg // s.train.batch_size,
                             images=s.train.total_nimg, flops=f, flops_unmasked=fu, img_s=rate, source=source,
                             paper=PAPER_TABLE6[i] if paper else None))
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def format_cost_table(costs: list[StageCost]) -> str:
    """A Table-6-style Markdown table of `recipe_cost`'s stages with a total row — next to the paper's figures when
    the stages are the paper's MicroDiT recipe — and a second table with the FLOPs-per-image detail."""
    paper = all(c.paper is not None for c in costs)
    known = all(c.img_s is not None for c in costs)
    head = ["stage", "res", "mask", "steps", "images", "train TFLOPs/img", "total FLOPs"]
    head += ["+ ref. one-hot MoE", "paper FLOPs", "ours/paper", "ours+MoE/paper"] if paper else []
    head += ["img/s/H100", "MFU (H100)", "8×A100 days", "8×H100 days", "cost $"]
    head += ["paper 8×A100 days", "paper 8×H100 days", "paper $"] if paper else []
    rows = []
    for c in costs:
        row = [c.name, str(c.resolution), f"{c.mask_ratio:.2f}", f"{c.steps:,}", f"{c.images:,}",
               f"{c.flops.train / 1e12:.4g}", f"{c.total_flops:.3g}"]
        if paper:
            ref = c.flops.train_reference * c.images
            row += [f"{ref:.3g}", f"{c.paper[3]:.3g}", f"{c.total_flops / c.paper[3]:.3f}", f"{ref / c.paper[3]:.3f}"]
        row += [_fmt(c.img_s, ".4g"), _fmt(c.mfu_h100, ".1%"), _fmt(c.a100_days, ".2f"), _fmt(c.h100_days, ".2f"),
                _fmt(c.dollars, ",.0f")]
        if paper:
            row += [f"{c.paper[4]:.2f}", f"{c.paper[5]:.2f}", f"{c.paper[6]:,}"]
        rows.append(row)
    total = sum(c.total_flops for c in costs)
    tot = ["**total**", "", "", f"{sum(c.steps for c in costs):,}", f"{sum(c.images for c in costs):,}", "",
           f"{total:.3g}"]
    if paper:
        ref, ptotal = sum(c.flops.train_reference * c.images for c in costs), sum(c.paper[3] for c in costs)
        tot += [f"{ref:.3g}", f"{ptotal:.3g}", f"{total / ptotal:.3f}", f"{ref / ptotal:.3f}"]
    tot += ["", "", _fmt(sum(c.a100_days for c in costs) if known else None, ".2f"),
            _fmt(sum(c.h100_days for c in costs) if known else None, ".2f"),
            _fmt(sum(c.dollars for c in costs) if known else None, ",.0f")]
    if paper:
        tot += [f"{sum(c.paper[4] for c in costs):.2f}", f"{sum(c.paper[5] for c in costs):.2f}",
                f"{sum(c.paper[6] for c in costs):,}"]
    rows.append(tot)
    detail = [[c.name, f"{c.flops.forward / 1e12:.4g}", f"{c.flops.backward / 1e12:.4g}",
               f"{c.flops.backward / c.flops.forward:.2f}", f"{c.flops.onehot_moe / 1e12:.4g}",
               f"{c.flops_unmasked.train / 1e12:.4g}", f"{1 - c.flops.train / c.flops_unmasked.train:.1%}", c.source]
              for c in costs]
    return "\n".join(_table(head, rows) + [""] + _table(
        ["stage", "fwd TFLOPs/img", "bwd TFLOPs/img", "bwd/fwd", "ref. one-hot MoE fwd TFLOPs/img",
         "train TFLOPs/img unmasked", "masking saves", "throughput from"], detail))


PAPER_NOTES = """\
How to read ours against Table 6 (MicroDiT):
- FLOPs: counted by torch.utils.flop_counter on the real network built on the meta device, forward + backward
  (counted, not estimated: bwd/fwd is 2.00), matmuls and attention at 2 FLOPs per multiply-add. Element-wise work,
  the optimizer step, the text encoder and the VAE (precomputed once, MicroDiT App. B) are not counted.
- Our count is 1-12 % below Table 6, more at 512² and unmasked. The whole gap is the reference's expert-choice MoE
  (micro_diffusion `FeedForwardECMoe`): it dispatches tokens to experts and combines them with two einsums against
  a dense one-hot [B, E, k, T] tensor, 2·E·k·T·D FLOPs each, quadratic in the tokens T; ours gathers and scatters
  by index (no FLOPs, same result). Adding those einsums at 3× their forward FLOPs (the DeepSpeed profiler's
  training convention, MicroDiT App. B) reproduces every row of Table 6 to within 0.5 % ("ours+MoE/paper").
- Masking: 75 % of 256 (1024) tokens → 64 (256) kept; the patch-mixer, the caption path and the cross-attention
  K/V do not shrink, so a masked step costs ≈ 40 % (not 25 %) of an unmasked one.
- Days and dollars: Table 6's own throughputs (img/s per H100 = steps · 2048 / (8 · days · 86 400 s)) reproduce
  its days and dollars; $ = 8 × H100-days × 24 h × $3.75 (= 8 × A100-days × 24 h × $1.5 at A100 time = 2.5 × H100
  time). The MFU these throughputs imply on an H100 (989 TFLOP/s dense bf16) is 17-19 %.
"""


# MicroDiT Table 2 (one H100, fp16 storage, per 1M captions): name, sequence length, width, time, storage GB.
PAPER_TABLE2 = (("CLIP (ViT-H-14)", 77, 1024, "3:20", 157), ("T5 (T5-xxl)", 120, 4096, "33:04", 983))


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_text_cost_table(costs: Sequence[TextEncoderCost], device: str) -> str:
    """MicroDiT Table 2's columns for the measured encoders, then the paper's own rows."""
    dt = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    rows = [[c.name, c.kind, str(c.length), str(c.dim), dt[c.dtype], str(c.batch_size),
             f"{c.seconds_per_batch * 1e3:.1f}", f"{c.batch_size / c.seconds_per_batch:.1f}",
             _clock(c.seconds_per_million), f"{c.gb_per_million:.1f}", f"{c.truncated:.0%}"] for c in costs]
    head = ["text encoder", "kind", "sequence length", "embedding size", "storage dtype", "batch", "ms / batch",
            "captions / s", f"time per 1M ({device}, h:mm:ss)", "storage per 1M (GB)", "truncated"]
    paper = [[n, str(length), str(d), t, str(gb)] for n, length, d, t, gb in PAPER_TABLE2]
    return "\n".join(_table(head, rows) + ["", "MicroDiT Table 2 (one H100, fp16):"] + _table(
        ["text encoder", "sequence length", "embedding size", "time per 1M (min:sec)", "storage (GB)"], paper))
