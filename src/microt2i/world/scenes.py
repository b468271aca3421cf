"""The world's vocabulary, scene sampler and oracle captioner.

A scene is one large, roughly centred main object (the ImageNet "class") plus a few small secondary objects on a
textured background. Everything a caption says is read off the Scene, so captions are exact by construction.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# Silhouettes chosen to stay distinct under rotation (|angle| <= 45 deg) and at ~10 px: no two classes differ only by
# orientation (the diamond is elongated, so a tilted square is never a diamond).
CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "star", "heart", "cross", "ring",
    "crescent", "arrow", "house", "mushroom", "fish", "bone",
)

# GenEval's ten colour words. Values keep every pair >= 39 apart in CIELAB and every colour >= 80 RGB units away
# from every background tone, so both the detector and a blurry sample can tell them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 140, 20),
    "yellow": (250, 220, 40),
    "green": (40, 160, 60),
    "blue": (30, 95, 225),
    "purple": (150, 45, 175),
    "pink": (250, 135, 195),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}

# Background name -> caption phrases (any of them is true). Textures are desaturated mid tones of low contrast
# (painted in render.py) so that black, white and every saturated colour stand out on all of them.
BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "plain": ("a plain grey background", "a solid grey background", "a flat grey backdrop"),
    "paper": ("a beige paper background", "textured beige paper", "a sheet of cream-coloured paper"),
    "checkerboard": ("a checkered background", "a grey checkerboard pattern", "a chequered backdrop"),
    "stripes": ("a striped background", "a background of diagonal stripes", "a pattern of faint diagonal stripes"),
    "sky": ("a pale sky gradient", "a soft hazy gradient", "a misty sky-like backdrop"),
    "gravel": ("a gravel-textured background", "a speckled stone texture", "a grainy grey surface"),
    "slate": ("a dark slate background", "a dark charcoal backdrop", "a dark slate surface"),
    "grid": ("a sheet of graph paper", "a light grid background", "a background of faint grid lines"),
}

# Size is the diameter of the object's circumscribed circle as a fraction of the image side.
SIZE_BINS: tuple[tuple[str, float], ...] = (("small", 0.35), ("medium", 0.55), ("large", 1.0))
MAIN_SIZE = (0.40, 0.80)
SECONDARY_SIZE = (0.20, 0.30)
MAX_ANGLE = 45.0  # degrees, counter-clockwise on screen
_MARGIN = 0.02  # objects stay fully inside the frame
_GAP = 0.07  # free space between objects, so each object is one connected blob (>= 2 px at 32 px)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class WorldObject:
    cls: str
    color: str
    size: float
    cx: float
    cy: float
    angle: float


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[WorldObject, ...]

    @property
    def main(self) -> WorldObject:
        return self.objects[0]


def size_name(size: float) -> str:
    return next(name for name, upper in SIZE_BINS if size < upper)


def position_name(cx: float, cy: float) -> str:
    """'center', 'left', 'top', 'top left', ... on a 3x3 grid of the unit square."""
    v = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    h = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    return f"{v} {h}".strip() or "center"


def relation(obj: WorldObject, ref: WorldObject) -> str:
    """Where obj lies relative to ref along the dominant axis (y grows downwards)."""
    dx, dy = obj.cx - ref.cx, obj.cy - ref.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _rng(rng: int | np.random.Generator) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng: int | np.random.Generator,
    *,
    max_objects: int = 3,
    classes=None,
    colors=None,
    backgrounds=None,
) -> Scene:
    """A background, a main object (restricted to `classes`/`colors` if given) and up to max_objects-1 small others."""
    rng = _rng(rng)
    background = _pick(rng, tuple(backgrounds or BACKGROUNDS))
    size = float(rng.uniform(*MAIN_SIZE))
    # "roughly centred": within 0.12 of the centre, but never leaving the frame
    reach = min(0.12, 0.5 - size / 2 - _MARGIN)
    main = WorldObject(
        cls=_pick(rng, tuple(classes or CLASSES)),
        color=_pick(rng, tuple(colors or COLORS)),
        size=size,
        cx=float(0.5 + rng.uniform(-reach, reach)),
        cy=float(0.5 + rng.uniform(-reach, reach)),
        angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)),
    )
    objects = [main]
    for _ in range(int(rng.integers(max_objects))):
        s = float(rng.uniform(*SECONDARY_SIZE))
        lo, hi = s / 2 + _MARGIN, 1 - s / 2 - _MARGIN
        cls, color, angle = _pick(rng, CLASSES), _pick(rng, tuple(COLORS)), float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        # rejection sampling for a spot that overlaps nothing; a crowded scene simply keeps fewer objects
        for _ in range(30):
            cx, cy = rng.uniform(lo, hi, size=2)
            if all(np.hypot(cx - o.cx, cy - o.cy) > (s + o.size) / 2 + _GAP for o in objects):
                objects.append(WorldObject(cls, color, s, float(cx), float(cy), angle))
                break
    return Scene(background, tuple(objects))


# ---------------------------------------------------------------------------------------------------- captions


def aio_caption(scene: Scene) -> str:
    cls = scene.main.cls
    return f"An image of {article(cls)} {cls}"


_SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium-sized", "mid-sized"), "large": ("large", "big")}
_IMAGE_WORDS = ("image", "picture", "photo", "frame")
_OPENERS = (
    "The {img} shows {np} {where}",
    "This {img} features {np} {where}",
    "In this {img}, there is {np} {where}",
    "We can see {np} {where}",
    "The {img} depicts {np} {where}",
    "{Np} is shown {where}",
    "{Np} sits {where}",
    "{Where}, there is {np}",
    "Pictured {where} is {np}",
    "The main subject of the {img} is {np} {where}",
)
_ON_BG = (" on {bg}", " against {bg}", ", set on {bg}")
_BG_SENTENCES = (
    "The background is {bg}.",
    "Everything is set against {bg}.",
    "Behind the {c} lies {bg}.",
    "The scene sits on {bg}.",
)
_OTHER_SENTENCES = (
    "There is also {np} {rel} the {ref}.",
    "{Np} appears {rel} the {ref}.",
    "{Rel} the {ref}, there is {np}.",
    "{Np} can be seen {where}, {rel} the {ref}.",
    "Another shape, {np}, is placed {rel} the {ref}.",
)
_ALONE = ("No other objects are present.", "The {c} is the only object in the {img}.", "Nothing else is in the {img}.")
_COUNT = (
    "There are {n} objects in total.",
    "In total, the {img} contains {n} shapes.",
    "Altogether, {n} objects are visible.",
)
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_SYMMETRIC = {"circle", "ring"}  # tilt is meaningless for these


def _where(obj: WorldObject, rng: np.random.Generator, img: str) -> str:
    pos = position_name(obj.cx, obj.cy)
    if pos == "center":
        return _pick(rng, ("in the center", "in the middle", f"at the center of the {img}", "near the middle"))
    if " " in pos:
        return _pick(rng, ("in the {p} corner", "toward the {p}", "in the {p} area")).replace("{p}", pos)
    return _pick(rng, ("on the {p} side", "toward the {p}", "near the {p} edge")).replace("{p}", pos)


def _noun_phrase(obj: WorldObject, rng: np.random.Generator, *, with_size: bool) -> str:
    words = [obj.color, obj.cls]
    if with_size:
        words.insert(0, _pick(rng, _SIZE_WORDS[size_name(obj.size)]))
    return f"{article(words[0])} {' '.join(words)}"


def _tilt(obj: WorldObject, rng: np.random.Generator) -> str | None:
    if obj.cls in _SYMMETRIC or abs(obj.angle) < 15:
        return None
    side = "left" if obj.angle > 0 else "right"
    amount = "slightly " if abs(obj.angle) < 30 else ""
    turn = "counter-clockwise" if obj.angle > 0 else "clockwise"
    templates = ("The {c} is tilted {a}to the {s}.", "The {c} leans {a}to the {s}.", "The {c} is turned {a}{t}.")
    return _pick(rng, templates).format(c=obj.cls, a=amount, s=side, t=turn)


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def long_caption(scene: Scene, rng: int | np.random.Generator | None = None) -> str:
    """A LLaVA-style multi-sentence description; every statement is true of the scene and the first sentence always
    names the main object's colour and class. Without rng the wording is a fixed function of the scene."""
    if rng is None:
        rng = zlib.crc32(repr(scene).encode())
    rng = _rng(rng)
    main, others = scene.main, scene.objects[1:]
    img = _pick(rng, _IMAGE_WORDS)
    bg = _pick(rng, BACKGROUNDS[scene.background])
    np_main = _noun_phrase(main, rng, with_size=rng.random() < 0.8)
    where = _where(main, rng, img)
    first = _pick(rng, _OPENERS).format(img=img, np=np_main, Np=_cap(np_main), where=where, Where=_cap(where))
    bg_inline = rng.random() < 0.5
    if bg_inline:
        first += _pick(rng, _ON_BG).format(bg=bg)
    first += "."

    # each optional fact is one sentence; their order is shuffled for variety
    ref = _pick(rng, (main.cls, f"{main.color} {main.cls}", "main object"))
    facts = []
    if not bg_inline:
        facts.append(_pick(rng, _BG_SENTENCES).format(bg=bg, c=main.cls))
    tilt = _tilt(main, rng)
    if tilt and rng.random() < 0.7:
        facts.append(tilt)
    if others:
        for o in others:
            np_o = _noun_phrase(o, rng, with_size=True)
            rel = relation(o, main)
            w = _where(o, rng, img)
            sentence = _pick(rng, _OTHER_SENTENCES)
            facts.append(sentence.format(np=np_o, Np=_cap(np_o), rel=rel, Rel=_cap(rel), ref=ref, where=w))
        if rng.random() < 0.5:
            n = len(scene.objects)
            facts.append(_pick(rng, _COUNT).format(n=_pick(rng, (str(n), _NUMBERS.get(n, str(n)))), img=img))
    elif rng.random() < 0.6:
        facts.append(_pick(rng, _ALONE).format(c=main.cls, img=img))
    order = rng.permutation(len(facts))
    return " ".join([first] + [facts[i] for i in order])


# ---------------------------------------------------------------------------------------- CutMix composites
# The oracle of a CutMix composite (ImageNet-T2I App. E; augment/cutmix.py): `partner`'s window `src` is pasted over
# `box` of `base` (both normalised (x0, y0, x1, y1)). Like the paper's LLaVA prompt ("do not consider the image as
# a composite"), the caption describes one scene: every visible object with its position and relations.


def cutmix_objects(base: Scene, partner: Scene, box, src) -> tuple[list[WorldObject], list[WorldObject]]:
    """(base objects the paste covers less than half of, partner objects whose centre lies in `src`, mapped into
    the composite's coordinates and scale)."""
    bx0, by0, bx1, by1 = box
    sx0, sy0, sx1, sy1 = src
    scale = (bx1 - bx0) / (sx1 - sx0)
    kept = [o for o in base.objects if _covered(o, box) < 0.5]
    pasted = [WorldObject(o.cls, o.color, o.size * scale, bx0 + (o.cx - sx0) * scale, by0 + (o.cy - sy0) * scale,
                          o.angle) for o in partner.objects if sx0 <= o.cx < sx1 and sy0 <= o.cy < sy1]
    return kept, pasted


def _covered(o: WorldObject, box) -> float:
    """The fraction of o's bounding square (side = its circumscribed diameter) that the paste box covers."""
    r = o.size / 2
    w = max(0.0, min(o.cx + r, box[2]) - max(o.cx - r, box[0]))
    h = max(0.0, min(o.cy + r, box[3]) - max(o.cy - r, box[1]))
    return w * h / o.size**2


def cutmix_caption(base: Scene, partner: Scene, box, src, rng: int | np.random.Generator, *,
                   captions: str = "long") -> str:
    """The world oracle's caption of a CutMix composite: "aio" names the two main classes, "long" describes every
    visible object (colour, class, size, position, relation to the first), the pasted region's background, and
    which objects the paste partly hides."""
    rng = _rng(rng)
    kept, pasted = cutmix_objects(base, partner, box, src)
    objects = kept + pasted
    if not objects:  # a paste can hide every base object while showing none of the partner's
        return f"An image of {BACKGROUNDS[base.background][0]} with a patch of {BACKGROUNDS[partner.background][0]}."
    if captions == "aio":
        names = list(dict.fromkeys(o.cls for o in ([kept[0]] if kept else []) + ([pasted[0]] if pasted else [])))
        return "An image of " + " and ".join(f"{article(c)} {c}" for c in names)
    main = objects[0]
    img = _pick(rng, _IMAGE_WORDS)
    np_main = _noun_phrase(main, rng, with_size=True)
    where = _where(main, rng, img)
    first = _pick(rng, _OPENERS).format(img=img, np=np_main, Np=_cap(np_main), where=where, Where=_cap(where))
    first += _pick(rng, _ON_BG).format(bg=_pick(rng, BACKGROUNDS[base.background])) + "."
    ref = _pick(rng, (main.cls, f"{main.color} {main.cls}"))
    facts = []
    for o in objects[1:]:
        np_o = _noun_phrase(o, rng, with_size=True)
        rel, w = relation(o, main), _where(o, rng, img)
        facts.append(_pick(rng, _OTHER_SENTENCES).format(np=np_o, Np=_cap(np_o), rel=rel, Rel=_cap(rel), ref=ref,
                                                         where=w))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    patch = _pick(rng, BACKGROUNDS[partner.background])
    region = "half" if (box[2] - box[0]) * (box[3] - box[1]) >= 0.5 - 1e-6 else "part"
    facts.append(f"The {position_name(cx, cy)} {region} of the {img} shows {patch}.")
    hidden = list(dict.fromkeys(o.cls for o in kept if _covered(o, box) > 0))
    if hidden:
        facts.append(f"The {' and the '.join(hidden)} {'is' if len(hidden) == 1 else 'are'} partly hidden.")
    if len(objects) > 1 and rng.random() < 0.5:
        n = len(objects)
        facts.append(_pick(rng, _COUNT).format(n=_pick(rng, (str(n), _NUMBERS.get(n, str(n)))), img=img))
    order = rng.permutation(len(facts))
    return " ".join([first] + [facts[i] for i in order])
