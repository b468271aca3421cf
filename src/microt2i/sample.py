"""Prompts → images: text encoding, seeded noise, a sampler from `diffusion.samplers`, CFG, codec decode."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from .config import RunConfig, check_sampling, load_yaml
from .world.pixels import tensor_to_images
from .diffusion.objectives import build_objective
from .diffusion.guidance import cfg_denoiser
from .diffusion.samplers import count_diverged, get_sampler
from .io import atomic_write_bytes, atomic_write_text
from .models import from_pretrained
from .progress import Progress


def initial_noise(n: int, shape: tuple[int, ...], sigma_max: float, seed: int, device,
                  first_index: int = 0) -> torch.Tensor:
    """Image i's noise depends only on (seed, i): a grid is the same whatever the batch size. `first_index` numbers
    the images from there, so a long list sampled in chunks equals the list sampled at once."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i])
                        .generate_state(1)[0]))) for i in range(first_index, first_index + n)]
    return torch.stack(out).to(device, torch.float64) * sigma_max


@torch.no_grad()
def generate(net, cfg: RunConfig, text_tokens, text_mask, null_tokens, null_mask, *, codec, sampler: str | None = None,
             steps: int | None = None, cfg_scale: float | None = None, seed: int | None = None,
             batch_size: int = 64, device="cpu", progress: bool = False, first_index: int = 0,
             desc: str = "sample", work: str = "") -> np.ndarray:
    """Sample one image per caption embedding; returns uint8 [N, H, W, 3].

    `eval.clamp` clips x̂0 in every step; `eval.eta` > 0 (ddim only) draws its fresh noise from a generator seeded by
    (seed, first image of the batch), so those samples also depend on `batch_size`. `progress` reports every sampler step
    (progress.py: a bar with images/s and ETA on a terminal, status lines in a log). Image k of the call uses the noise
    of (seed, first_index + k), so one image of a larger call can be drawn alone (serve.py)."""
    e = cfg.eval
    name = sampler or e.sampler
    sampler_fn = get_sampler(name)
    if e.eta and name != "ddim":
        raise ValueError(f"eval.eta={e.eta} applies to the ddim sampler only, not {name!r}; set eval.eta=0")
    steps = e.steps if steps is None else steps
    scale = e.cfg_scale if cfg_scale is None else cfg_scale
    check_sampling(steps, scale)
    seed = e.seed if seed is None else seed
    m = cfg.model
    objective = build_objective(cfg.objective)
    net = net.to(device).eval()
    sigmas = objective.sampling_sigmas(steps, device=device)
    n = text_tokens.shape[0]
    noise = initial_noise(n, (m.in_channels, m.input_size, m.input_size), float(sigmas[0]), seed, device, first_index)
    images = []
    bar = Progress(n, desc=desc, unit="img", enabled=progress, decimals=1,
                   work=work or f"{name} {steps} steps, CFG {scale:g}, batches of {min(batch_size, n)}")
    n_steps = len(sigmas) - 1
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        b = noise[sl].shape[0]
        precond = objective.denoiser(net)  # one per trajectory: a self-conditioning network carries state in it
        denoise = cfg_denoiser(precond, text_tokens[sl].to(device).float(), text_mask[sl].to(device),
                               null_tokens.to(device).float().expand(b, -1, -1), null_mask.to(device).expand(b, -1), scale)
        opts = {"clamp": e.clamp} if e.clamp else {}
        if e.eta:
            gen_seed = int(np.random.SeedSequence([seed, first_index + i, 1]).generate_state(1)[0])
            opts.update(eta=e.eta, generator=torch.Generator().manual_seed(gen_seed))
        x0 = sampler_fn(denoise, noise[sl], sigmas, callback=lambda _, b=b: bar.update(b / n_steps), **opts)
        bad = count_diverged(x0)
        if bad:  # a diverged network: refuse rather than write black squares or score them
            raise FloatingPointError(f"the network produced NaN / Inf (or overflowing) images for {bad} of {b} samples: "
                                     f"its weights diverged in training. Re-train it with a lower train.lr (it "
                                     f"resumes from the newest finite checkpoint)")
        images.append(tensor_to_images(codec.decode(x0.float())))
    bar.close()
    return np.concatenate(images)


def load_run(run_dir: str | Path, device="cpu"):
    """(config, EMA network, null tokens, null mask) of a finished run folder."""
    run_dir = check_source(run=run_dir)
    null = load_file(str(run_dir / "null_text.safetensors"))
    return (load_yaml(run_dir / "config.yaml"), from_pretrained(run_dir / "ema", device=device),
            null["tokens"], null["mask"].bool())


def check_source(run: str | Path | None = None, model: str | Path | None = None) -> Path:
    """The run folder (with its final EMA weights) or export folder to sample from; a clear error otherwise."""
    if (run is None) == (model is None):
        from .config import ConfigError

        raise ConfigError("sample from exactly one of a run folder (--run) or an exported model folder (--model)")
    if run is not None:
        if not (Path(run) / "ema" / "model.safetensors").exists():
            raise FileNotFoundError(f"{run} has no ema/model.safetensors; train it to the end first (`microt2i train`)")
        return Path(run)
    if not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(f"{model} has no model_index.json: not an export (`microt2i export RUN {model}`)")
    return Path(model)


def read_prompts(prompts: list[str] | None = None, prompts_file: str | Path | None = None) -> list[str]:
    """`prompts`, then one prompt per non-empty line of `prompts_file` (.txt), or its "prompt" fields (.jsonl)."""
    out = list(prompts or [])
    if prompts_file:
        p = Path(prompts_file)
        if not p.is_file():
            raise FileNotFoundError(f"prompts file {str(p)!r} does not exist; pass one prompt per line")
        from .data.captions import read_text_utf8

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
            from .pipeline import MicroT2IPipeline

            self.pipe = MicroT2IPipeline.from_export(model, device=device)
            self.cfg = self.pipe.run_config()
        else:
            from .encoders import TextEncoder, codec_of

            self.cfg, self.net, self.null_tokens, self.null_mask = load_run(run, device=device)
            self.text = TextEncoder(self.cfg.data.text_encoder, max_length=self.cfg.data.text_len, device=device)
            self.codec = codec_of(self.cfg.data, device=device)

    def __call__(self, prompts: list[str], *, n: int = 1, sampler: str | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, seed: int | None = None, batch_size: int = 64,
                 progress: bool = False, first_index: int = 0):
        """(uint8 images [len(prompts)·n, H, W, 3], settings): `n` images per prompt, prompt-major; image k uses the
        noise of (seed, first_index + k)."""
        if n < 1:
            raise ValueError(f"--n {n}: images per prompt must be >= 1")
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
                              work=work)
        settings = {"source": str(self.path), "sampler": sampler or e.sampler, "steps": steps or e.steps,
                    "cfg_scale": cfg_scale, "seed": e.seed if seed is None else seed, "images_per_prompt": n}
        return images, settings


def sample_prompts(prompts: list[str], *, run: str | Path | None = None, model: str | Path | None = None,
                   n: int = 1, sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
                   seed: int | None = None, batch_size: int = 64, device="cpu", progress: bool = False):
    """`n` images per prompt (prompt-major: image k is prompt k // n) from a run folder's EMA weights (`run`) or an
    export folder (`model`, `microt2i export`), which give the same images at the same settings. Returns (uint8
    images [N, H, W, 3], the settings used)."""
    if n < 1:  # before loading anything
        raise ValueError(f"--n {n}: images per prompt must be >= 1")
    return Source(run=run, model=model, device=device)(prompts, n=n, sampler=sampler, steps=steps,
                                                       cfg_scale=cfg_scale, seed=seed, batch_size=batch_size,
                                                       progress=progress)


def clean_samples(out_dir: Path) -> int:
    """Delete what an earlier `write_samples` left in `out_dir` (NNNN.png, grid.png, samples.jsonl); other files stay.
    Only a folder with a samples.jsonl is a samples folder: elsewhere (e.g. a folder of your own pictures) nothing
    is deleted."""
    import re

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
    from PIL import Image

    from .report import save_grid

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
