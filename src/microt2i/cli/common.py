"""What every command module shares: argparse number types and the config resolution of a preset or .yaml."""

from __future__ import annotations

import argparse


def bounded(kind, low: float, strict: bool = False):
    """An argparse type: a `kind` number >= low (> low with `strict`); else argparse's one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value
    return parse


POS, NAT, POS_FLOAT = bounded(int, 1), bounded(int, 0), bounded(float, 0, strict=True)


def resolve_config(spec: str, overrides: list[str], model: str | None = None, objective: str | None = None):
    """A preset or YAML plus overrides; `model` swaps a world preset for the same-size one of that model family,
    `objective` is shorthand for the override objective.kind=…"""
    from .. import presets  # lazy: CLI startup (torch)
    from ..config import ConfigError, apply_overrides, load_yaml  # lazy: CLI startup (torch)

    if spec.endswith((".yaml", ".yml")):
        if model:
            raise ConfigError(f"--model picks a world preset; {spec} is a config file (set model.* in it instead)")
        base = load_yaml(spec)
    else:
        base = presets.get(presets.world_preset(spec, model) if model else spec)
    return apply_overrides(base, ([f"objective.kind={objective}"] if objective else []) + list(overrides))
