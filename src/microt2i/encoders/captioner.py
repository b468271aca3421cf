"""Captioners: images (+ metadata) → captions, behind one protocol (ImageNet-T2I §2.1 "text augmentation", App. D).

- `TemplateCaptioner`: AIO captions "An image of <class>" from ImageNet synsets, class indices, names or world scenes.
- `WorldCaptioner`: the embedded world's oracle long captions, read off scene specs (exact by construction).
- `LlavaCaptioner`: LLaVA-NeXT (`llava-hf/llama3-llava-next-8b-hf`), "Describe this image", 200 new tokens, chat
  prefix stripped, cut at the last full sentence (T2I-ImageNet's captioning code). Image-token pruning (App. D): LLaVA-NeXT encodes
  the whole image plus the anyres crops (2×2 at 256², ≈2.9k image tokens); we keep only the whole-image tokens,
  and for CM1/4–1/16 composites also the tokens of the crop that holds the pasted image, with the CutMix prompt.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..world.scenes import Scene, aio_caption, article, long_caption
from ..progress import Progress
from .hub import resolve_pretrained
import time
from PIL import Image
from pathlib import Path
from ..data.captions import append_captions, read_captions, repair_tail
from ..data.synsets import imagenet_classes
from ..world import render
from ..world.scenes import CLASSES, sample_scene

LLAVA_HUB_ID = "llava-hf/llama3-llava-next-8b-hf"
DEFAULT_PROMPT = "Describe this image"
# ImageNet-T2I App. D, "Captioning CutMix images" (one prompt for CM1/2 and CM1/4–1/16).
COMPOSITE_PROMPT = (
    "Describe this image. Consider all the objects in the picture. Describe them, describe their position and "
    "their relation. Do not consider the image as a composite of images. The image is a single scene image"
)
SMALL_PASTE_AREA = 0.3  # pasted box ≤ 30 % of the image: CM1/4, 1/9, 1/16 (CM1/2 pastes half the image)


@runtime_checkable
class Captioner(Protocol):
    name: str

    def caption(self, images: Sequence[Any], *, metas: Sequence[Any] | None = None) -> list[str]:
        """One caption per image; `metas` carries what a captioner needs besides pixels (labels, scenes, boxes)."""
        ...


def _metas(images: Sequence[Any], metas: Sequence[Any] | None, who: str, what: str) -> list[Any]:
    if metas is None:
        raise ValueError(f"{who} needs metas=[{what}, ...], one per image")
    metas = list(metas)
    if images is not None and len(images) and len(metas) != len(images):
        raise ValueError(f"{who}: got {len(images)} images but {len(metas)} metas; pass one meta per image")
    return metas


# ------------------------------------------------------------------------------------------------ AIO template


class TemplateCaptioner:
    """AIO captions "An image of a <class>" (ImageNet-T2I §2.1's baseline) — the world's `aio_caption` wording.

    `classes`: "imagenet" (the 1000 synset names), "world" (the world's classes) or a list of names. A meta is a
    class index, a synset id ("n01440764"), a class name, or a world `Scene` (its main object's class)."""

    name = "template"

    def __init__(self, classes: str | Sequence[str] = "imagenet"):
        self._synsets: dict[str, str] = {}
        if classes == "imagenet":
            pairs = imagenet_classes()
            self.classes = [name for _, name in pairs]
            self._synsets = dict(pairs)
        elif classes == "world":
            self.classes = list(CLASSES)
        elif isinstance(classes, str):
            raise ValueError(f"classes={classes!r}: pass 'imagenet', 'world' or a list of class names")
        else:
            self.classes = list(classes)

    @staticmethod
    def for_name(name: str) -> str:
        return f"An image of {article(name.lower())} {name}"

    def label_name(self, meta: Any) -> str:
        if isinstance(meta, Scene):
            return meta.main.cls
        if isinstance(meta, int | np.integer):
            if not 0 <= int(meta) < len(self.classes):
                raise ValueError(f"class index {meta} is outside 0..{len(self.classes) - 1}")
            return self.classes[int(meta)]
        if isinstance(meta, str):
            return self._synsets.get(meta, meta)
        raise TypeError(f"TemplateCaptioner meta must be a class index, synset id, name or Scene, got {meta!r:.60}")

    def caption(self, images: Sequence[Any] | None = None, *, metas: Sequence[Any] | None = None) -> list[str]:
        metas = _metas(images, metas, "TemplateCaptioner", "class index | synset | name | Scene")
        return [aio_caption(m) if isinstance(m, Scene) else self.for_name(self.label_name(m)) for m in metas]


# ------------------------------------------------------------------------------------------------ world oracle


class WorldCaptioner:
    """The world's oracle long captions (LLaVA-style, every statement true of the scene); metas = `Scene`s.

    With `seed=None` the wording is a fixed function of the scene; a seed draws another, equally true wording."""

    name = "world"

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def caption(self, images: Sequence[Any] | None = None, *, metas: Sequence[Any] | None = None) -> list[str]:
        scenes = _metas(images, metas, "WorldCaptioner", "Scene")
        out = []
        for s in scenes:
            if not isinstance(s, Scene):
                raise TypeError(f"WorldCaptioner metas must be world Scenes, got {type(s).__name__}")
            rng = None if self.seed is None else np.random.default_rng([self.seed, zlib.crc32(repr(s).encode())])
            out.append(long_caption(s, rng))
        return out


# ------------------------------------------------------------------------------------------------ post-processing

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_ROLE_PREFIX = re.compile(r"^\s*(?:assistant|ASSISTANT|Assistant)\s*:?\s*(?:\n|$)")
_REPLY_MARKERS = ("<|end_header_id|>", "ASSISTANT:", "[/INST]")


def clean_caption(text: str, prompt: str | None = None) -> str:
    """Strip the chat prefix, join lines, cut at the last full sentence (T2I-ImageNet's captioning code).

    A decoded full sequence (prompt + reply) is cut after the first reply marker that follows the prompt; a reply
    that opens with an "assistant" role line loses that line. Text without any sentence end is kept whole."""
    if prompt and prompt in text:
        rest = text[text.index(prompt) + len(prompt) :]
        cuts = [rest.index(m) + len(m) for m in _REPLY_MARKERS if m in rest]
        m = re.search(r"\bassistant\b\s*:?\s*\n", rest, flags=re.I)
        cuts += [m.end()] if m else []
        text = rest[min(cuts) :] if cuts else rest
    text = _ROLE_PREFIX.sub("", text)
    text = " ".join(text.split())
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()] if ends else text


# ------------------------------------------------------------------------------------------------ LLaVA-NeXT


def anyres_patch_for_box(
    image_hw: tuple[int, int], box: Sequence[float], pinpoints: Sequence[Sequence[int]], crop: int
) -> int:
    """Index (row-major, 0-based, base image excluded) of the anyres crop that overlaps the pasted box most.

    The image is resized to fit the best grid resolution (aspect kept, ceil) and centre-padded, then cut into
    `crop`-sized tiles — the LLaVA-NeXT image processor's layout. `box` is [x1, y1, x2, y2] in image pixels."""
    # heavy (seconds to import): only when this model is loaded
    from transformers.image_processing_utils import select_best_resolution

    h, w = image_hw
    ph, pw = select_best_resolution((h, w), [list(p) for p in pinpoints])
    if pw / w < ph / h:
        nw, nh = pw, min(math.ceil(h * pw / w), ph)
    else:
        nh, nw = ph, min(math.ceil(w * ph / h), pw)
    ox, oy = (pw - nw) // 2, (ph - nh) // 2
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"box {list(box)} is not [x1, y1, x2, y2] inside the {w}x{h} image")
    bx1, bx2 = ox + x1 * nw / w, ox + x2 * nw / w
    by1, by2 = oy + y1 * nh / h, oy + y2 * nh / h
    rows, cols = ph // crop, pw // crop
    def overlap(lo: float, hi: float, k: int) -> float:
        return max(0.0, min(hi, (k + 1) * crop) - max(lo, k * crop))

    overlaps = [overlap(bx1, bx2, c) * overlap(by1, by2, r) for r in range(rows) for c in range(cols)]
    return int(np.argmax(overlaps))


def _meta_box(meta: Any) -> tuple[list[float] | None, str | None]:
    if meta is None:
        return None, None
    # a dict or an augment.cutmix.CutMixBox: "box" in pixels, "setting"/"pattern" = "1/2", "CM1/4", ...
    get = meta.get if isinstance(meta, dict) else lambda k: getattr(meta, k, None)
    return get("box"), get("setting") or get("pattern")


class LlavaCaptioner:
    """LLaVA-NeXT captions with image-token pruning (ImageNet-T2I App. D).

    metas (optional, one per image): None for a plain image, or a composite's {"box": [x1, y1, x2, y2] of the
    pasted image in pixels, "pattern": "1/2" | "1/4" | ...} (augment.cutmix's meta or CutMixBox; "setting" also
    works). Any box switches to the CutMix prompt; a small paste
    (setting other than 1/2, or area ≤ 30 % when no setting is given) also keeps the crop holding it.
    `prune=False` feeds all anyres crops, exactly as `transformers` does."""

    name = "llava"

    def __init__(
        self,
        model: str = LLAVA_HUB_ID,
        *,
        prompt: str = DEFAULT_PROMPT,
        composite_prompt: str = COMPOSITE_PROMPT,
        max_new_tokens: int = 200,
        prune: bool = True,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        generate_kwargs: dict | None = None,
    ):
        # heavy (seconds to import): only when this model is loaded
        from transformers import AutoProcessor, LlavaNextForConditionalGeneration

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)  # bf16 on GPU (T2I-ImageNet's captioning code)
        folder = resolve_pretrained(model, what="LLaVA-NeXT captioner")
        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = LlavaNextForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, use_safetensors=True).to(device).eval()
        self.tokenizer = self.processor.tokenizer
        self.config = self.model.config
        self.prompt, self.composite_prompt, self.max_new_tokens = prompt, composite_prompt, max_new_tokens
        self.prune, self.batch_size, self.device, self.dtype = prune, batch_size, device, dtype
        self.generate_kwargs = {"do_sample": False, **(generate_kwargs or {})}
        vc = self.config.vision_config
        self.crop, self.grid = vc.image_size, vc.image_size // vc.patch_size  # crop side; tokens per crop side
        self.name = f"llava:{model}"

    # -- prompts and images

    def prompt_text(self, composite: bool = False) -> str:
        """The chat-formatted prompt with one image placeholder (the checkpoint's chat template when it has one)."""
        question = self.composite_prompt if composite else self.prompt
        if getattr(self.processor, "chat_template", None):
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(conv, add_generation_prompt=True)
        return f"USER: <image>\n{question} ASSISTANT:"

    @staticmethod
    def _pil(image):
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"images must be PIL images or uint8 [H, W, 3] arrays, got {a.dtype} {a.shape}")
        return Image.fromarray(a)

    def _plan(self, image, meta) -> tuple[bool, int | None]:
        """(composite prompt?, anyres crop index to keep or None) for one image."""
        box, setting = _meta_box(meta)
        if box is None:
            return False, None
        w, h = image.size
        small = (
            setting.replace("CM", "").strip() != "1/2"
            if setting
            else (box[2] - box[0]) * (box[3] - box[1]) <= SMALL_PASTE_AREA * w * h
        )
        patch = anyres_patch_for_box((h, w), box, self.config.image_grid_pinpoints, self.crop) if small else None
        return True, patch

    def pruned_token_count(self, patch: int | None) -> int:
        """Image tokens after pruning: the whole-image grid + a newline (LLaVA-NeXT's single-crop layout), or the
        whole-image grid + one crop's grid with a newline closing each of its rows."""
        base = self.grid * self.grid + (self.config.vision_feature_select_strategy == "full")
        return base + 1 if patch is None else base + self.grid * (self.grid + 1)

    def image_token_counts(self, image, meta=None) -> tuple[int, int]:
        """(image tokens transformers' LLaVA-NeXT uses, tokens after our pruning) for one image."""
        image = self._pil(image)
        composite, patch = self._plan(image, meta)
        ids = self.processor(images=[image], text=[self.prompt_text(composite)], return_tensors="pt")["input_ids"]
        return int((ids == self.config.image_token_id).sum()), self.pruned_token_count(patch)

    # -- features

    def _core(self):
        return getattr(self.model, "model", self.model)  # transformers ≥ 4.52 nests vision tower + LM in .model

    def _crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """[N, 3, s, s] crops → projected vision tokens [N, T, D], as LLaVA-NeXT selects them."""
        core, cfg = self._core(), self.config
        hidden = core.vision_tower(crops.to(self.device, self.dtype), output_hidden_states=True).hidden_states
        layer = cfg.vision_feature_layer
        feats = hidden[layer] if isinstance(layer, int) else torch.cat([hidden[i] for i in layer], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]  # drop CLS
        return core.multi_modal_projector(feats)

    def _image_features(self, pixel_values, image_sizes, patches: list[int | None]) -> list[torch.Tensor]:
        core = self._core()
        if not self.prune:
            out = core.get_image_features(pixel_values.to(self.device, self.dtype), image_sizes.to(self.device))
            return list(out.pooler_output if hasattr(out, "pooler_output") else out)
        keep = [[0] if p is None else [0, 1 + p] for p in patches]
        crops = torch.cat([pixel_values[i, k] for i, k in enumerate(keep)])
        feats = self._crop_features(crops).split([len(k) for k in keep])
        newline = core.image_newline.to(self.dtype)
        out = []
        for f, p in zip(feats, patches):
            if p is None:
                out.append(torch.cat([f[0], newline[None]]))
            else:  # base tokens, then the crop's rows, each closed by the newline token (HF's anyres packing)
                g = f[1].view(self.grid, self.grid, -1)
                rows = torch.cat([g, newline.expand(self.grid, 1, -1)], dim=1).flatten(0, 1)
                out.append(torch.cat([f[0], rows]))
        return out

    # -- generation

    @torch.no_grad()
    def generate_ids(self, images, metas) -> tuple[torch.Tensor, list[str]]:
        """New token ids [B, T] for one batch of PIL images (left-padded, pruned image tokens) and the prompts."""
        plans = [self._plan(im, m) for im, m in zip(images, metas)]
        processed = self.processor.image_processor(images, return_tensors="pt")
        feats = self._image_features(processed["pixel_values"], processed["image_sizes"], [p for _, p in plans])
        embed = self.model.get_input_embeddings()
        image_id = self.config.image_token_id
        seqs, prompts = [], []
        for (composite, _), f in zip(plans, feats):
            prompt = self.prompt_text(composite)
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"][0]  # as LlavaNextProcessor tokenises
            at = (ids == image_id).nonzero().flatten()
            if len(at) != 1:
                raise ValueError(f"the prompt must hold exactly one image placeholder, found {len(at)}: {prompt!r}")
            i = int(at[0])
            e = embed(ids.to(self.device))
            seqs.append(torch.cat([e[:i], f.to(e.dtype), e[i + 1 :]]))
            prompts.append(prompt)
        width = max(len(s) for s in seqs)
        inputs = torch.zeros(len(seqs), width, seqs[0].shape[-1], device=self.device, dtype=seqs[0].dtype)
        mask = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        for b, s in enumerate(seqs):  # left padding, as decoder-only generation needs
            inputs[b, width - len(s) :], mask[b, width - len(s) :] = s, 1
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(
            inputs_embeds=inputs, attention_mask=mask, max_new_tokens=self.max_new_tokens, pad_token_id=pad,
            **self.generate_kwargs,
        )  # fmt: skip
        return out, prompts

    def _caption_batch(self, images, metas) -> list[str]:
        ids, prompts = self.generate_ids(images, metas)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [clean_caption(t, p) for t, p in zip(texts, prompts)]

    def caption(self, images: Sequence[Any], *, metas: Sequence[Any] | None = None) -> list[str]:
        images = [self._pil(im) for im in images]
        metas = list(metas) if metas is not None else [None] * len(images)
        if len(metas) != len(images):
            raise ValueError(f"LlavaCaptioner: got {len(images)} images but {len(metas)} metas")
        out = []
        for i in range(0, len(images), self.batch_size):
            out += self._caption_batch(images[i : i + self.batch_size], metas[i : i + self.batch_size])
        return out


def make_captioner(kind: str, **kwargs) -> Captioner:
    """'template' | 'aio' (AIO), 'world' (oracle long captions), 'llava' (LLaVA-NeXT; model=id or folder)."""
    if kind in ("template", "aio"):
        return TemplateCaptioner(**kwargs)
    if kind == "world":
        return WorldCaptioner(**kwargs)
    if kind == "llava":
        return LlavaCaptioner(**kwargs)
    raise ValueError(f"captioner {kind!r} is not one of template, aio, world, llava")


# ------------------------------------------------------------------------------------------------ captioning job

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def world_source(n: int, *, seed: int = 0, resolution: int = 64, max_objects: int = 3):
    """Keys `world-<seed>/<i>` and a loader (key → (image, scene)); item i is make_dataset's item i."""
    keys = [f"world-{seed}/{i:07d}" for i in range(n)]

    def load(key: str):
        i = int(key.rsplit("/", 1)[1])
        scene = sample_scene(np.random.default_rng([seed, i]), max_objects=max_objects)
        return render(scene, resolution), scene

    return keys, load


def folder_source(root, *, boxes: dict[str, dict] | None = None):
    """Keys = image paths relative to `root` (sorted, POSIX); loader → (PIL image, meta). The meta is the parent
    folder name (an ImageNet synset or a class name, for AIO captions) unless `boxes` has an entry for the key
    ({"box": [...], "setting": ...} of a CutMix composite, for the LLaVA CutMix prompt)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not keys:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")

    def load(key: str):
        with Image.open(root / key) as im:
            image = im.convert("RGB")
        meta = (boxes or {}).get(key)
        return image, meta if meta is not None else (Path(key).parent.name or None)

    return keys, load


def shard_path(out, num_shards: int, shard_index: int):
    """Where shard `shard_index` of `num_shards` writes: `out` itself, or `<stem>.shard00003-of-00008<suffix>`."""
    out = Path(out)
    if num_shards == 1:
        return out
    return out.with_name(f"{out.stem}.shard{shard_index:05d}-of-{num_shards:05d}{out.suffix}")


def run_caption_job(
    keys: Sequence[str],
    load,
    captioner: Captioner,
    out,
    *,
    num_shards: int = 1,
    shard_index: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    log=print,
) -> dict:
    """Caption this shard's keys (every num_shards-th, from shard_index) into a caption file, resumably.

    Keys already in the file are skipped; each batch is appended crash-safely (`append_captions`) after it is
    captioned, so a killed job resumes without duplicated or lost rows. Images that fail to load are reported
    and left out (a restart retries them)."""
    if not (num_shards >= 1 and 0 <= shard_index < num_shards):
        raise ValueError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    path = shard_path(out, num_shards, shard_index)
    mine = list(keys)[shard_index::num_shards]
    torn = repair_tail(path)
    if torn:
        log(f"[caption] cut a torn last row ({torn} bytes) left by an interrupted run in {path}")
    done = set(read_captions(path)) if path.exists() else set()
    todo = [k for k in mine if k not in done]
    log(f"[caption] {captioner.name}: shard {shard_index + 1}/{num_shards} has {len(mine)} images, "
        f"{len(mine) - len(todo)} already captioned → {path}")  # fmt: skip
    failed: list[str] = []
    t0, written = time.perf_counter(), 0
    bar = Progress(len(mine), initial=len(mine) - len(todo), desc="caption", unit="img", enabled=progress,
                   work=f"{captioner.name}, batches of {batch_size}")
    try:
        for i in range(0, len(todo), batch_size):
            batch_keys, images, metas = [], [], []
            for key in todo[i : i + batch_size]:
                try:
                    image, meta = load(key)
                except Exception as e:  # corrupt / unreadable file: report it, keep going
                    failed.append(key)
                    log(f"[caption] skipped {key}: {type(e).__name__}: {e}")
                    continue
                batch_keys.append(key), images.append(image), metas.append(meta)
            if batch_keys:
                captions = captioner.caption(images, metas=metas)
                if len(captions) != len(batch_keys):
                    raise RuntimeError(f"{captioner.name} returned {len(captions)} captions for {len(batch_keys)}")
                append_captions(path, zip(batch_keys, captions))
                written += len(batch_keys)
            bar.update(len(todo[i : i + batch_size]))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return {"path": str(path), "shard_images": len(mine), "skipped_done": len(mine) - len(todo),
            "captioned": written, "failed": failed, "seconds": seconds}  # fmt: skip
