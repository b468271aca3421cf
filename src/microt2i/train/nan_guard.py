"""Skip non-finite optimizer steps without reading the gradient norm back to the host every step.

A step whose gradient norm is NaN / Inf must not reach the optimizer (long-run hygiene: the run goes on, the skip is
counted, a streak of `train.nan_abort_streak` aborts). Deciding that on the host (`if torch.isfinite(norm):`) is a
host sync per step: on a GPU the CPU then waits for the whole backward before it can queue the next step.

With fused AdamW the decision stays on the device: the optimizer's `found_inf` input (the one `GradScaler` feeds it)
makes the fused kernel leave parameters, moments and step count untouched when it is 1. The skip count, the
current streak and the position where a streak first reached the abort limit are device tensors too, read by
`sync()` at log intervals and before checkpoints (where the loop reads its statistics anyway). Other optimizers
(LAMB, Muon, foreach AdamW under FSDP2) take no `found_inf`: for them the check stays on the host, as before.
"""

from __future__ import annotations

import torch


def skips_on_device(opt: torch.optim.Optimizer) -> bool:
    """Whether `opt` can skip a step on the device: torch's AdamW / Adam with `fused=True` (its `found_inf`)."""
    return isinstance(opt, (torch.optim.AdamW, torch.optim.Adam)) and bool(opt.defaults.get("fused"))


class NanGuard:
    """`step(grad_norm, nimg)` runs `opt.step()` unless `grad_norm` is non-finite; `sync()` reads the counters,
    logs the skips since the last sync and raises FloatingPointError once a streak reached `abort_streak` (0 = never).
    `nan_skips` is the run's total as of the last `sync()` (host int: checkpoints and stats read it)."""

    def __init__(self, opt: torch.optim.Optimizer, device: torch.device, *, nan_skips: int = 0, abort_streak: int = 0,
                 resume_hint: str = "", log=print):
        self.opt, self.abort_streak, self.resume_hint, self.log = opt, abort_streak, resume_hint, log
        self.nan_skips = nan_skips
        self.on_device = skips_on_device(opt)
        # [skips since the last sync, current streak, nimg where the streak hit the limit (-1: not), last skip's nimg]
        self._state = torch.tensor([0.0, 0.0, -1.0, -1.0], device=device, dtype=torch.float64)
        self._streak = 0  # host path only

    def step(self, grad_norm: torch.Tensor, nimg: int) -> None:
        if not self.on_device:  # the host decides: one sync per step (optimizers without found_inf)
            if torch.isfinite(grad_norm):
                self.opt.step()
                self._streak = 0
                return
            self.nan_skips, self._streak = self.nan_skips + 1, self._streak + 1
            self.log(f"[train] non-finite gradient at {nimg} images: step skipped ({self.nan_skips} so far)")
            if self.abort_streak and self._streak >= self.abort_streak:
                self._abort(self._streak, nimg)
            return
        bad = (~torch.isfinite(grad_norm)).to(torch.float32)  # [] on the device: 1 = skip this step
        self.opt.found_inf = bad  # the fused kernel reads it on the device; the step count is not advanced either
        self.opt.step()
        s = self._state
        b = bad.to(s.dtype)
        s[0] += b
        s[1] = (s[1] + 1) * b  # the streak: +1 on a skip, 0 after a good step
        if self.abort_streak:
            s[2] = torch.where((s[2] < 0) & (s[1] >= self.abort_streak), float(nimg), s[2])
        s[3] = torch.where(b > 0, float(nimg), s[3])

    def sync(self) -> None:
        """Read the device counters (one host sync), log the skips since the last call and abort on a streak."""
        if not self.on_device:
            return
        new, _, abort_at, last = (int(v) for v in self._state.tolist())
        self._state[0] = 0
        if new:
            self.nan_skips += new
            self.log(f"[train] non-finite gradient in {new} step{'s' if new > 1 else ''} (the last at {last} images): "
                     f"skipped ({self.nan_skips} so far)")
        if abort_at >= 0:
            self._abort(self.abort_streak, abort_at)

    def _abort(self, streak: int, nimg: int):
        raise FloatingPointError(f"{streak} consecutive non-finite steps at {nimg} images; lower train.lr, raise "
                                 f"train.grad_clip or use train.precision=fp32, then resume from {self.resume_hint}")
