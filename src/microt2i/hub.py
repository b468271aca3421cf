"""`microt2i export RUN FOLDER --push-to-hub OWNER/NAME`: publish an export folder to the Hugging Face Hub.

Through `huggingface_hub` (`HfApi.create_repo` + `HfApi.upload_folder`): the model card (the export's README.md)
gets the Hub metadata first — library (diffusers), pipeline tag (text-to-image), license, base model (the Hub id
the run was fine-tuned from with `train --init`, if any), tags and the training data set — and its training
details come from the run config the export holds (training_config.yaml). The other direction,
`train --init OWNER/NAME`, is encoders/hub.py `resolve_init_hub`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError, load_yaml
from .encoders.hub import offline
from .io import atomic_write_text


def check_push(repo_id: str) -> None:
    """Fail before any work: a malformed repo id or offline mode is one ConfigError naming the fix."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # heavy: only for an upload

    if not repo_id or not repo_id.strip():
        raise ConfigError("export --push-to-hub needs a repo id, e.g. --push-to-hub your-name/microt2i-demo")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"--push-to-hub {repo_id!r} is not a Hub repo id ({str(e).splitlines()[0]}); use "
                          f"owner/name, e.g. your-name/microt2i-demo") from None
    if offline():
        raise ConfigError("--push-to-hub needs the network but HF_HUB_OFFLINE=1 is set: unset HF_HUB_OFFLINE (and log "
                          "in once with `hf auth login` or set HF_TOKEN), or export without --push-to-hub")


def _base_model(init: str) -> str | None:
    """The Hub id a fine-tune started from (`train.init` that is no local folder), else None."""
    if not init or Path(init).expanduser().exists() or init.startswith((".", "/", "~")) or init.count("/") != 1:
        return None
    return init


def hub_card(folder: str | Path, *, license: str = "other") -> str:
    """The export's README.md with the Hub metadata filled in (huggingface_hub's ModelCard keeps the body)."""
    from huggingface_hub import ModelCard  # heavy: only for an upload

    folder = Path(folder)
    card = ModelCard((folder / "README.md").read_text(encoding="utf-8"))
    cfg = load_yaml(folder / "training_config.yaml")
    meta = card.data
    meta.library_name, meta.pipeline_tag, meta.license = "diffusers", "text-to-image", license
    base = _base_model(cfg.train.init)
    if base:
        meta.base_model = base
    tags = list(meta.tags or [])
    meta.tags = tags + [t for t in ("microt2i", "text-to-image", cfg.model.family, cfg.objective.kind) if t not in tags]
    if cfg.data.source == "hf" and cfg.data.root and not Path(cfg.data.root).exists():
        meta.datasets = [cfg.data.root]
    details = (f"\n## Training details\n\n- data: `{cfg.data.source}` {cfg.data.root or ''} at {cfg.data.resolution} px, "
               f"text encoder `{cfg.data.text_encoder}`, codec `{cfg.data.codec}`\n- model: {cfg.model.family}, "
               f"objective `{cfg.objective.kind}`" + (f" (min-SNR-γ {cfg.objective.snr_gamma})"
                                                       if cfg.objective.snr_gamma else "")
               + f"\n- {cfg.train.total_nimg} images seen, batch {cfg.train.batch_size}, lr {cfg.train.lr:g} "
               f"({cfg.train.optimizer}, {cfg.train.lr_schedule}), EMA {cfg.train.ema_decay}, precision "
               f"{cfg.train.precision}" + (f"\n- fine-tuned from [{base}](https://huggingface.co/{base})" if base else "")
               + "\n")
    text = str(card)
    if "## Training details" not in text:
        marker = "\n## Training config"
        text = text.replace(marker, details + marker, 1) if marker in text else text + details
    return text


def push_to_hub(folder: str | Path, repo_id: str, *, license: str = "other", private: bool = False,
                token: str | None = None, log=print) -> str:
    """Complete the model card, create the repo (if needed) and upload the folder; returns the repo URL."""
    from huggingface_hub import HfApi  # heavy (network client): only for an upload

    check_push(repo_id)
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"{folder} is not a `microt2i export` folder (no model_index.json); export a run first")
    atomic_write_text(folder / "README.md", hub_card(folder, license=license))
    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                      commit_message="Upload microt2i export", ignore_patterns=[".*", "**/.*"])
    log(f"[export] pushed {folder} → {url}")
    return str(url)
