"""A procedural, object-centric image world with exact captions and a rule-based detector."""

from .detect import Detection, detect
from .render import make_dataset, render
from .scenes import CLASSES, COLORS, Scene, WorldObject, aio_caption, long_caption, sample_scene

__all__ = [
    "CLASSES", "COLORS", "Detection", "Scene", "WorldObject",
    "aio_caption", "detect", "long_caption", "make_dataset", "render", "sample_scene",
]
