"""Rasterise a Scene: procedural background, then solid polygons drawn at `supersample`x and box-filtered down.

Geometry lives here once: every class is a list of polygons in unit coordinates (y up, circumscribed by the unit
circle around the shape's box centre); detect.py renders the same shapes to learn what each class looks like.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .scenes import COLORS, Scene, WorldObject, aio_caption, long_caption, sample_scene

Polygon = tuple[np.ndarray, bool]  # (N x 2 vertices, True = fill / False = cut a hole)


def _arc(cx: float, cy: float, r: float, t0: float, t1: float, n: int = 48, ry: float | None = None) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + r * np.cos(t), cy + (r if ry is None else ry) * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _star(points: int, inner: float) -> np.ndarray:
    t = np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _crescent() -> np.ndarray:
    # unit disc minus a disc of radius 0.85 centred at (0.5, 0): horns point right, thickest (0.65) on the left
    x = 0.5275  # the two circles meet at (x, +-y)
    y = np.sqrt(1 - x * x)
    outer = _arc(0, 0, 1, np.arctan2(y, x), 2 * np.pi - np.arctan2(y, x), 64)
    t = np.arctan2(y, x - 0.5)
    inner = _arc(0.5, 0, 0.85, 2 * np.pi - t, t, 48)
    return np.concatenate([outer, inner])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, y], 1)


_SHAPES = {
    "circle": lambda: [(_arc(0, 0, 1, 0, 2 * np.pi, 96), True)],
    "square": lambda: [(_rect(-1, -1, 1, 1), True)],
    "triangle": lambda: [(np.array([[0, 1], [-0.866, -0.5], [0.866, -0.5]]), True)],
    "diamond": lambda: [(np.array([[0, 1], [-0.6, 0], [0, -1], [0.6, 0]]), True)],
    "star": lambda: [(_star(5, 0.42), True)],
    "heart": lambda: [(_heart(), True)],
    "cross": lambda: [(_rect(-1, -0.3, 1, 0.3), True), (_rect(-0.3, -1, 0.3, 1), True)],
    "ring": lambda: [(_arc(0, 0, 1, 0, 2 * np.pi, 96), True), (_arc(0, 0, 0.55, 0, 2 * np.pi, 64), False)],
    "crescent": lambda: [(_crescent(), True)],
    "arrow": lambda: [
        (np.array([[-1, -0.17], [0.1, -0.17], [0.1, -0.5], [1, 0], [0.1, 0.5], [0.1, 0.17], [-1, 0.17]]), True)
    ],
    "house": lambda: [
        (_rect(-0.7, -0.8, 0.7, 0.15), True),
        (np.array([[-0.95, 0.1], [0.95, 0.1], [0, 0.9]]), True),
        (_rect(-0.18, -0.81, 0.18, -0.3), False),  # the door is a notch in the outline
    ],
    "mushroom": lambda: [(_arc(0, 0.05, 1, 0, np.pi, 48, ry=0.8), True), (_rect(-0.28, -0.9, 0.28, 0.06), True)],
    "fish": lambda: [
        (_arc(-0.25, 0, 0.75, 0, 2 * np.pi, 64, ry=0.55), True),
        (np.array([[0.35, 0], [1, 0.5], [0.8, 0], [1, -0.5]]), True),
    ],
    "bone": lambda: [(_rect(-0.7, -0.17, 0.7, 0.17), True)]
    + [(_arc(sx * 0.75, sy * 0.2, 0.24, 0, 2 * np.pi, 32), True) for sx in (-1, 1) for sy in (-1, 1)],
}


@lru_cache(maxsize=None)
def shape_polygons(cls: str) -> tuple[Polygon, ...]:
    """The class's polygons, centred on their bounding box and scaled so the farthest vertex is at distance 1."""
    polys = [(np.asarray(p, float), fill) for p, fill in _SHAPES[cls]()]
    pts = np.concatenate([p for p, fill in polys if fill])
    centre = (pts.min(0) + pts.max(0)) / 2
    scale = np.linalg.norm(pts - centre, axis=1).max()
    return tuple(((p - centre) / scale, fill) for p, fill in polys)


def object_polygons(obj: WorldObject, size: float) -> list[Polygon]:
    """Polygons in pixel coordinates of a size x size image (x right, y down; pixel i spans [i, i+1))."""
    a = np.deg2rad(obj.angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    r = obj.size * size / 2
    out = []
    for p, fill in shape_polygons(obj.cls):
        q = p @ rot.T
        out.append((np.stack([obj.cx * size + r * q[:, 0], obj.cy * size - r * q[:, 1]], 1), fill))
    return out


def object_box(obj: WorldObject, size: float) -> tuple[float, float, float, float]:
    """Exact ground-truth box (x1, y1, x2, y2) in pixels."""
    pts = np.concatenate([p for p, fill in object_polygons(obj, size) if fill])
    return (*pts.min(0), *pts.max(0))


# ------------------------------------------------------------------------------------------------- backgrounds


def _noise(rng: np.random.Generator, grid: int, s: int) -> np.ndarray:
    """Smooth unit-variance noise: a grid x grid lattice bicubically upsampled, so it looks alike at every size."""
    lattice = Image.fromarray(rng.standard_normal((grid, grid)).astype(np.float32), mode="F")
    return np.asarray(lattice.resize((s, s), Image.BICUBIC))


def _mix(a, b, t: np.ndarray) -> np.ndarray:
    t = t[..., None]
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def paint_background(name: str, s: int, seed: int = 0) -> np.ndarray:
    """float32 [s, s, 3] texture in 0..255. Contrast stays low (about +-15) so every palette colour stands out."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid((np.arange(s) + 0.5) / s, (np.arange(s) + 0.5) / s)  # x, y in [0, 1]
    if name == "plain":
        return np.broadcast_to(np.float32(128), (s, s, 3)).copy()
    if name == "paper":
        tone = 5 * _noise(rng, 8, s) + 4 * _noise(rng, 96, s)
        return np.array([194, 186, 166], np.float32) + tone[..., None]
    if name == "checkerboard":
        n, (du, dv) = 8, rng.uniform(0, 1 / 8, 2)
        odd = (np.floor((u + du) * n) + np.floor((v + dv) * n)) % 2
        return _mix((146, 146, 146), (120, 120, 120), odd)
    if name == "stripes":
        sign, phase = rng.choice([-1, 1]), rng.uniform()
        band = np.floor((u + sign * v) * 7 + phase) % 2
        return _mix((165, 170, 180), (142, 147, 157), band)
    if name == "sky":
        return _mix((130, 150, 180), (185, 192, 200), v)
    if name == "gravel":
        tone = 5 * _noise(rng, 16, s) + 4 * _noise(rng, 48, s)
        return np.array([145, 143, 137], np.float32) + tone[..., None]
    if name == "slate":
        return np.array([92, 98, 108], np.float32) + 3 * _noise(rng, 12, s)[..., None]
    if name == "grid":
        du, dv = rng.uniform(0, 1 / 8, 2)
        line = np.maximum(((u + du) * 8) % 1 < 0.1, ((v + dv) * 8) % 1 < 0.1).astype(np.float32)
        return _mix((195, 195, 190), (178, 181, 187), line)
    raise ValueError(f"unknown background {name!r}")


# ---------------------------------------------------------------------------------------------------- render


def render(scene: Scene, size: int, *, supersample: int = 4) -> np.ndarray:
    """uint8 [size, size, 3]; a pure function of (scene, size, supersample)."""
    s = size * supersample
    seed = zlib.crc32(repr(scene).encode())  # texture details vary per scene, deterministically
    bg = paint_background(scene.background, s, seed)
    canvas = Image.fromarray(np.clip(bg + 0.5, 0, 255).astype(np.uint8))
    for obj in scene.objects:  # in list order: later objects are drawn on top
        mask = Image.new("L", (s, s), 0)
        draw = ImageDraw.Draw(mask)
        for poly, fill in object_polygons(obj, s):
            # PIL fills whole pixels between floored vertices, edges included; -0.5 centres that rounding
            draw.polygon([tuple(p) for p in poly - 0.5], fill=255 if fill else 0)
        canvas.paste(COLORS[obj.color], mask=mask)
    # averaging each supersample x supersample block weights every colour by the area it covers
    return np.asarray(canvas.reduce(supersample) if supersample > 1 else canvas)


def make_dataset(n: int, *, seed: int = 0, resolution: int = 32, captions: str = "long", max_objects: int = 3):
    """n rendered scenes with captions ("long" or "aio"); item i depends only on (seed, i)."""
    if captions not in ("long", "aio"):
        raise ValueError(f"captions must be 'long' or 'aio', got {captions!r}")
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    texts, scenes = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        scene = sample_scene(rng, max_objects=max_objects)
        images[i] = render(scene, resolution)
        texts.append(long_caption(scene, rng) if captions == "long" else aio_caption(scene))
        scenes.append(scene)
    return images, texts, scenes
