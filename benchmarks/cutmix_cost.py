"""The cost of CutMix composites at the paper's scale (ImageNet-T2I App. E: 1,281,167 per setting), for docs/data.md.

Measured here, on this machine's CPU (one thread):
- the tiny path: `build_cutmix_shards` end to end at 256² (JPEG decode + resize of base and partner, paste, a tiny
  random LLaVA-NeXT with the CutMix prompt, 8 new tokens, tiny T5, pixel codec), per composite;
- the composing alone (decode, resize, paste), per composite;
- the encode with the real architectures, random-initialised (no download): SD-VAE (`stabilityai/sd-vae-ft-ema`'s
  layout) on 256² images, flan-T5-XL's encoder on 128 tokens, per image / caption.
Counted on the `meta` device (no memory, no compute; `torch.utils.flop_counter`): the FLOPs of each model per
composite, LLaVA-NeXT-8B included (CLIP ViT-L/14-336 on the whole image + one crop, Llama-3-8B over the pruned
prompt and 200 generated tokens). Disk: the shard layout's bytes per composite (checked against a tiny shard).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cutmix_cost.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
N = 1_281_167


def _tree(root: Path, classes=4, per=6) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / "train" / f"n0{c:07d}"
        d.mkdir(parents=True)
        for i in range(per):  # ImageNet's typical 500×375 JPEGs, smooth content (real JPEG sizes)
            base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(base).resize((500, 375), Image.BICUBIC).save(d / f"{i}.JPEG", quality=90)
    return root


def measure_cpu(tmp: Path) -> dict:
    from _tiny_models import tiny_llava_next, tiny_t5

    from microt2i.augment.cutmix import CutMixConfig, build_cutmix_shards, composite_source, paste, plan_composite
    from microt2i.config import DataConfig
    from microt2i.data.precompute import precompute

    torch.set_num_threads(1)
    root = _tree(tmp / "imagenet")
    t5, llava = tiny_t5(tmp / "t5"), tiny_llava_next(tmp / "llava")
    data = DataConfig(source="imagenet", root=str(root), store_dir=str(tmp / "store"), resolution=256, codec="pixel",
                      text_encoder=str(t5), text_len=8, captions="aio", shard_size=8)
    precompute(data, log=lambda *_: None)
    cm = CutMixConfig(setting="all")
    src = composite_source(data)
    t0 = time.perf_counter()
    for i in range(len(src.keys)):
        p, box, _ = plan_composite(i, 0, src.classes, cm, 256)
        px = src.load_many([i, p])
        paste(px[i], px[p], box)
    compose = (time.perf_counter() - t0) / len(src.keys)
    data_long = DataConfig(**{**data.__dict__, "captions": "long", "caption_file": "", "store_dir": str(tmp / "s2")})
    # the long-caption base store needs captions: AIO rows stand in (the composites' captions come from LLaVA)
    from microt2i.data.captions import write_captions

    write_captions(tmp / "c.tsv", [(k, f"a caption of {k}") for k in src.keys])
    data_long = DataConfig(**{**data_long.__dict__, "caption_file": str(tmp / "c.tsv")})
    precompute(data_long, log=lambda *_: None)
    t0 = time.perf_counter()
    build_cutmix_shards(data_long, cm, model=str(llava), max_new_tokens=8, caption_batch_size=8, log=lambda *_: None)
    tiny = (time.perf_counter() - t0) / len(src.keys)
    shard = next((Path(data_long.store_dir) / "cutmix-all-x1-s0").glob("shard-00000.safetensors"))
    side = json.loads(shard.with_suffix(".json").read_text())
    return {"compose_s": compose, "tiny_path_s": tiny, "tiny_shard_bytes": shard.stat().st_size,
            "tiny_shard_count": side["count"], "tiny_shard_shapes": {k: v["shape"] for k, v in side["tensors"].items()}}


def sd_vae(device="cpu"):
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # stabilityai/sd-vae-ft-ema's layout (SD's f8 VAE)
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
        sample_size=256).to(device)


def t5_xl_encoder(device="cpu"):
    from transformers import T5Config, T5EncoderModel

    with torch.device(device):  # google/flan-t5-xl's encoder layout
        return T5EncoderModel(T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                                       num_heads=32, feed_forward_proj="gated-gelu"))


def llava_next_8b():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)  # CLIP ViT-L/14-336
    text = LlamaConfig(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192)  # Llama-3-8B
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", image_token_index=128256)
    with torch.device("meta"):
        return LlavaNextForConditionalGeneration(cfg)


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return float(fc.get_total_flops())


def count_flops() -> dict:
    vae = sd_vae("meta")
    t5 = t5_xl_encoder("meta")
    llava = llava_next_8b()
    core = llava.model
    lm_params = sum(p.numel() for p in core.language_model.parameters()) + llava.lm_head.weight.numel()
    prompt = 576 + 24 * (24 + 1) + 60  # pruned: base grid + one crop with row newlines (CM1/4–1/16), ~60 text
    new = 200
    crops = torch.zeros(2, 3, 336, 336, device="meta")
    vision = _flops(lambda: core.multi_modal_projector(core.vision_tower(crops).last_hidden_state))
    seq = torch.zeros(1, prompt + new, dtype=torch.long, device="meta")
    lm = _flops(lambda: llava.lm_head(core.language_model(input_ids=seq).last_hidden_state))
    return {
        "vae_encode": _flops(lambda: vae.encode(torch.zeros(1, 3, 256, 256, device="meta"))),
        "t5_xl_128": _flops(lambda: t5(input_ids=torch.zeros(1, 128, dtype=torch.long, device="meta"))),
        "llava_vision_2crops": vision, "llava_lm_prompt_plus_200": lm, "llava_prompt_tokens": prompt,
        "llava_lm_params": lm_params,
    }


def measure_encoders() -> dict:
    torch.set_num_threads(1)
    out = {}
    vae = sd_vae().eval()
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        vae.encode(x[:1])
        t0 = time.perf_counter()
        vae.encode(x)
        out["vae_encode_s"] = (time.perf_counter() - t0) / 2
    del vae
    t5 = t5_xl_encoder().eval()
    ids = torch.randint(0, 32128, (2, 128))
    with torch.no_grad():
        t0 = time.perf_counter()
        t5(input_ids=ids)
        out["t5_xl_128_s"] = (time.perf_counter() - t0) / 2
    return out


H100_FLOPS, H100_BYTES_S = 989e12, 3.35e12  # H100 SXM datasheet: dense bf16, HBM3


def h100_floor(f: dict, new: int = 200, batch: int = 16) -> dict:
    """A roofline floor per composite on one H100: the prompt, the vision tower and the encoders at peak compute,
    then `new` decoding steps each reading the LM's bf16 weights once per batch of `batch` and the sequence's KV
    cache (Llama-3-8B: 32 layers × 8 KV heads × 128 × K,V × 2 bytes per token), or their FLOPs if slower."""
    prompt = f["llava_prompt_tokens"]
    lm_prompt = f["llava_lm_prompt_plus_200"] * prompt / (prompt + new)
    pre = (lm_prompt + f["llava_vision_2crops"] + f["vae_encode"] + f["t5_xl_128"]) / H100_FLOPS
    kv = 2 * 32 * 8 * 128 * 2 * (prompt + new / 2) * new
    dec = max((f["llava_lm_prompt_plus_200"] - lm_prompt) / H100_FLOPS,
              (new * 2 * f["llava_lm_params"] / batch + kv) / H100_BYTES_S)
    return {"batch": batch, "prefill_ms": 1e3 * pre, "decode_ms": 1e3 * dec, "h100_hours": (pre + dec) * N / 3600}


def main():
    res = {"flops": count_flops()}
    res["h100_floor"] = [h100_floor(res["flops"], batch=b) for b in (16, 64)]
    with tempfile.TemporaryDirectory() as tmp:
        res["cpu"] = measure_cpu(Path(tmp))
    res["cpu"] |= measure_encoders()
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
