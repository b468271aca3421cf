"""`microt2i sample`: prompts → images from a run folder or an export (`Source`), written as PNGs, a grid and an
index; the sampling itself is `diffusion.generate`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .diffusion.generate import generate, latent_size
from .io import atomic_write_bytes, atomic_write_text
from .train.artifacts import check_source, load_run
import re
from PIL import Image
from .data.captions import read_text_utf8
from .encoders import TextEncoder, codec_of
from .eval.pages import save_grid
from .pipeline import MicroT2IPipeline


def read_prompts(prompts: list[str] | None = None, prompts_file: str | Path | None = None) -> list[str]:
    """`prompts`, then one prompt per non-empty line of `prompts_file` (.txt), or its "prompt" fields (.jsonl)."""
    out = list(prompts or [])
    if prompts_file:
        p = Path(prompts_file)
        if not p.is_file():
            raise FileNotFoundError(f"prompts file {str(p)!r} does not exist; pass one prompt per line")

        lines = [ln.strip() for ln in read_text_utf8(p).splitlines() if ln.strip()]
        out += [json.loads(ln)["prompt"] for ln in lines] if p.suffix == ".jsonl" else lines
    if not out:
        raise FileNotFoundError('no prompts: pass --prompt "a red star …" (repeatable) or --prompts-file FILE')
    return out


class Source:
    """A run folder's EMA network, text encoder and codec (`run`), or an export's pipeline (`model`), loaded once:
    the CLI draws one call from it, `serve` keeps it for every request."""

    def __init__(self, *, run: str | Path | None = None, model: str | Path | None = None, device="cpu"):
        self.path = check_source(run, model)
        self.is_export, self.device = model is not None, device
        if self.is_export:
            self.pipe = MicroT2IPipeline.from_export(model, device=device)
            self.cfg = self.pipe.run_config()
        else:
            self.cfg, self.net, self.null_tokens, self.null_mask = load_run(run, device=device)
            self.text = TextEncoder(self.cfg.data.text_encoder, max_length=self.cfg.data.text_len, device=device)
            self.codec = codec_of(self.cfg.data, device=device)

    def __call__(self, prompts: list[str], *, n: int = 1, sampler: str | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, seed: int | None = None, batch_size: int = 64,
                 progress: bool = False, first_index: int = 0, size: tuple[int, int] | None = None):
        """(uint8 images [len(prompts)·n, H, W, 3], settings): `n` images per prompt, prompt-major; image k uses the
        noise of (seed, first_index + k). `size` = (height, width): DiT-I at an aspect bucket (`latent_size`)."""
        if n < 1:
            raise ValueError(f"--n {n}: images per prompt must be >= 1")
        if size is not None and self.is_export:
            raise ValueError("--width/--height sample a run folder (--run); an export samples its square size")
        if size is not None:
            latent_size(self.cfg, size)  # a bad size fails before sampling
        repeated = [p for p in prompts for _ in range(n)]
        e = self.cfg.eval
        cfg_scale = e.grid_scale if cfg_scale is None else cfg_scale  # qualitative images: eval.grid_cfg_scale
        work = (f"{len(prompts)} prompt{'s' if len(prompts) > 1 else ''} × {n} seed{'s' if n > 1 else ''}, "
                f"{sampler or e.sampler} {steps or e.steps} steps")
        if self.is_export:
            if first_index:
                raise ValueError("first_index is for run folders; an export samples whole calls")
            images = self.pipe(repeated, num_inference_steps=steps, guidance_scale=cfg_scale, sampler=sampler,
                               seed=seed, batch_size=batch_size, output_type="np", progress=progress).images
        else:
            emb = self.text.encode(repeated)
            images = generate(self.net, self.cfg, emb.tokens, emb.mask, self.null_tokens, self.null_mask,
                              codec=self.codec, sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed,
                              batch_size=batch_size, device=self.device, progress=progress, first_index=first_index,
                              work=work, size=size)
        settings = {"source": str(self.path), "sampler": sampler or e.sampler, "steps": steps or e.steps,
                    "cfg_scale": cfg_scale, "seed": e.seed if seed is None else seed, "images_per_prompt": n}
        if size is not None:
            settings["size"] = list(size)
        return images, settings


def sample_prompts(prompts: list[str], *, run: str | Path | None = None, model: str | Path | None = None,
                   n: int = 1, sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
                   seed: int | None = None, batch_size: int = 64, device="cpu", progress: bool = False,
                   size: tuple[int, int] | None = None):
    """`n` images per prompt (prompt-major: image k is prompt k // n) from a run folder's EMA weights (`run`) or an
    export folder (`model`, `microt2i export`), which give the same images at the same settings. Returns (uint8
    images [N, H, W, 3], the settings used)."""
    if n < 1:  # before loading anything
        raise ValueError(f"--n {n}: images per prompt must be >= 1")
    return Source(run=run, model=model, device=device)(prompts, n=n, sampler=sampler, steps=steps,
                                                       cfg_scale=cfg_scale, seed=seed, batch_size=batch_size,
                                                       progress=progress, size=size)


def clean_samples(out_dir: Path) -> int:
    """Delete what an earlier `write_samples` left in `out_dir` (NNNN.png, grid.png, samples.jsonl); other files stay.
    Only a folder with a samples.jsonl is a samples folder: elsewhere (e.g. a folder of your own pictures) nothing
    is deleted."""
    if not (out_dir / "samples.jsonl").is_file():
        return 0
    old = [p for p in out_dir.iterdir() if p.is_file() and (re.fullmatch(r"\d{4,}\.png", p.name)
                                                            or p.name in ("grid.png", "samples.jsonl"))]
    for p in old:
        p.unlink()
    return len(old)


def write_samples(images: np.ndarray, prompts: list[str], out_dir: str | Path, settings: dict, *,
                  grid: str | Path | None = None, nrow: int = 8, upscale: int = 4,
                  originals: list[str] | None = None) -> Path:
    """One PNG per image (`out_dir/0000.png`, …), a grid (`grid`, default `out_dir/grid.png`) and `samples.jsonl`
    (file, prompt, the prompt before extension, image index = its noise seed's index, settings). The previous call's
    images and grid in `out_dir` are removed first, so the folder and its index hold exactly this call's images."""
    out_dir = Path(out_dir)
    removed = clean_samples(out_dir)
    if removed:
        print(f"[sample] removed the previous call's {removed} files from {out_dir}/")
    n = settings.get("images_per_prompt", 1)
    rows = []
    for k, img in enumerate(images):
        name = f"{k:04d}.png"
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        atomic_write_bytes(out_dir / name, buf.getvalue())
        row = {"file": name, "prompt": prompts[k // n], "index": k}
        if originals is not None:
            row["original_prompt"] = originals[k // n]
        rows.append(row | settings)
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    grid = Path(grid) if grid else out_dir / "grid.png"
    save_grid(images, grid, nrow=min(len(images), nrow), upscale=upscale)
    return grid
