"""The paper presets as published: objectives, augmentation, latent normalisation, CFG scales, parameter
counts against the papers' own figures, and every command of docs/presets.md."""

from __future__ import annotations

import re
import shlex
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_ia_training import QUIET, stores

from microt2i import presets
from microt2i.augment.cutmix import ia_gate
from microt2i.cli import main
from microt2i.config import ConfigError, DataConfig, EvalConfig, LATENT_NORMS, apply_overrides
from microt2i.data.store import StoreMismatchError, cache_key, check_store_key, store_key
from microt2i.augment.cutmix import paper_tau_to_sigma
from microt2i.diffusion.vp import VPSchedule
from microt2i.encoders import codec as codec_mod
from microt2i.models import build, count_params
from microt2i.train.loop import train

DOCS = Path(__file__).resolve().parents[1] / "docs" / "presets.md"


def _paper_figure(text: str) -> tuple[Decimal, Decimal]:
    """'0.4B' → (4e8, 1e8): the value and one unit of its last stated digit."""
    num, unit = Decimal(text[:-1]), {"B": Decimal(10) ** 9, "M": Decimal(10) ** 6}[text[-1]]
    return num * unit, Decimal(1).scaleb(num.as_tuple().exponent) * unit


# The papers' own figures, written here (not read from the module under test): ImageNet-T2I Table 5 (DiT-I 0.4B,
# CAD-I 0.3B), MicroDiT Table 8 (1.16B).
PAPER_FIGURES = {"dit-i-256": "0.4B", "dit-i-512": "0.4B", "cad-i-256": "0.3B", "microdit-xl-2": "1.16B"}


@pytest.mark.parametrize("name", list(PAPER_FIGURES))
def test_paper_parameter_counts_on_meta(name):
    exact, figure, _ = presets.PAPER_PARAMS[name]
    assert figure == PAPER_FIGURES[name]
    figure = PAPER_FIGURES[name]
    runs = presets.recipe(name) if name in presets.recipe_names() else [presets.get(name)]
    for run in runs:  # every stage of a recipe has the count
        with torch.device("meta"):
            assert count_params(build(run.model)) == exact, run.name
    value, unit = _paper_figure(figure)
    assert value - unit / 2 <= exact < value + unit, (exact, figure)  # the count rounded or truncated to the figure


def test_paper_figure_tolerance():
    assert _paper_figure("0.4B") == (Decimal("4E+8"), Decimal("1E+8"))
    assert _paper_figure("1.16B")[1] == Decimal("1E+7")
    value, unit = _paper_figure("1.16B")
    assert not value - unit / 2 <= 1_175_000_000 < value + unit and value - unit / 2 <= 1_165_442_320 < value + unit


def test_dit_i_is_paper_000():
    for run in presets.recipe("dit-i"):
        o, a, d = run.objective, run.augment, run.data
        assert (o.kind, o.schedule, o.uncond, o.cond_drop) == ("vp", "linear", "empty", 0.1)  # Eq. 1, γ = 1 − t
        assert (a.cutmix.enabled, a.cutmix.setting, a.cutmix.tau, a.cutmix.p) == (False, "all", 400.0, 0.5)  # §2.3
        assert (a.crop.enabled, a.crop.p, a.crop.min_side, run.model.crop_cond) == (True, 0.5, 0.5, True)
        assert (d.source, d.text_encoder, d.text_len, run.eval.sampler, run.eval.steps) == (
            "imagenet", "google/flan-t5-xl", 256, "ddim", 250)
    s256, s512 = presets.recipe("dit-i")
    assert (s256.data.resolution, s512.data.resolution, s512.model.pos_interp_scale) == (256, 512, 2.0)
    # EDM is one override away and keeps the former EDM settings per stage
    edm = [apply_overrides(s, ["objective.kind=edm"]).objective for s in (s256, s512)]
    assert [(o.kind, o.sigma_data, o.p_mean, o.p_std) for o in edm] == [("edm", 0.5, -0.6, 1.2), ("edm", 0.5, 0.0, 0.6)]


def test_cad_i_latents_and_clamp():
    for name in ("cad-i-256", "cad-i-base"):
        run = presets.get(name)
        assert (run.data.latent_norm, run.eval.clamp, run.eval.cfg_scale) == ("sd15-channel", 1.0, 11.0)
        assert (run.objective.kind, run.objective.schedule, run.augment.cutmix.enabled) == ("vp", "linear", True)


def test_microdit_cfg_for_metrics_and_grids():
    for run in [presets.get("microdit-xl-2"), *presets.recipe("microdit-xl-2")]:
        assert (run.eval.cfg_scale, run.eval.grid_scale) == (1.5, 5.0)  # MicroDiT App. B
    tiny = presets.get("microdit-tiny-2").eval
    assert (tiny.cfg_scale, tiny.grid_scale) == (3.0, 5.0)
    assert EvalConfig(cfg_scale=2.0).grid_scale == 2.0  # unset: the metrics' scale
    with pytest.raises(ConfigError, match="eval.grid_cfg_scale"):
        EvalConfig(grid_cfg_scale=-1.0)


def test_sample_uses_the_grid_scale_and_metrics_the_metric_scale(monkeypatch):
    import microt2i.sample as sample_mod
    from microt2i.eval.runner import RunSampler

    cfg = presets.get("microdit-xl-2")
    seen = []
    monkeypatch.setattr(sample_mod, "check_source", lambda run, model: run)
    monkeypatch.setattr(sample_mod, "load_run", lambda run, device: (cfg, None, None, None))
    monkeypatch.setattr(sample_mod, "TextEncoder", lambda *a, **k: SimpleNamespace(
        encode=lambda p: SimpleNamespace(tokens=None, mask=None)))
    monkeypatch.setattr(sample_mod, "codec_of", lambda *a, **k: None)
    monkeypatch.setattr(sample_mod, "generate", lambda *a, cfg_scale=None, **k: seen.append(cfg_scale) or [])
    _, settings = sample_mod.sample_prompts(["a cat"], run="runs/x")
    assert seen == [5.0] and settings["cfg_scale"] == 5.0
    sample_mod.sample_prompts(["a cat"], run="runs/x", cfg_scale=2.5)
    assert seen[-1] == 2.5
    assert RunSampler(None, cfg, None, None, None, None).settings()["cfg_scale"] == 1.5  # eval fid / geneval / …


@pytest.mark.parametrize("objective", [None, "edm"])
def test_dit_i_preset_trains_shrunk(tmp_path, objective):
    """dit-i-256 with its objective (or `--objective edm`), CutMix and Crop, shrunk to a 16 px store."""
    base, cm = stores()
    cfg = apply_overrides(presets.get("dit-i-256"), [
        *([f"objective.kind={objective}"] if objective else []), "data.source=world", "data.codec=pixel",
        "data.resolution=16", "data.text_len=6", "model.in_channels=3", "model.input_size=16", "model.patch_size=4",
        "model.text_dim=16", "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1",
        "augment.cutmix.enabled=true", "augment.cutmix.times=2", "train.total_nimg=64", "train.batch_size=8", "train.micro_batch=4",
        "train.warmup_nimg=0", "train.precision=fp32", "train.log_every_nimg=32", "train.ckpt_every_nimg=1000",
        "train.threads=1"])
    assert cfg.augment.cutmix.enabled and cfg.augment.crop.enabled
    out = train(cfg, tmp_path, store=base, cutmix_store=cm, **QUIET)
    assert out["finished"] and out["nan_skips"] == 0


def test_gate_stays_on_the_noise_level():
    """Under γ = 1 − t a sample may be swapped iff t > τ/1000 (Algorithm 1), for any latent scale: the gate reads σ
    only, and σ(t) = √((1 − γ)/γ) does not depend on the data."""
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    sigma = VPSchedule("linear").sigma(t)
    gate = ia_gate(sigma, 400.0, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gate, t > 0.4 + 1e-9)
    assert abs(paper_tau_to_sigma(400) - (0.4 / 0.6) ** 0.5) < 1e-12


def test_latent_norm_codec_and_store_key(tmp_path):
    from _tiny_models import tiny_vae

    assert set(LATENT_NORMS) == set(codec_mod.LATENT_NORMS)
    vae = tiny_vae(tmp_path / "vae")
    cad = codec_mod.codec_of(DataConfig(codec=str(vae), latent_norm="sd15-channel"))
    assert torch.allclose(cad.shift, torch.tensor(codec_mod.SD15_CHANNEL_MEAN, dtype=torch.float64))
    assert torch.allclose(cad.scale, 0.5 / torch.tensor(codec_mod.SD15_CHANNEL_STD, dtype=torch.float64))
    plain = codec_mod.codec_of(DataConfig(codec=str(vae)))
    assert torch.allclose(plain.scale, torch.full((4,), 0.25, dtype=torch.float64))  # the VAE config's factor
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(cad.decode(cad.encode(x)), plain.decode(plain.encode(x)), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="data.latent_norm"):
        DataConfig(latent_norm="sd15-channel")  # pixels have no latents to normalise
    # the store key: absent at the default (earlier stores keep their key), present otherwise and checked
    d = DataConfig(source="imagenet", root="r", store_dir="s", codec=str(vae))
    dc = DataConfig(source="imagenet", root="r", store_dir="s", codec=str(vae), latent_norm="sd15-channel")
    assert "latent_norm" not in store_key(d) and store_key(dc)["latent_norm"] == "sd15-channel"
    with pytest.raises(StoreMismatchError, match="data.latent_norm"):
        check_store_key("s", store_key(d), store_key(dc))
    w = DataConfig(codec=str(vae))
    assert cache_key(w) != cache_key(DataConfig(codec=str(vae), latent_norm="sd15-channel"))


def test_real_source_needs_its_folders(tmp_path, capsys):
    cfg = presets.get("dit-i-256")  # ImageNet by default: builds and prints, fails only where data is read
    assert cfg.data.source == "imagenet" and not cfg.data.root
    with pytest.raises(ConfigError, match="data.root=<dataset folder> and data.store_dir"):
        cfg.data.require_dataset()
    assert main(["train", "dit-i-256", "--run-dir", str(tmp_path / "run")]) == 2
    assert "data.root" in capsys.readouterr().err and not (tmp_path / "run" / "ema").exists()


def _doc_commands(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [ln.split("  #")[0].strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("microt2i ")]


def test_every_docs_presets_command_runs(capsys):
    cmds = _doc_commands(DOCS.read_text())
    assert len(cmds) >= 7
    for cmd in cmds:
        assert main(shlex.split(cmd)[1:]) == 0, cmd
    out = capsys.readouterr().out
    assert "kind: edm" in out and "grid_cfg_scale: 5.0" in out and "latent_norm: sd15-channel" in out


def test_dit_i_on_a_real_tree(tmp_path, capsys):
    """The DiT-I preset (shrunk) on a fabricated ImageNet tree: precompute, then train (ε objective, Crop on); with
    `augment.cutmix.enabled=true` and no composites it stops with one line naming them."""
    from _fake_imagenet import make_tree

    make_tree(tmp_path / "in")
    data = [f"data.root={tmp_path / 'in'}", f"data.store_dir={tmp_path / 'store'}", "data.captions=aio",
            "data.codec=pixel", "data.text_encoder=minilm", "data.text_len=8", "data.resolution=16",
            "data.shard_size=4"]
    small = ["model.in_channels=3", "model.input_size=16", "model.patch_size=4", "model.text_dim=384",
             "model.width=32", "model.depth=1", "model.heads=2", "model.refiner_depth=1", "train.total_nimg=16",
             "train.batch_size=4", "train.micro_batch=4", "train.warmup_nimg=0", "train.precision=fp32",
             "train.log_every_nimg=8", "train.ckpt_every_nimg=1000", "train.threads=1", "train.device=cpu"]
    assert main(["-q", "precompute", "dit-i-256", *data]) == 0
    capsys.readouterr()
    assert main(["-q", "train", "dit-i-256", *data, *small, "augment.cutmix.enabled=true", "--run-dir",
                 str(tmp_path / "cm"), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "cutmix" in err.splitlines()[0].lower(), err  # the composites are named (augment/cutmix.py words it)
    assert main(["-q", "train", "dit-i-256", *data, *small, "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "ema" / "model.safetensors").exists()


def test_in_training_grid_uses_the_grid_scale(tmp_path):
    from dataclasses import dataclass

    import numpy as np

    from microt2i.eval.live import LiveEval
    from microt2i.eval.runner import RunSampler

    seen = []

    @dataclass
    class Recording(RunSampler):
        def __call__(self, prompts, *, seed):
            seen.append(self.cfg_scale)
            return np.zeros((len(prompts), 8, 8, 3), np.uint8)

    cfg = apply_overrides(presets.get("world-tiny"), ["eval.cfg_scale=1.5", "eval.grid_cfg_scale=5",
                                                      "eval.geneval_per_tag=0", "eval.fd_n=0"])
    live = LiveEval(cfg, tmp_path, "cpu", log=lambda *_: None)
    live._parts = {"sampler": Recording(None, cfg, None, None, None, None), "grid": ["a red star"] * 4, "nrow": 2}
    stats = live(None, 16, None, None)
    assert seen == [5.0] and (tmp_path / stats["eval/grid"]).exists()
