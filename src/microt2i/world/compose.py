"""Ground-truth world scenes for GenEval records: `world_scene(record, rng)` draws a scene that satisfies a parsed
prompt exactly (classes, counts, colours, the position clause), so GenEval's scoring and the world-template prompt
extender (`encoders/extender.py`) can render what a prompt asks for."""

from __future__ import annotations

import numpy as np

from .scenes import BACKGROUNDS, CLASSES, COLORS, MAX_ANGLE, Scene, WorldObject

_SIZES = {"single_object": (0.45, 0.7), "colors": (0.45, 0.7), "two_object": (0.32, 0.42),
          "position": (0.32, 0.42), "color_attr": (0.32, 0.42)}
_COUNT_SIZES = {1: (0.45, 0.7), 2: (0.3, 0.4), 3: (0.27, 0.33), 4: (0.25, 0.3), 5: (0.23, 0.27)}
_MARGIN, _GAP = 0.03, 0.08


def world_scene(record: dict, rng: int | np.random.Generator):
    """A world Scene that satisfies `record` exactly: the clause's classes, counts and colours (a random colour
    where none is asked), the position clause's relation along its axis, nothing else (so excludes hold).

    Wrong renders for tests are scenes of an edited record (another colour, count n+1, the opposite relation).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    unknown = {c["class"] for c in record["include"]} - set(CLASSES)
    if unknown:
        raise ValueError(f"record {record['prompt']!r} names {sorted(unknown)}, which the world cannot draw; "
                         f"make the prompts with make_prompts(world.CLASSES, world.COLORS, seed)")
    total = sum(c["count"] for c in record["include"])
    lo, hi = _SIZES.get(record["tag"]) or _COUNT_SIZES[min(total, 5)]  # counting: smaller objects for larger n
    specs = [(c["class"], c.get("color")) for c in record["include"] for _ in range(c["count"])]
    relation = next((c["position"][0] for c in record["include"] if "position" in c), None)
    relation = relation if len(specs) == 2 else None
    for _ in range(1000):
        sizes = rng.uniform(lo, hi, len(specs))
        centres = _place_pair(sizes, relation, rng) if relation else _place_apart(sizes, rng)
        if centres is not None:
            break
    else:
        raise RuntimeError(f"could not place {len(specs)} objects for {record['prompt']!r}")
    objects = tuple(
        WorldObject(cls, color or str(rng.choice(list(COLORS))), float(s), float(cx), float(cy),
                    float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)))
        for (cls, color), s, (cx, cy) in zip(specs, sizes, centres)
    )
    return Scene(str(rng.choice(list(BACKGROUNDS))), objects)


def _place_apart(sizes: np.ndarray, rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Rejection-sample centres so that no two objects come closer than their radii plus a gap."""
    centres: list[tuple[float, float]] = []
    for s in sizes:
        lo, hi = s / 2 + _MARGIN, 1 - s / 2 - _MARGIN
        for _ in range(200):
            c = rng.uniform(lo, hi, 2)
            if all(np.hypot(*(c - p)) > (s + sizes[j]) / 2 + _GAP for j, p in enumerate(centres)):
                centres.append(tuple(c))
                break
        else:
            return None
    return centres


def _place_pair(sizes: np.ndarray, relation: str, rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Target (clause 0) and object (clause 1) apart along the relation's axis, offset well past the dead zone of
    `relative_position`; the off-axis offset stays below a quarter of the on-axis one."""
    s_t, s_o = sizes
    room = 1 - 2 * _MARGIN - (s_t + s_o) / 2  # largest centre distance that keeps both inside the frame
    closest = (s_t + s_o) / 2 + _GAP
    if closest > room:
        return None
    sep = rng.uniform(closest, room)
    after = relation in ("right of", "below")  # the object lies after the target along the axis
    s_first = s_t if after else s_o
    first = _MARGIN + s_first / 2 + rng.uniform(0, room - sep)
    axis_t, axis_o = (first, first + sep) if after else (first + sep, first)
    drift = rng.uniform(-0.25, 0.25) * sep
    half = max(s_t, s_o) / 2 + _MARGIN + abs(drift) / 2
    mid = rng.uniform(half, 1 - half)
    off_t, off_o = mid - drift / 2, mid + drift / 2
    if relation in ("left of", "right of"):
        return [(axis_t, off_t), (axis_o, off_o)]
    return [(off_t, axis_t), (off_o, axis_o)]
