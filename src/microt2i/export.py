"""`microt2i export RUN FOLDER`: a finished run → a diffusers `save_pretrained` folder.

FOLDER holds `model_index.json` (pipeline class `["pipeline", "MicroT2IPipeline"]`, objective, sampler settings,
latent normalisation), `transformer/` (EMA weights as safetensors in the chosen dtype, config = the model config
dict), `text_encoder/` + `tokenizer/` (the run's text encoder), `vae/` (latent runs only), `pipeline.py` (imports
`microt2i.pipeline`), `training_config.yaml`, `sample_grid.png` and a model card `README.md` (training config,
data, metrics of the run's eval JSON files). Load it offline with
    DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)
It is written to a temporary sibling folder and renamed, so FOLDER is either complete or absent. An export holds
`microt2i_export.json` (its marker): `--overwrite` replaces only a folder with that marker, never a run folder, a
folder holding runs, or the export's own source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .config import ConfigError, RunConfig, plain, to_dict
from .io import atomic_write_text
import numpy as np
import yaml
from .demo import grid_prompts
from .encoders import TextEncoder, codec_of
from .encoders.codec import DiffusersVAE
from .eval.pages import read_stats, save_grid
from .models import count_params
from .pipeline import MicroT2IPipeline, MicroT2ITransformer, SAMPLING_KEYS
from .report import run_metrics
from .schedulers import make_scheduler
from .train.artifacts import load_run

EXPORT_MARKER = "microt2i_export.json"  # written into every export; what --overwrite may replace

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PIPELINE_SHIM = '''"""Pipeline class of a microt2i export: diffusers loads it from here (trust_remote_code=True)."""
from microt2i.pipeline import MicroT2IPipeline, MicroT2ITransformer  # noqa: F401  (pip install microt2i)
'''


def build_pipeline(run_dir: str | Path, *, device="cpu"):
    """(MicroT2IPipeline in fp32, RunConfig) from a finished run folder (EMA weights, null caption, encoders)."""
    cfg, net, null_tokens, null_mask = load_run(run_dir, device=device)
    text = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, device=device, log=None)
    codec = codec_of(cfg.data, device=device)
    vae, codec_cfg = None, {"kind": "pixel"}
    if isinstance(codec, DiffusersVAE):
        vae = codec.vae
        codec_cfg = {"kind": "vae", "source": cfg.data.codec, "shift": codec.shift.tolist(), "scale": codec.scale.tolist()}
    pipe = MicroT2IPipeline(MicroT2ITransformer.from_network(net, null_tokens, null_mask).to(device), text.tokenizer,
                            text.model, vae, make_scheduler(dataclasses.asdict(cfg.objective), cfg.eval.sampler,
                                                            strict=False), objective=dataclasses.asdict(cfg.objective),
                            sampling={k: getattr(cfg.eval, k) for k in SAMPLING_KEYS} | {"cfg_scale": cfg.eval.grid_scale},
                            codec=codec_cfg,
                            text_len=text.max_length)
    return pipe, cfg


def export_run(run_dir: str | Path, folder: str | Path, *, dtype: str = "fp32", grid: bool = True,
               overwrite: bool = False, device="cpu", log=print, progress: bool = False) -> Path:
    """Write the export of `run_dir` to `folder` (see module doc); returns `folder`."""
    run_dir, folder = Path(run_dir), Path(folder)
    if dtype not in DTYPES:
        raise ConfigError(f"export dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    check_target(run_dir, folder, overwrite=overwrite)
    pipe, cfg = build_pipeline(run_dir, device=device)
    if dtype != "fp32":
        pipe.transformer.to(DTYPES[dtype])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        index = json.loads((tmp / "model_index.json").read_text())
        index["_class_name"] = ["pipeline", "MicroT2IPipeline"]  # diffusers resolves it from ./pipeline.py
        atomic_write_text(tmp / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
        atomic_write_text(tmp / "pipeline.py", PIPELINE_SHIM)
        shutil.copyfile(run_dir / "config.yaml", tmp / "training_config.yaml")
        if (run_dir / "ema" / "adapter.safetensors").is_file():  # a LoRA run: transformer/ is merged, adapter shipped
            (tmp / "lora").mkdir()
            shutil.copyfile(run_dir / "ema" / "adapter.safetensors", tmp / "lora" / "adapter.safetensors")
        grid_prompts = []
        if grid:
            grid_prompts = _sample_grid(pipe, cfg, tmp / "sample_grid.png", progress=progress)
        atomic_write_text(tmp / "README.md", model_card(run_dir, cfg, pipe, dtype=dtype, grid_prompts=grid_prompts))
        atomic_write_text(tmp / EXPORT_MARKER, json.dumps({"source": str(run_dir.resolve()), "dtype": dtype}) + "\n")
        if folder.exists():  # a previous export (check_target): moved aside, replaced, then deleted
            check_target(run_dir, folder, overwrite=overwrite)
            old = folder.rename(folder.with_name(f".{folder.name}.old-{tmp.name}"))
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
        folder.chmod(0o755)  # mkdtemp made it owner-only
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[export] {run_dir} → {folder} ({dtype}); load with DiffusionPipeline.from_pretrained({str(folder)!r}, "
        f"trust_remote_code=True)")
    return folder


def _is_run(folder: Path) -> bool:
    """A training run folder: config.yaml beside checkpoints, EMA weights or stats (what `microt2i train` writes)."""
    return (folder / "config.yaml").is_file() and (
        (folder / "ema").is_dir() or (folder / "stats.jsonl").is_file() or any(folder.glob("training-state-*")))


def is_export(folder: Path) -> bool:
    """A folder `export_run` wrote: its marker, or (exports before the marker) the pipeline index naming ours."""
    if (folder / EXPORT_MARKER).is_file():
        return True
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name") == ["pipeline",
                                                                                             "MicroT2IPipeline"]
    except (OSError, ValueError, AttributeError):
        return False


def check_target(run_dir: Path, folder: Path, *, overwrite: bool) -> None:
    """Refuse an export target that would destroy what export did not create: the run itself or a folder above it,
    a folder holding runs, or (even with --overwrite) anything but a previous export."""
    src, dst = run_dir.resolve(), folder.resolve()
    if dst == src or dst in src.parents:
        raise FileExistsError(f"export folder {folder} is the run folder {run_dir} or holds it; export to a new "
                              f"folder, e.g. exports/{run_dir.name}")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"export folder {folder} is a file; choose a folder name")
    if not folder.exists() or not any(folder.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass --overwrite (replaces a previous export only) "
                              f"or choose another folder")
    if not is_export(folder):
        raise FileExistsError(f"{folder} is not a microt2i export (no {EXPORT_MARKER}); --overwrite replaces only a "
                              f"previous export: choose another folder")
    runs = [d for d in (folder, *(Path(r) for r, _, _ in os.walk(folder))) if _is_run(d)]
    if runs:
        raise FileExistsError(f"{folder} holds the training run {runs[0]}; --overwrite never deletes runs: choose "
                              f"another folder")


def _sample_grid(pipe, cfg: RunConfig, path: Path, progress: bool = False) -> list[str]:
    """The run's fixed-prompt, fixed-seed grid (the demo's prompts), sampled with the exported weights."""
    prompts = [s["prompt"] for s in grid_prompts(cfg.eval.grid_size ** 2, cfg.eval.seed)]
    images = pipe(prompts, output_type="np", progress=progress).images
    save_grid(np.asarray(images), path, nrow=cfg.eval.grid_size, upscale=max(1, 128 // images.shape[1]))
    return prompts


def model_card(run_dir: Path, cfg: RunConfig, pipe, *, dtype: str, grid_prompts: list[str]) -> str:
    """The export's README.md: what the model is, how to load it, data, training config, metrics, sample grid."""
    stats = [s for s in read_stats(run_dir / "stats.jsonl") if "loss" in s]
    last = stats[-1] if stats else {}
    d, m, e = cfg.data, cfg.model, cfg.eval
    data = (f"the embedded world ({d.num_images} procedural renders at {d.resolution} px, {d.captions} captions)"
            if d.source == "world" else f"{d.source} at {d.root or d.store_dir} ({d.resolution} px, captions "
            f"{d.caption_file or d.captions})")
    metrics = run_metrics(run_dir)
    rows = [f"| {suite} | {k} | {v:.4g} |" if isinstance(v, float) else f"| {suite} | {k} | {v} |"
            for suite, values in metrics.items() for k, v in values.items() if isinstance(v, (int, float, str))]
    metric_md = "\n".join(["| source | metric | value |", "|---|---|---|", *rows]) if rows else "(no evaluation yet: " \
        "run `microt2i eval geneval RUN` before exporting)"
    grid_md = ("![samples](sample_grid.png)\n\nFixed prompts and seeds, sampled with the exported weights:\n\n"
               + "\n".join(f"{i + 1}. {p}" for i, p in enumerate(grid_prompts))) if grid_prompts else "(no grid)"
    front = yaml.safe_dump({"library_name": "diffusers", "pipeline_tag": "text-to-image",
                            "tags": ["microt2i", m.family, cfg.objective.kind]}, sort_keys=False)
    return f"""---
{front}---

# {cfg.name}

A {m.family} text-to-image diffusion transformer ({count_params(pipe.transformer.net) / 1e6:.2f}M parameters,
EMA weights in {dtype}) trained with microt2i under the `{cfg.objective.kind}` objective on
{data}. Text encoder: `{d.text_encoder}` ({d.text_len} tokens); latent space: `{d.codec}`.
Trained for {last.get("nimg", cfg.train.total_nimg)} images (final loss {last.get("loss", float("nan")):.4g}).

## Use

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("<this folder>", trust_remote_code=True)  # needs `pip install microt2i`
image = pipe({json.dumps((grid_prompts or ["A red star on a grey background."])[0])}, seed=0).images[0]
```

Defaults: sampler `{e.sampler}`, {e.steps} steps, CFG scale {e.grid_scale}; override with `sampler=`,
`num_inference_steps=`, `guidance_scale=`, `seed=`. The same seed gives the same image as `microt2i sample`.

## Metrics

{metric_md}

## Samples

{grid_md}

## Training config

```yaml
{yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)}```
"""
