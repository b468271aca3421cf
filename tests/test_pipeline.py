"""MicroT2ITransformer / MicroT2IPipeline on tiny random models: config round trip, forward identity, the pipeline
equal to `sample.generate`, save / load, clear errors."""

import dataclasses

import numpy as np
import pytest
import torch
from _tiny_models import tiny_t5

from microt2i import presets
from microt2i.config import ConfigError, apply_overrides
from microt2i.models import config_dict, build
from microt2i.pipeline import MicroT2IPipeline, MicroT2ITransformer


def _net(text_dim=16, seed=0):
    cfg = apply_overrides(presets.get("world-tiny"), [f"model.text_dim={text_dim}", "model.width=32",
                                                      "model.depth=1", "model.heads=2", "model.refiner_depth=1"])
    torch.manual_seed(seed)
    net = build(cfg.model)
    with torch.no_grad():  # DiT zero-inits its output layer: give it weights so outputs depend on the network
        net.final_layer.linear.weight.normal_(0, 0.05)
    return cfg, net.eval()


def _null(L=8, D=16):
    return torch.randn(1, L, D, generator=torch.Generator().manual_seed(1)), torch.tensor([[True] + [False] * (L - 1)])


def test_transformer_config_round_trip(tmp_path):
    cfg, net = _net()
    tokens, mask = _null()
    t = MicroT2ITransformer.from_network(net, tokens, mask)
    assert dict(t.config["model"]) == config_dict(cfg.model) and t.config["text_len"] == 8
    t.save_pretrained(tmp_path / "t")
    back = MicroT2ITransformer.from_pretrained(tmp_path / "t", low_cpu_mem_usage=False)
    assert back.model_config == cfg.model
    for k, v in t.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert torch.equal(back.null_tokens, tokens) and back.null_mask.dtype == torch.bool
    x, sig = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 2.0])
    txt, m = torch.randn(2, 8, 16), torch.ones(2, 8, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(back(x, sig, txt, m), net(x, sig, txt, m))


def test_transformer_rejects_bad_configs():
    with pytest.raises(ConfigError, match="model config dict"):
        MicroT2ITransformer()
    cfg, _ = _net()
    with pytest.raises(ConfigError, match="format_version"):
        MicroT2ITransformer(model={**config_dict(cfg.model), "format_version": 99})
    with pytest.raises(ConfigError, match="family"):
        MicroT2ITransformer(model={"family": "unet"})


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return tiny_t5(tmp_path_factory.mktemp("t5"))


def _pipeline(t5_folder, cfg, net, **settings):
    from microt2i.encoders import TextEncoder

    text = TextEncoder(str(t5_folder), max_length=8, log=None)
    tokens, mask = _null()
    return MicroT2IPipeline(MicroT2ITransformer.from_network(net, tokens, mask), text.tokenizer, text.model,
                            objective=dataclasses.asdict(cfg.objective), text_len=8,
                            sampling={"sampler": "heun", "steps": 3, "cfg_scale": 2.0, "seed": 0, **settings}), text


def test_pipeline_equals_generate_and_survives_save_load(tmp_path, t5):
    from microt2i.encoders import PixelCodec
    from microt2i.diffusion.generate import generate

    cfg, net = _net()
    pipe, text = _pipeline(t5, cfg, net)
    prompts = ["a red cube", "two blue spheres left of a cone"]
    got = pipe(prompts, num_images_per_prompt=2, seed=4, output_type="np").images
    emb = text.encode([p for p in prompts for _ in range(2)])
    run = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, steps=3, cfg_scale=2.0, sampler="heun"))
    ref = generate(net, run, emb.tokens, emb.mask, *_null(), codec=PixelCodec(), seed=4)
    assert got.shape == (4, 16, 16, 3) and np.array_equal(got, ref)
    assert not np.array_equal(got[0], got[1])  # per-image noise: (seed, k)
    # batch size does not change any image (noise keyed by image index)
    assert np.array_equal(pipe(prompts, num_images_per_prompt=2, seed=4, batch_size=3, output_type="np").images, got)
    pipe.save_pretrained(tmp_path / "p")
    back = MicroT2IPipeline.from_export(tmp_path / "p")
    assert back.config.sampling["steps"] == 3 and back.config.codec == {"kind": "pixel"} and back.vae is None
    assert np.array_equal(back(prompts, num_images_per_prompt=2, seed=4, output_type="np").images, got)


def test_pipeline_errors(t5, tmp_path):
    cfg, net = _net()
    pipe, _ = _pipeline(t5, cfg, net, bogus=1)
    with pytest.raises(ConfigError, match="bogus"):
        pipe("a red cube")
    pipe, _ = _pipeline(t5, cfg, net)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a red cube", output_type="latent")
    with pytest.raises(ValueError, match="unknown sampler"):
        pipe("a red cube", sampler="nope")
    with pytest.raises(ConfigError, match="vae"):
        MicroT2IPipeline(pipe.transformer, pipe.tokenizer, pipe.text_encoder, codec={"kind": "vae"})
    with pytest.raises(FileNotFoundError, match="microt2i export"):
        MicroT2IPipeline.from_export(tmp_path)
