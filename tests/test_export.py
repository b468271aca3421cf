"""`microt2i export`: a world model trained a few steps → diffusers folder → DiffusionPipeline.from_pretrained,
offline, reproducing `sample.generate` bit for bit at a fixed seed."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from microt2i import presets
from microt2i.cli import main
from microt2i.config import ConfigError, apply_overrides
from microt2i.train.loop import train

PROMPTS = ["A big red star in the middle on a plain grey background.", "A small blue ring at the left."]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """world-tiny on the world VAE's latents (4×4×4), 8 steps: a latent model, so the VAE path is exported too."""
    root = tmp_path_factory.mktemp("export")
    torch.set_num_threads(1)
    cfg = apply_overrides(presets.get("world-tiny"), [
        "data.codec=world-vae", "model.in_channels=4", "model.input_size=4", "model.patch_size=1",
        f"data.cache_dir={root / 'cache'}", "train.total_nimg=128", "train.lr=3e-3", "train.threads=1",
        "eval.steps=3"])
    train(cfg, root / "run", progress=False, log=lambda *a: None)
    # an evaluation result the model card should quote
    ev = root / "run" / "eval" / "geneval"
    ev.mkdir(parents=True)
    (ev / "results.json").write_text(json.dumps({"metrics": {"overall": 0.125}, "summary": {}}))
    return root


@pytest.fixture(scope="module")
def exported(run):
    from microt2i.export import export_run

    return export_run(run / "run", run / "export", log=lambda *a: None)


def _reference(run_dir, prompts, seed, **kw):
    from microt2i.encoders import TextEncoder, load_codec
    from microt2i.diffusion.generate import generate
    from microt2i.train.artifacts import load_run

    cfg, net, null_tokens, null_mask = load_run(run_dir)
    emb = TextEncoder(cfg.data.text_encoder, max_length=cfg.data.text_len, log=None).encode(prompts)
    return generate(net, cfg, emb.tokens, emb.mask, null_tokens, null_mask, codec=load_codec(cfg.data.codec),
                    seed=seed, **kw)


def test_diffusers_round_trip_reproduces_our_sampler(run, exported):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    assert type(pipe).__name__ == "MicroT2IPipeline" and pipe.vae is not None
    got = pipe(PROMPTS, seed=7, output_type="np").images
    ref = _reference(run / "run", PROMPTS, 7)
    assert got.dtype == np.uint8 and got.shape == ref.shape == (2, 16, 16, 3)
    assert np.array_equal(got, ref)
    # overrides reach the sampler: another sampler / step count / scale gives what generate gives with them
    got = pipe(PROMPTS, seed=7, sampler="euler", num_inference_steps=4, guidance_scale=1.5, output_type="np").images
    assert np.array_equal(got, _reference(run / "run", PROMPTS, 7, sampler="euler", steps=4, cfg_scale=1.5))
    # the trained weights matter (the test would pass vacuously for a network that outputs ~0)
    with torch.no_grad():
        pipe.transformer.net.final_layer.linear.bias.add_(0.5)
    assert not np.array_equal(pipe(PROMPTS, seed=7, output_type="np").images, ref)
    pil = pipe(PROMPTS[0], seed=7).images[0]
    assert isinstance(pil, Image.Image) and pil.size == (16, 16)


def test_loading_without_remote_code(run, exported):
    from diffusers import DiffusionPipeline

    from microt2i.pipeline import MicroT2IPipeline

    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(exported)
    pipe = MicroT2IPipeline.from_export(exported)  # runs no code from the folder
    assert np.array_equal(pipe(PROMPTS, seed=3, output_type="np").images, _reference(run / "run", PROMPTS, 3))


def test_export_folder_and_model_card(run, exported):
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "MicroT2IPipeline"]
    assert index["transformer"] == ["microt2i.pipeline", "MicroT2ITransformer"]
    assert index["vae"][1] == "AutoencoderKL" and index["codec"]["kind"] == "vae"
    assert index["sampling"]["steps"] == 3 and index["objective"]["kind"] == "edm"
    tconf = json.loads((exported / "transformer" / "config.json").read_text())
    assert tconf["model"]["family"] == "dit-i" and tconf["model"]["in_channels"] == 4
    with safe_open(str(exported / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        ema = safe_open(str(run / "run" / "ema" / "model.safetensors"), "pt")
        for k in ema.keys():  # the EMA weights, unchanged
            assert torch.equal(f.get_tensor(f"net.{k}"), ema.get_tensor(k)), k
    card = (exported / "README.md").read_text()
    assert "library_name: diffusers" in card and "trust_remote_code=True" in card
    assert "eval/geneval | overall | 0.125" in card and "name: world-tiny" in card
    assert card.count("\n1. ") == 1 and "sample_grid.png" in card
    grid = Image.open(exported / "sample_grid.png")
    assert grid.size[0] > 2 * 16 and (exported / "training_config.yaml").is_file()
    assert not list(exported.parent.glob(".export.*"))  # no temp folder left behind


def test_bf16_export_stores_bf16_and_samples_close(run, exported):
    from microt2i.export import export_run
    from microt2i.pipeline import MicroT2IPipeline

    folder = export_run(run / "run", run / "export-bf16", dtype="bf16", grid=False, log=lambda *a: None)
    with safe_open(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if not k.endswith("null_mask")}
    assert dtypes == {torch.bfloat16}
    pipe = MicroT2IPipeline.from_export(folder, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    got = pipe(PROMPTS, seed=7, output_type="np").images
    ref = _reference(run / "run", PROMPTS, 7)
    assert got.shape == ref.shape and np.abs(got.astype(float) - ref).mean() < 8.0  # bf16 rounding, not garbage


def test_export_errors_and_cli(run, exported, capsys):
    from microt2i.export import export_run

    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(run / "run", exported)
    with pytest.raises(ConfigError, match="fp32, fp16, bf16"):
        export_run(run / "run", run / "x", dtype="int8")
    assert main(["export", str(run / "run"), str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run / "nope"), str(run / "y")]) == 2
    assert "ema/model.safetensors" in capsys.readouterr().err
    # sample --model (export) and --run give the same PNGs
    for src, flag in ((exported, "--model"), (run / "run", "--run")):
        assert main(["sample", flag, str(src), "--prompt", PROMPTS[0], "--n", "2", "--seed", "5",
                     "--out-dir", str(run / f"s{flag}"), "--no-progress"]) == 0
    for name in ("0000.png", "0001.png"):
        a, b = (np.asarray(Image.open(run / f"s{f}" / name)) for f in ("--model", "--run"))
        assert np.array_equal(a, b)
    assert not np.array_equal(np.asarray(Image.open(run / "s--run" / "0000.png")),
                              np.asarray(Image.open(run / "s--run" / "0001.png")))  # (seed, k) noise per image
    rows = [json.loads(x) for x in (run / "s--run" / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and rows[0]["seed"] == 5 and (run / "s--run" / "grid.png").is_file()
