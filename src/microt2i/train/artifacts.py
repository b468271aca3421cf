"""What a finished run folder holds for inference (written by `train.loop`): config.yaml, the EMA network in ema/,
and the unconditional caption in null_text.safetensors; `load_run` reads them back."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from ..config import ConfigError, load_yaml
from ..models import from_pretrained


def load_run(run_dir: str | Path, device="cpu"):
    """(config, EMA network, null tokens, null mask) of a finished run folder."""
    run_dir = check_source(run=run_dir)
    null = load_file(str(run_dir / "null_text.safetensors"))
    return (load_yaml(run_dir / "config.yaml"), from_pretrained(run_dir / "ema", device=device),
            null["tokens"], null["mask"].bool())


def check_source(run: str | Path | None = None, model: str | Path | None = None) -> Path:
    """The run folder (with its final EMA weights) or export folder to sample from; a clear error otherwise."""
    if (run is None) == (model is None):
        raise ConfigError("sample from exactly one of a run folder (--run) or an exported model folder (--model)")
    if run is not None:
        if not (Path(run) / "ema" / "model.safetensors").exists():
            raise FileNotFoundError(f"{run} has no ema/model.safetensors; train it to the end first (`microt2i train`)")
        return Path(run)
    if not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(f"{model} has no model_index.json: not an export (`microt2i export RUN {model}`)")
    return Path(model)
