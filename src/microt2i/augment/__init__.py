"""Image augmentation (IA, ImageNet-T2I §2.2): CutMix composites with noise-level gating (`cutmix.py`, App. E) and
Crop (`crop.py`, App. F). Switched on by `augment.cutmix.*` / `augment.crop.*` in the run config."""

from __future__ import annotations

from .cutmix import paper_tau_to_sigma


def describe(aug) -> str:
    """One line naming the active image augmentation of an `AugmentConfig` ("none" when off)."""
    parts = []
    cm, crop = aug.cutmix, aug.crop
    if cm.enabled:
        sigma = paper_tau_to_sigma(cm.tau)
        parts.append(f"CutMix CM-{cm.setting} p={cm.p} above τ={cm.tau:g}/1000 (σ > {sigma:.3f}), "
                     f"{cm.times} composite(s) per image")
    if crop.enabled:
        parts.append(f"Crop p={crop.p}, side ≥ {crop.min_side:.0%}")
    return "; ".join(parts) or "none"
