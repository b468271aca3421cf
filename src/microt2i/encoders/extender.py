"""Prompt extenders: a short prompt → the long-caption style the model was trained on (ImageNet-T2I Table 2 uses "a
Prompt Extender before generating images"; Tables 9–11 score original ◇ and extended ★ GenEval prompts).

- `TemplateExtender` (the world): parse a GenEval-style prompt ("a photo of two red stars", "a photo of a cube
  left of a ring", ...) into a GenEval record, draw a world scene that satisfies it (`world.compose.world_scene`)
  and describe that scene with the world's oracle long captioner — every stated fact of the prompt is kept, the
  rest (sizes, background, unstated colours) is filled in the way training captions do.
- `LMExtender`: any `transformers` causal LM by id or folder, asked to rewrite the prompt as a detailed caption.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .captioner import clean_caption
from .hub import resolve_pretrained
from ..world.compose import world_scene
from ..world.scenes import CLASSES, COLORS, long_caption

INSTRUCTION = (
    "Rewrite this short image prompt as a detailed description of the image, in the style of a long image caption. "
    "Keep every object, count, colour and position it states. Prompt: {prompt}"
)


@runtime_checkable
class PromptExtender(Protocol):
    name: str

    def extend(self, prompts: Sequence[str]) -> list[str]: ...


# ------------------------------------------------------------------------------------------------ world template

_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_RELATIONS = ("left of", "right of", "above", "below")
_PREFIXES = ("a photo of ", "an image of ", "a picture of ", "a painting of ")


def parse_prompt(prompt: str, classes: Sequence[str], colors: Sequence[str]) -> dict:
    """A GenEval metadata record ({"tag", "include", "prompt"}) for a prompt in one of GenEval's six templates
    over the given vocabulary; a ValueError naming the prompt otherwise."""
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    for p in _PREFIXES:
        if text.startswith(p):
            text = text[len(p) :]
            break
    plurals = {(f"{c}es" if c.endswith("s") else f"{c}s"): c for c in classes}
    singulars = set(classes)

    def clause(words: str) -> dict:
        toks = words.split()
        if len(toks) < 2 or toks[0] not in _NUMBERS:
            raise ValueError(f"cannot read {words!r}")
        count, rest = _NUMBERS[toks[0]], toks[1:]
        color = rest[0] if rest[0] in colors and len(rest) > 1 else None
        noun = " ".join(rest[1:] if color else rest)
        cls = noun if (count == 1 and noun in singulars) else plurals.get(noun) if count > 1 else None
        if cls is None:
            raise ValueError(f"cannot read {words!r}")
        return {"class": cls, "count": count, **({"color": color} if color else {})}

    try:
        rel = next((r for r in _RELATIONS if f" {r} " in f" {text} "), None)
        if rel:  # "A rel B": B is clause 0, the target of A's position
            a, b = (s.strip() for s in f" {text} ".split(f" {rel} ", 1))
            include = [clause(b), {**clause(a), "position": [rel, 0]}]
            tag = "position"
        else:
            include = [clause(part) for part in re.split(r"\s+and\s+", text)]
            if len(include) > 2:
                raise ValueError("more than two clauses")
            colored = all("color" in c for c in include)
            if len(include) == 2:
                tag = "color_attr" if colored else "two_object"
            else:
                tag = "counting" if include[0]["count"] > 1 else "colors" if colored else "single_object"
    except ValueError as e:
        raise ValueError(
            f"prompt {prompt!r} is not a GenEval-style prompt over the world's vocabulary ({e}); use an LMExtender "
            f"or write it as e.g. 'a photo of two red stars' / 'a photo of a cube left of a ring'"
        ) from None
    return {"tag": tag, "include": include, "prompt": prompt}


class TemplateExtender:
    """World prompts → world long captions (deterministic per (seed, prompt))."""

    name = "world-template"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def extend_record(self, record: dict) -> str:
        rng = np.random.default_rng([self.seed, zlib.crc32(record["prompt"].encode())])
        return long_caption(world_scene(record, rng), rng)

    def extend(self, prompts: Sequence[str]) -> list[str]:
        return [self.extend_record(parse_prompt(p, CLASSES, tuple(COLORS))) for p in prompts]


# ------------------------------------------------------------------------------------------------ causal LM


class LMExtender:
    """A `transformers` causal LM (hub id or folder) rewrites each prompt; greedy, batched with left padding,
    the reply cut at its last full sentence. Falls back to the prompt itself when the reply is empty."""

    def __init__(
        self,
        model: str,
        *,
        instruction: str = INSTRUCTION,
        max_new_tokens: int = 120,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        # heavy (seconds to import): only when this model is loaded
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if "{prompt}" not in instruction:
            raise ValueError("the extender instruction must contain '{prompt}'")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        folder = resolve_pretrained(model, what="prompt-extender LM")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True).to(device).eval()
        self.instruction, self.max_new_tokens = instruction, max_new_tokens
        self.batch_size, self.device = batch_size, device
        self.name = f"lm:{model}"

    def prompt_text(self, prompt: str) -> str:
        message = self.instruction.format(prompt=prompt)
        if getattr(self.tokenizer, "chat_template", None):
            conv = [{"role": "user", "content": [{"type": "text", "text": message}]}]
            return self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        return f"{message}\nDetailed description:"

    @torch.no_grad()
    def generate_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer([self.prompt_text(p) for p in prompts], return_tensors="pt", padding=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        return out[:, batch["input_ids"].shape[1] :]

    def extend(self, prompts: Sequence[str]) -> list[str]:
        prompts = list(prompts)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            texts = self.tokenizer.batch_decode(self.generate_ids(chunk), skip_special_tokens=True)
            out += [clean_caption(t) or p for t, p in zip(texts, chunk)]
        return out


def make_extender(spec: str, **kwargs) -> PromptExtender:
    """'world' (TemplateExtender) or a causal-LM hub id / folder (LMExtender)."""
    return TemplateExtender(**kwargs) if spec in ("world", "template") else LMExtender(spec, **kwargs)
