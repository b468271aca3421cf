"""Image augmentation (IA, ImageNet-T2I §2.2): CutMix composites with noise-level gating (`cutmix.py`, App. E) and
Crop (`crop.py`, App. F). Switched on by `augment.cutmix.*` / `augment.crop.*` in the run config. Nothing is
imported here: models/layers.py reads `crop.py` and must not pull CutMix's data and world code in with it."""

from __future__ import annotations
