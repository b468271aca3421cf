"""encoders/openclip.py: an OpenCLIP checkpoint (DFN5B-CLIP-H's file layout) loads as a transformers CLIP text model.

The checkpoint is a tiny random text tower saved under OpenCLIP's key names with an `open_clip_config.json`; its
outputs are checked against a forward pass written here from OpenCLIP's text tower definition (nn.MultiheadAttention
with the fused q/k/v weights, causal mask, QuickGELU MLP, final LayerNorm, EOT pooling, x @ text_projection)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from _tiny_models import tiny_tokenizer
from torch import nn

from microt2i.encoders import TextEncoder
from microt2i.encoders.hub import resolve_pretrained
from microt2i.encoders.openclip import text_config, to_transformers

W, HEADS, LAYERS, CTX, EMBED = 16, 2, 2, 12, 8


def _openclip_folder(folder, *, quick_gelu=True, text_extra=None, weights="bin"):
    folder.mkdir(parents=True, exist_ok=True)
    specials = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>"}
    tok = tiny_tokenizer(folder, specials=specials, template="<|startoftext|> $A <|endoftext|>")
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    sd = {"token_embedding.weight": r(len(tok), W), "positional_embedding": r(CTX, W),
          "ln_final.weight": 1 + r(W, scale=0.1), "ln_final.bias": r(W, scale=0.1), "text_projection": r(W, EMBED),
          "logit_scale": torch.tensor(4.6), "visual.proj": r(W, EMBED)}  # the image tower is dropped
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        sd |= {p + "ln_1.weight": 1 + r(W, scale=0.1), p + "ln_1.bias": r(W, scale=0.1),
               p + "attn.in_proj_weight": r(3 * W, W), p + "attn.in_proj_bias": r(3 * W, scale=0.1),
               p + "attn.out_proj.weight": r(W, W), p + "attn.out_proj.bias": r(W, scale=0.1),
               p + "ln_2.weight": 1 + r(W, scale=0.1), p + "ln_2.bias": r(W, scale=0.1),
               p + "mlp.c_fc.weight": r(4 * W, W), p + "mlp.c_fc.bias": r(4 * W, scale=0.1),
               p + "mlp.c_proj.weight": r(W, 4 * W), p + "mlp.c_proj.bias": r(W, scale=0.1)}
    text = {"context_length": CTX, "vocab_size": len(tok), "width": W, "heads": HEADS, "layers": LAYERS,
            **(text_extra or {})}
    cfg = {"model_cfg": {"embed_dim": EMBED, "quick_gelu": quick_gelu, "text_cfg": text,
                         "vision_cfg": {"image_size": 32, "layers": 1, "width": W, "patch_size": 16}}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    if weights == "bin":
        torch.save(sd, folder / "open_clip_pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "open_clip_model.safetensors"))
    return folder, sd, tok


def _openclip_forward(sd, ids, eos_id, quick_gelu=True):
    """OpenCLIP's text tower forward (NLD in, LND through the blocks as OpenCLIP does)."""
    act = (lambda x: x * torch.sigmoid(1.702 * x)) if quick_gelu else nn.functional.gelu
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    x = x.transpose(0, 1)
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        attn = nn.MultiheadAttention(W, HEADS)
        attn.load_state_dict({"in_proj_weight": sd[p + "attn.in_proj_weight"], "in_proj_bias": sd[p + "attn.in_proj_bias"],
                              "out_proj.weight": sd[p + "attn.out_proj.weight"],
                              "out_proj.bias": sd[p + "attn.out_proj.bias"]})
        h = nn.functional.layer_norm(x, (W,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=causal)[0]
        h = nn.functional.layer_norm(x, (W,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = act(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    x = nn.functional.layer_norm(x.transpose(0, 1), (W,), sd["ln_final.weight"], sd["ln_final.bias"])
    eot = (ids == eos_id).int().argmax(-1)  # OpenCLIP: argmax of the ids, the EOT being CLIP's largest id
    return x, x[torch.arange(len(ids)), eot] @ sd["text_projection"]


CAPTIONS = ["a red cat on a mat", "the blue dog", "a small green bird near a big yellow car on the road"]


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_openclip_text_tower_matches_openclip_forward(tmp_path, weights):
    folder, sd, tok = _openclip_folder(tmp_path / "dfn", weights=weights)
    assert resolve_pretrained(str(folder), what="text encoder") == folder  # no config.json needed
    enc = TextEncoder(str(folder), max_length=CTX, log=None)
    assert (enc.kind, enc.dim, enc.pooled_dim, enc.max_length) == ("clip_text_model", W, EMBED, CTX)
    emb = enc.encode(CAPTIONS)
    ids = tok(CAPTIONS, padding="max_length", truncation=True, max_length=CTX, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tokens, pooled = _openclip_forward(sd, ids, tok.eos_token_id)
    m = emb.mask
    torch.testing.assert_close(emb.tokens[m], tokens[m], rtol=1e-5, atol=1e-5)  # real tokens (causal: pads unseen)
    torch.testing.assert_close(emb.pooled, pooled, rtol=1e-5, atol=1e-5)


def test_mapped_weights_give_a_clip_text_model(tmp_path):
    from transformers import CLIPTextModelWithProjection

    folder, sd, tok = _openclip_folder(tmp_path / "dfn")
    cfg = text_config(folder, tok)
    assert (cfg.hidden_act, cfg.intermediate_size, cfg.max_position_embeddings) == ("quick_gelu", 4 * W, CTX)
    ref = CLIPTextModelWithProjection(cfg).eval()
    missing, unexpected = ref.load_state_dict(to_transformers(sd, LAYERS), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    batch = tok(CAPTIONS, padding="max_length", truncation=True, max_length=CTX, return_tensors="pt")
    enc = TextEncoder(str(folder), max_length=CTX, log=None)
    with torch.no_grad():
        out = ref(**batch)
    emb = enc.encode(CAPTIONS)
    torch.testing.assert_close(emb.pooled, out.text_embeds)
    torch.testing.assert_close(emb.tokens, out.last_hidden_state)


def test_openclip_variants_and_pickles_are_refused(tmp_path):
    folder, _, _ = _openclip_folder(tmp_path / "ls", text_extra={"ls_init_value": 1e-5})
    with pytest.raises(ValueError, match="ls_init_value"):
        TextEncoder(str(folder), max_length=CTX, log=None)
    folder, sd, _ = _openclip_folder(tmp_path / "extra")
    torch.save({**sd, "transformer.resblocks.0.ls_1.gamma": torch.ones(W)}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="ls_1.gamma"):
        TextEncoder(str(folder), max_length=CTX, log=None)

    class Payload:  # unpickling it would create `marker`
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "PWNED"),)

    folder, sd, _ = _openclip_folder(tmp_path / "evil")
    (folder / "open_clip_pytorch_model.bin").write_bytes(pickle.dumps({**sd, "x": Payload()}))
    with pytest.raises(pickle.UnpicklingError):
        TextEncoder(str(folder), max_length=CTX, log=None)
    assert not (tmp_path / "PWNED").exists()
