"""Resolve a pretrained model given as a local folder or a Hugging Face hub id to a local folder.

Everything is loaded from a local folder afterwards, so `from_pretrained` never touches the network and a
missing model fails at once with one error that says how to fix it (instead of minutes of HTTP retries).
Only safetensors, JSON and tokenizer files are fetched, plus OpenCLIP's `open_clip_pytorch_model.bin` (DFN5B-CLIP-H
ships no other weights), which is read with `torch.load(weights_only=True)`: no pickled code ever runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub

# Files a model folder needs: configs, safetensors weights, tokenizer vocabularies (SentencePiece, BPE, WordPiece).
_ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "open_clip_pytorch_model.bin"]
_IGNORE = ["*fp16*", "*onnx*", "*openvino*"]


def offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the environment again so a later setting counts.
    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return huggingface_hub.is_offline_mode() or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


class MissingModelError(FileNotFoundError):
    """A model given by path or hub id is not available on this machine."""


def _looks_like_path(spec: str) -> bool:
    # Hub ids are `name` or `owner/name`; anything else is meant as a folder.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def resolve_pretrained(spec: str | os.PathLike, *, what: str, subfolder: str | None = None) -> Path:
    """Return the local folder holding `spec` (a folder saved with `save_pretrained`, or a hub id).

    A hub id is looked up in the local Hugging Face cache; when it is absent it is downloaded unless offline
    mode (`HF_HUB_OFFLINE=1`) is on. `what` names the model in error messages ("VAE", "text encoder").
    """
    spec = os.fspath(spec)
    local = Path(spec).expanduser()
    if local.is_dir():
        folder = local
    elif _looks_like_path(spec):
        raise MissingModelError(
            f"{what} folder '{spec}' does not exist. Pass a folder written by `save_pretrained` "
            f"or a Hugging Face hub id such as 'stabilityai/sd-vae-ft-ema'."
        )
    else:
        folder = _from_hub(spec, what=what, subfolder=subfolder)
    config = folder / (subfolder or "") / "config.json"
    if not config.is_file() and not (config.parent / "open_clip_config.json").is_file():  # OpenCLIP: openclip.py
        raise MissingModelError(
            f"{what} '{spec}' has no {config.relative_to(folder)} in {folder}"
            + ("" if subfolder else " (does it need a subfolder, e.g. subfolder='vae'?)")
        )
    return folder


def _from_hub(repo_id: str, *, what: str, subfolder: str | None) -> Path:
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
    except FileNotFoundError:
        pass
    allow = [(f"{subfolder}/" if subfolder else "") + p for p in _ALLOW]
    fix = (
        f"Download it once with `hf download {repo_id} --include {' '.join(map(repr, allow))} "
        f"--exclude {' '.join(map(repr, _IGNORE))}` on a machine with internet (then copy "
        f"{huggingface_hub.constants.HF_HUB_CACHE}), or pass a local folder written by `save_pretrained`."
    )
    if offline():
        raise MissingModelError(
            f"{what} '{repo_id}' is neither a local folder nor in the offline Hugging Face cache. {fix}"
        ) from None
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=_IGNORE))
    except Exception as e:  # network, auth, unknown repo: one error that names the input and the fix
        cause = (str(e).strip().splitlines() or [""])[0]
        raise MissingModelError(
            f"{what} '{repo_id}' could not be downloaded ({type(e).__name__}: {cause}). {fix}"
        ) from None


def resolve_init_hub(repo_id: str) -> Path:
    """`train.init=<owner/name>`: the Hub model repo's snapshot in the HF cache (downloaded unless offline), holding a
    `microt2i export` folder or a saved model (model.safetensors + config.json). One error naming the fix otherwise."""
    if _looks_like_path(repo_id) or not repo_id.strip():
        raise MissingModelError(f"train.init={repo_id!r} is neither a local folder nor a Hugging Face Hub id "
                                f"(owner/name); pass a run folder, an export folder or a Hub model id")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or an invalid id, reported below)
        pass
    if offline():
        raise MissingModelError(f"train.init={repo_id!r} is not a local folder and not in the Hugging Face cache, and "
                                f"HF_HUB_OFFLINE=1 is set: unset HF_HUB_OFFLINE to download it, or pass a local folder")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.yaml",
                                                                               "*.txt", "*.model", "*.py", "*.md"]))
    except Exception as e:  # network, auth, unknown repo
        cause = (str(e).strip().splitlines() or [""])[0]
        raise MissingModelError(f"train.init={repo_id!r} could not be downloaded from the Hub ({type(e).__name__}: "
                                f"{cause}); check the id and `hf auth login` (private repos), or pass a local "
                                f"folder") from None
