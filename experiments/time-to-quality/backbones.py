"""Session 7's out-of-library probes (rows in probes.jsonl with "session": 7): other backbones and other training
targets on world-s's own store, trained by a minimal rectified-flow loop (world-s's batch 16, warm-up 1,024
images, cosine to 0.1·lr, clip 1, EMA 0.998 from 4,096 images, caption dropout 0.1) and scored like probe.py (64
single-object grid prompts, EMA weights, the preset's sampler and CFG; grids in runs/probes/NAME).

    python experiments/time-to-quality/backbones.py NAME KIND VARIANT NIMG CHUNK LR [overrides ...]

KIND: `dit` (world-s's DiT-I), `unet` (a diffusers UNet2DConditionModel on the 4×8×8 latents, channels 32/64,
cross-attention to the MiniLM tokens), `unet-pixel` (the same on 3×32×32 pixels, channels 16/32/64, attention at
8×8 only; pass data.codec=pixel model.in_channels=3 model.input_size=32), `selfcond` (DiT-I fed [x_t, its previous
x̂0], RIN/CAD-I-style self-conditioning at rate 0.5).
VARIANT: `flow` (the plain loss), `dfm:λ` (contrastive flow matching, Stoica et al. 2025: − λ·‖v̂ − v_other‖² with
another sample's target), `mg:w` (model guidance, Tang et al. 2025: the target v + w·(v̂_c − v̂_∅), stop-gradient,
from 4,096 images on).

    python experiments/time-to-quality/backbones.py unet unet flow 65536 16384 2e-3
    python experiments/time-to-quality/backbones.py mg05 dit mg:0.5 65536 16384 2e-3 eval.cfg_scale=1.5
"""

import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from microt2i import presets
from microt2i.config import apply_overrides
from microt2i.diffusion.flow import FlowObjective
from microt2i.models import build
from microt2i.train.loop import prepare_data
from probe import grid_scorer  # this folder's probe.py: the same 64 prompts, sampler and detector


class UNet(nn.Module):
    """A diffusers conditional UNet behind the backbone signature net(x, t, text_tokens, text_mask)."""

    def __init__(self, channels: tuple[int, ...], pixel: bool):
        super().__init__()
        from diffusers import UNet2DConditionModel

        if pixel:  # convolutions only at 32² and 16², cross-attention at 8²
            down = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
            up = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
        else:
            down, up = ("CrossAttnDownBlock2D",) * len(channels), ("CrossAttnUpBlock2D",) * len(channels)
        c = 3 if pixel else 4
        self.unet = UNet2DConditionModel(
            sample_size=32 if pixel else 8, in_channels=c, out_channels=c, block_out_channels=channels,
            layers_per_block=1, down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=384, attention_head_dim=8, norm_num_groups=16)

    def forward(self, x, t, tokens, mask, **kw):
        return self.unet(x, t * 1000, encoder_hidden_states=tokens, encoder_attention_mask=mask.float()).sample


class SelfCond(nn.Module):
    """A backbone built for 2C input channels fed [x_t, previous x̂0]; while sampling it carries its last x̂0 from
    call to call and starts from zeros at the top of each trajectory."""

    def __init__(self, net: nn.Module, channels: int = 4):
        super().__init__()
        self.net, self.c, self.prev = net, channels, None

    def forward(self, x, t, tokens, mask, prev=None, **kw):
        if prev is None:
            fresh = self.prev is None or self.prev.shape != x.shape or float(t.max()) > 0.985
            prev = torch.zeros_like(x) if fresh else self.prev
        v = self.net(torch.cat([x, prev], 1), t, tokens, mask)[:, :self.c]
        if not self.training:
            self.prev = (x - t.view(-1, 1, 1, 1) * v).detach()
        return v


def make_net(kind: str, cfg):
    if kind == "unet":
        return UNet((32, 64), pixel=False)
    if kind == "unet-pixel":
        return UNet((16, 32, 64), pixel=True)
    if kind == "selfcond":
        return SelfCond(build(replace(cfg.model, in_channels=8)))
    if kind == "dit":
        return build(cfg.model)
    raise SystemExit(f"unknown KIND {kind!r}: dit, unet, unet-pixel, selfcond")


def loss_fn(kind: str, variant: str, net, x0, tokens, mask, null, drop, nimg, gen):
    """The step's loss: rectified flow (x_t = (1 − t)·x0 + t·ε, v = ε − x0, logit-normal t) with the variant's
    change of target or extra term."""
    name, _, arg = variant.partition(":")
    sigma = FlowObjective().sample_sigma(x0.shape[0], gen)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.sigmoid(sigma.log()).view(-1, 1, 1, 1)
    x_t, target = (1 - t) * x0 + t * noise, noise - x0
    kw = {}
    if kind == "selfcond":  # half the steps: a first pass's x̂0 (no gradient) as the extra input
        kw["prev"] = torch.zeros_like(x_t)
        if torch.rand(1, generator=gen).item() < 0.5:
            with torch.no_grad():
                kw["prev"] = x_t - t * net(x_t, t.flatten(), tokens, mask, **kw)
    v = net(x_t, t.flatten(), tokens, mask, **kw)
    if name == "dfm":  # push the prediction away from another sample's target
        return (v - target).square().mean() - float(arg) * (v - target.roll(1, 0)).square().mean()
    if name == "mg" and nimg >= 4096:  # the captioned samples learn the guided velocity
        with torch.no_grad():
            v_null = net(x_t, t.flatten(), null[0].expand(len(x0), -1, -1), null[1].expand(len(x0), -1))
        target = target + float(arg) * (~drop).float().view(-1, 1, 1, 1) * (v.detach() - v_null)
    elif name not in ("flow", "mg"):
        raise SystemExit(f"unknown VARIANT {variant!r}: flow, dfm:λ, mg:w")
    return (v - target).square().mean()


def main(name, kind, variant, total, chunk, lr, overrides, root=Path("runs/probes")):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = apply_overrides(presets.get("world-s"), overrides)
    store = prepare_data(cfg, torch.device("cpu"))
    net = make_net(kind, cfg)
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    null_tokens, null_mask = store.null_text("zero")
    score = grid_scorer(cfg)
    gen, batch, t0 = torch.Generator().manual_seed(0), 16, time.time()
    for step in range(total // batch):
        nimg = (step + 1) * batch
        warm = min(1.0, nimg / 1024)
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / (total // batch)))
        for group in opt.param_groups:
            group["lr"] = lr * warm * cosine
        b = store.batch(torch.randint(len(store), (batch,), generator=gen))
        drop = torch.rand(batch, generator=gen) < 0.1  # caption dropout for CFG
        tokens = torch.where(drop[:, None, None], null_tokens.float(), b["text_tokens"])
        mask = torch.where(drop[:, None], null_mask, b["text_mask"])
        loss = loss_fn(kind, variant, net, b["x0"], tokens, mask, (null_tokens.float(), null_mask), drop, nimg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # EMA 0.998 per step from 4,096 images on (a copy before)
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1.0 if nimg <= 4096 else 0.002)
        if nimg % chunk == 0 or nimg == total:
            ema.prev = None
            metrics = score(ema, null_tokens, null_mask, root / name / f"grid-{nimg:06d}.png")
            print(json.dumps({"name": name, "nimg": nimg, "wall": round(time.time() - t0), "class":
                              metrics["class_accuracy"], "color": metrics["color_accuracy"]}), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), float(a[5]), a[6:])
