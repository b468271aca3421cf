"""Rule-based detector for the world: background model -> foreground blobs -> colour and shape per blob.

Colour is the nearest palette entry (in CIELAB) to the blob's core. Class is the nearest prototype in a rotation-
and scale-invariant shape-feature space; the prototypes are features of the world's own renders of every class at
many pixel sizes, rotations and blur levels, so the same code judges crisp ground truth and blurry samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from .render import render
from .scenes import CLASSES, COLORS, MAX_ANGLE, Scene, WorldObject


@dataclass
class Detection:
    cls: str
    color: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (pixel i spans [i, i+1))
    confidence: float
    area: float


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB 0..255 -> CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_COLOR_NAMES = tuple(COLORS)
_PALETTE_LAB = _lab(np.array([COLORS[c] for c in _COLOR_NAMES]))


# --------------------------------------------------------------------------------------------------- background


def _background(img: np.ndarray) -> tuple[np.ndarray, float]:
    """Smooth background estimate from the image border, and how far texture or noise strays from it.

    A quadratic surface per channel (gradients) is fitted to the border pixels by trimmed least squares, so objects
    that touch the border are voted out.
    """
    h, w, _ = img.shape
    width = max(1, round(min(h, w) / 32))
    ring = np.ones((h, w), bool)
    ring[width:-width, width:-width] = False
    ys, xs = np.nonzero(ring)

    def basis(x, y):
        x, y = x / w - 0.5, y / h - 0.5
        return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], -1)

    a, colours = basis(xs.astype(float), ys.astype(float)), img[ys, xs]
    pred = np.broadcast_to(np.median(colours, 0), colours.shape)
    for _ in range(4):
        resid = np.linalg.norm(colours - pred, axis=1)
        # texture deviates from its mean by up to ~45 RGB units; palette colours sit >= 80 away from every background
        keep = resid <= max(2.5 * np.median(resid), 50.0)
        ak = a[keep]
        coef = np.linalg.solve(ak.T @ ak + 1e-6 * np.eye(6), ak.T @ colours[keep])
        pred = a @ coef
    texture = float(np.percentile(np.linalg.norm(colours - pred, axis=1)[keep], 98))
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    return basis(xx, yy) @ coef, texture


# ------------------------------------------------------------------------------------------------ shape features


def _features(alpha: np.ndarray) -> np.ndarray:
    """Rotation- and scale-invariant descriptors of a soft mask (coverage in [0, 1])."""
    ys, xs = np.nonzero(alpha > 0)
    wts = alpha[ys, xs]
    m = wts.sum()
    z = (xs - (wts * xs).sum() / m) + 1j * (ys - (wts * ys).sum() / m)

    def c(p, q):  # complex moment sum(w * z^p * conj(z)^q), normalised for scale
        return np.abs((wts * z**p * np.conj(z) ** q).sum()) / m ** ((p + q) / 2 + 1)

    c11 = c(1, 1)
    moments = [c11, c(2, 2) / c11**2, c(2, 0) / c11, c(2, 1), c(3, 0), c(4, 0) / c11**2, c(5, 0), c(3, 1) / c11**2]

    mask = alpha >= 0.5 if (wts >= 0.5).any() else alpha > 0
    area = mask.sum()
    filled = ndimage.binary_fill_holes(mask).sum()
    py, px = np.nonzero(mask)
    # the hull of the pixels' corners (not centres) is never degenerate, even for a single row of pixels
    corners = np.concatenate([np.stack([px + dx, py + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    hull = ConvexHull(corners).volume
    r_max = np.abs(z[mask[ys, xs]]).max() + 0.5
    shape = [area / hull, (filled - area) / filled, m / (np.pi * r_max**2)]
    return np.array(moments + shape)


# ------------------------------------------------------------------------------------------------- components


@dataclass
class _Blob:
    box: tuple[float, float, float, float]
    area: float
    color: str
    features: np.ndarray


def _blobs(image: np.ndarray) -> list[_Blob]:
    """Foreground blobs (one per object: the world keeps objects apart) with colour and shape features."""
    img = image.astype(np.float64)
    h, w, _ = img.shape
    bg, texture = _background(img)
    dist = np.linalg.norm(img - bg, axis=-1)
    thresh = max(40.0, 1.6 * texture)
    # pieces of one object that noise or a thin part split apart are grouped through the weaker pixels between them,
    # but never through plain texture, which would chain separate objects together
    groups, _ = ndimage.label(dist > max(0.7 * thresh, 1.2 * texture))
    labels = np.where(dist > thresh, groups, 0)
    min_area = max(4.0, h * w / 400)
    blobs = []
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None or (comp := labels[sl] == i).sum() < min_area:
            continue
        # a 2 px halo catches the faint anti-aliased rim that the threshold cut off; 2 px more of margin show the
        # background around it
        y0, y1 = max(sl[0].start - 4, 0), min(sl[0].stop + 4, h)
        x0, x1 = max(sl[1].start - 4, 0), min(sl[1].stop + 4, w)
        own = labels[y0:y1, x0:x1] == i
        free = labels[y0:y1, x0:x1] == 0
        near = ndimage.binary_dilation(own, iterations=2)
        halo = near & (free | own)
        crop, d = img[y0:y1, x0:x1], dist[y0:y1, x0:x1]
        colour = np.median(crop[own & (d >= np.percentile(d[own], 50))], 0)
        # each rim pixel mixes the object colour with the background right next to it (texture varies, so take
        # the nearest clean background pixel rather than the smooth model); coverage = position on that segment
        clean = free & ~near
        if clean.any():
            _, (iy, ix) = ndimage.distance_transform_edt(~clean, return_indices=True)
            local = crop[iy, ix]
        else:
            local = bg[y0:y1, x0:x1]
        seg = colour - local
        alpha = ((crop - local) * seg).sum(-1) / np.maximum((seg * seg).sum(-1), 1e-6)
        alpha = np.where(halo, np.clip(alpha, 0, 1), 0)
        alpha[alpha < 0.15] = 0
        blobs.append(
            _Blob(
                box=(float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)),
                area=float(comp.sum()),
                color=_COLOR_NAMES[int(np.linalg.norm(_PALETTE_LAB - _lab(colour), axis=1).argmin())],
                features=_features(alpha),
            )
        )
    return blobs


# ------------------------------------------------------------------------------------------------- prototypes

_PROTO_DIAMETERS = (8, 11, 15, 20, 28, 40, 64, 100)  # pixels
_PROTO_ANGLES = np.linspace(-MAX_ANGLE, MAX_ANGLE, 5)
_PROTO_BLURS = (0.0, 0.8)  # gaussian sigma in pixels: samples from a diffusion model are soft


@lru_cache(maxsize=1)
def _prototypes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [N, F], class index [N], feature scale [F]) from renders of every class; built once per process."""
    feats, labels = [], []
    for k, cls in enumerate(CLASSES):
        for diam in _PROTO_DIAMETERS:
            side = int(diam * 1.25) + 8
            for j, angle in enumerate(_PROTO_ANGLES):
                offset = 0.5 + 0.3 * ((j % 3) - 1) / side  # sub-pixel placements
                obj = WorldObject(cls, "blue", diam / side, offset, offset, float(angle))
                img = render(Scene("plain", (obj,)), side)
                for sigma in _PROTO_BLURS if diam <= 40 else (0.0,):  # a 1 px blur barely changes big shapes
                    soft = ndimage.gaussian_filter(img.astype(np.float64), (sigma, sigma, 0)) if sigma else img
                    blobs = _blobs(soft)
                    if blobs:
                        feats.append(max(blobs, key=lambda b: b.area).features)
                        labels.append(k)
    feats = np.array(feats)
    return feats, np.array(labels), feats.std(0) + 1e-9


def _classify(features: np.ndarray) -> tuple[str, float]:
    protos, labels, scale = _prototypes()
    d = np.linalg.norm((protos - features) / scale, axis=1)
    per_class = np.full(len(CLASSES), np.inf)
    np.minimum.at(per_class, labels, d)
    best, second = np.partition(per_class, 1)[:2]
    # confident when the best class is both close and clearly closer than any other
    confidence = (second - best) / (second + best + 1e-9) * np.exp(-best / 4)
    return CLASSES[int(per_class.argmin())], float(confidence)


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in a uint8 [H, W, 3] image, largest first."""
    out = []
    for blob in _blobs(image):
        cls, conf = _classify(blob.features)
        out.append(Detection(cls, blob.color, blob.box, conf, blob.area))
    return sorted(out, key=lambda d: -d.area)
