"""diffusers interop: `MicroT2ITransformer` (a `ModelMixin` + `ConfigMixin` around any microt2i network) and
`MicroT2IPipeline` (a `DiffusionPipeline`: transformer, text encoder + tokenizer, optional VAE, sampler settings).

The networks in `models/` stay plain `nn.Module`s; the wrapper's registered config is the model config dict
(`models.config_dict`), so `save_pretrained` / `from_pretrained` rebuild the same network with `models.build`.
It also carries the unconditional caption CFG needs (`null_tokens`, `null_mask` buffers). Sampling is ours:
`__call__` runs `diffusion.generate.generate` (the samplers of `diffusion/samplers.py`, per-image seeds), so a pipeline
loaded from an export reproduces `microt2i sample` bit for bit at a fixed seed.

Load an export (`microt2i export RUN FOLDER`) offline with
    DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)
The folder's `pipeline.py` only imports this module (diffusers asks for `trust_remote_code` for any pipeline
class outside diffusers); microt2i must be installed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from .config import ConfigError, EvalConfig, ModelConfig, ObjectiveConfig, RunConfig, from_dict
from .encoders.codec import DiffusersVAE, PixelCodec
from .encoders.text import TextEncoder, Truncation, normalizes_pooled
from .models import FORMAT_VERSION, config_dict, build
import json
from PIL import Image
from .diffusion.generate import generate
from .diffusion.samplers import clamped
from .schedulers import run_scheduler

SAMPLING_KEYS = ("sampler", "steps", "cfg_scale", "clamp", "eta", "seed")


class MicroT2ITransformer(ModelMixin, ConfigMixin):
    """A microt2i network (`self.net`, built from the `model` config dict) plus the unconditional caption."""

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, model: dict | None = None, text_len: int = 64):
        super().__init__()
        d = dict(model or {})
        version = d.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(f"transformer config has format_version={version!r}; this microt2i reads {FORMAT_VERSION}")
        if not d:
            raise ConfigError("MicroT2ITransformer needs `model`, a model config dict (models.config_dict)")
        self.net = build(from_dict(ModelConfig, d, "model"))
        self.register_buffer("null_tokens", torch.zeros(1, text_len, self.net.config.text_dim))
        self.register_buffer("null_mask", torch.zeros(1, text_len, dtype=torch.bool))

    @classmethod
    def from_network(cls, net: torch.nn.Module, null_tokens: torch.Tensor, null_mask: torch.Tensor):
        """Wrap a trained network (weights copied) with its unconditional caption [1, L, D] / [1, L]."""
        out = cls(model=config_dict(net.config), text_len=null_mask.shape[-1])
        out.net.load_state_dict(net.state_dict(), strict=True)
        out.null_tokens.copy_(null_tokens.reshape(out.null_tokens.shape))
        out.null_mask.copy_(null_mask.reshape(out.null_mask.shape).bool())
        return out.eval()

    @property
    def model_config(self) -> ModelConfig:
        return self.net.config

    def forward(self, x, noise_cond, text_tokens, text_mask, **kwargs):
        """The wrapped network's forward (DESIGN §3 model contract)."""
        return self.net(x, noise_cond, text_tokens, text_mask, **kwargs)


class _LoadedTextEncoder(TextEncoder):
    """`TextEncoder` over an already loaded model and tokenizer (pipeline components), so captions are encoded by
    the same code as in training and `microt2i sample`."""

    def __init__(self, model, tokenizer, max_length: int):
        self.name, self.kind = getattr(model, "name_or_path", "text_encoder"), model.config.model_type
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length
        folder = getattr(model, "name_or_path", "")
        self.normalize_pooled = bool(folder) and normalizes_pooled(Path(folder))
        self.device, self.dtype, self.batch_size = model.device, model.dtype, 64
        self.storage_dtype, self.log, self.truncation, self._empty = torch.float32, None, Truncation(), None


class _LoadedVAE(DiffusersVAE):
    """`DiffusersVAE` over an already loaded `AutoencoderKL` with the run's latent normalisation x = (z − shift)·scale."""

    def __init__(self, vae, shift, scale, batch_size: int = 16):
        self.vae, self.name = vae.eval(), "pipeline-vae"
        self.channels, self.factor = vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1)
        self.sample, self.device, self.dtype, self.batch_size = False, vae.device, vae.dtype, batch_size
        self.shift = torch.tensor(shift, dtype=torch.float64)
        self.scale = torch.tensor(scale, dtype=torch.float64)


@dataclass
class MicroT2IPipelineOutput(BaseOutput):
    images: list | np.ndarray  # PIL images, or uint8 [N, H, W, 3] with output_type="np"


class MicroT2IPipeline(DiffusionPipeline):
    """Prompts → images with a microt2i network. Settings (registered, saved in model_index.json): `objective`
    (an `ObjectiveConfig` dict), `sampling` (sampler, steps, cfg_scale, clamp, eta, seed) and `codec`
    ({"kind": "pixel"} or {"kind": "vae", "shift": [...], "scale": [...]}), `text_len` tokens per caption."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "scheduler"]

    def __init__(self, transformer: MicroT2ITransformer, tokenizer, text_encoder, vae=None, scheduler=None, *,
                 objective: dict | None = None, sampling: dict | None = None, codec: dict | None = None,
                 text_len: int = 64):
        super().__init__()
        self.register_modules(transformer=transformer, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                              scheduler=scheduler)
        self._own_scheduler = scheduler  # the export's: our sampler runs (bit-exact); another one set later runs itself
        codec = dict(codec or {"kind": "pixel"})
        if (codec["kind"] == "vae") != (vae is not None):
            raise ConfigError(f"codec {codec['kind']!r} and vae={type(vae).__name__}: a 'vae' codec needs the VAE "
                              f"component and a 'pixel' one none")
        self.register_to_config(objective=dict(objective or dataclasses.asdict(ObjectiveConfig())),
                                sampling=dict(sampling or {}), codec=codec, text_len=text_len)

    @classmethod
    def from_export(cls, folder: str | Path, *, dtype: torch.dtype | None = None, device="cpu") -> MicroT2IPipeline:
        """Load an export without executing its pipeline.py (no `trust_remote_code`): each component by the class
        model_index.json names, from transformers / diffusers / this module only. Same result as
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`."""
        import diffusers  # heavy (seconds to import): only when a diffusers model is used
        import transformers  # heavy (seconds to import): only when this model is loaded

        folder = Path(folder)
        if not (folder / "model_index.json").is_file() or not (folder / "transformer").is_dir():
            raise FileNotFoundError(f"{folder} is not a microt2i export (no model_index.json / transformer/); "
                                    f"write one with `microt2i export RUN {folder}`")
        index = json.loads((folder / "model_index.json").read_text())
        libraries = {"transformers": transformers, "diffusers": diffusers}
        parts = {}
        for name in ("tokenizer", "text_encoder", "vae", "scheduler"):
            library, class_name = index.get(name) or (None, None)
            if library is None:
                parts[name] = None
                continue
            if library not in libraries:
                raise ConfigError(f"{folder}/model_index.json: {name} comes from {library!r}; only transformers and "
                                  f"diffusers components load without trust_remote_code")
            kw = {} if name in ("tokenizer", "scheduler") or dtype is None else {"dtype": dtype}
            if name == "vae":
                kw["low_cpu_mem_usage"] = False  # load directly (no accelerate needed)
            parts[name] = getattr(libraries[library], class_name).from_pretrained(folder / name, **kw)
        kw = {"low_cpu_mem_usage": False} | ({} if dtype is None else {"dtype": dtype})
        transformer = MicroT2ITransformer.from_pretrained(folder / "transformer", **kw)
        settings = {k: index[k] for k in ("objective", "sampling", "codec", "text_len") if k in index}
        return cls(transformer, parts["tokenizer"], parts["text_encoder"], parts["vae"], parts["scheduler"],
                   **settings).to(device)

    def run_config(self) -> RunConfig:
        """The `RunConfig` `diffusion.generate.generate` needs: the transformer's model, the objective and sampling settings."""
        unknown = sorted(set(self.config.sampling) - set(SAMPLING_KEYS))
        if unknown:
            raise ConfigError(f"pipeline sampling settings {unknown} are unknown; valid: {', '.join(SAMPLING_KEYS)}")
        return RunConfig(model=self.transformer.model_config,
                         objective=from_dict(ObjectiveConfig, self.config.objective, "objective"),
                         eval=EvalConfig(**self.config.sampling))

    def codec(self):
        c = self.config.codec
        return PixelCodec() if c["kind"] == "pixel" else _LoadedVAE(self.vae, c["shift"], c["scale"])

    def encode_prompt(self, prompts: list[str]):
        """Token states [B, L, D] and mask [B, L] of the prompts (TextEncoder.encode on the loaded components)."""
        return _LoadedTextEncoder(self.text_encoder, self.tokenizer, self.config.text_len).encode(prompts)

    def _scheduler_fn(self, sampler: str | None):
        """A sampler function running `pipe.scheduler` when the user replaced the export's one (and asked for no
        sampler by name); None = our sampler (schedulers.py: the equivalences and the refusals)."""
        scheduler = getattr(self, "scheduler", None)
        if sampler is not None or scheduler is None or scheduler is self._own_scheduler:
            return None
        return lambda denoise, x, sigmas, callback=None, clamp=None: run_scheduler(
            copy.deepcopy(scheduler), clamped(denoise, clamp), x, sigmas, callback=callback)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, num_images_per_prompt: int = 1,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 sampler: str | None = None, seed: int | None = None, batch_size: int = 64,
                 output_type: str = "pil", progress: bool = False) -> MicroT2IPipelineOutput:
        """Sample `num_images_per_prompt` images per prompt. Image i of the call uses the noise of (seed, i)
        (`diffusion.generate.initial_noise`), so results do not depend on `batch_size`. Unset options come from `sampling`."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or num_images_per_prompt < 1:
            raise ValueError("pass at least one prompt and num_images_per_prompt >= 1")
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type={output_type!r} must be 'pil' or 'np'")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        emb = self.encode_prompt(prompts)
        t = self.transformer
        device = t.device
        dtype = t.dtype
        # weights exported in bf16 / fp16 run under autocast; the sampler state stays float64 (samplers.py)
        amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with amp:
            images = generate(t.net, self.run_config(), emb.tokens, emb.mask, t.null_tokens.float(), t.null_mask,
                              codec=self.codec(), sampler=sampler, steps=num_inference_steps,
                              cfg_scale=guidance_scale, seed=seed, batch_size=batch_size, device=device,
                              progress=progress, sampler_fn=self._scheduler_fn(sampler))
        if output_type == "pil":
            images = [Image.fromarray(im) for im in images]
        return MicroT2IPipelineOutput(images=images)
