"""LoRA (models/lora.py over peft): only the adapters train, resume is exact, merged == unmerged, sample + export."""
import json

import pytest
import torch

pytest.importorskip("peft")  # the `lora` extra (pip install 'microt2i[lora]')

from microt2i import presets  # noqa: E402
from microt2i.cli import main  # noqa: E402
from microt2i.config import ConfigError, apply_overrides  # noqa: E402
from microt2i.models import build, from_pretrained  # noqa: E402
from microt2i.models.lora import apply_lora, attach_adapter, merge_lora, read_adapter, target_names  # noqa: E402
from microt2i.train.finetune import init_run  # noqa: E402
from microt2i.train.loop import train  # noqa: E402
from microt2i.train.state import load_latest  # noqa: E402

from test_finetune import QUIET  # noqa: E402
from test_finetune import _tiny as _finetune_tiny  # noqa: E402


def _tiny(tmp_path, *extra):  # test_finetune's tiny run, with a checkpoint every 16 images for the resume test
    return _finetune_tiny(tmp_path, "train.ckpt_every_nimg=16", *extra)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("src")
    train(_tiny(tmp, "train.ema_decay=0.5"), tmp / "run", **QUIET)
    return tmp


@pytest.fixture(scope="module")
def lora_run(source):
    cfg = _tiny(source, f"train.init={source / 'run'}", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=1e-2",
                "train.ema_decay=0.5")
    init_run(cfg, source / "lora")
    out = train(cfg, source / "lora", **QUIET)
    return cfg, source / "lora", out


def test_only_adapters_train_base_bit_identical(source, lora_run):
    cfg, run, out = lora_run
    base = load_latest(source / "run")["ema"]
    after = out["net"].state_dict()
    trainable = {n for n, p in out["net"].named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    n_base = n_lora = 0
    for k, v in after.items():
        if ".lora_B." in k:
            n_lora += 1
            assert v.abs().max() > 0, k  # B starts at 0: it trained
        elif ".lora_A." not in k:
            n_base += 1
            assert torch.equal(v, base[k.replace(".base_layer.", ".")]), k  # every base tensor untouched
    assert n_lora and n_base == len(base)
    opt = load_latest(run)["optimizer"]
    assert sum(len(g["params"]) for g in opt["param_groups"]) == 2 * n_lora  # the optimizer holds A, B only


def test_resume_of_a_lora_run_is_exact(source, lora_run, tmp_path):
    cfg, run, _ = lora_run
    init_run(cfg, tmp_path / "b")
    train(cfg, tmp_path / "b", stop_nimg=16, **QUIET)
    train(cfg, tmp_path / "b", **QUIET)
    a, b = load_latest(run), load_latest(tmp_path / "b")
    assert a["nimg"] == b["nimg"] == 48
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_merged_equals_unmerged_and_sample_and_export(source, lora_run, tmp_path):
    cfg, run, _ = lora_run
    merged = from_pretrained(run / "ema")  # what `microt2i sample RUN` loads
    tensors, info = read_adapter(run / "ema" / "adapter.safetensors")
    assert info == {"rank": 4, "alpha": 8.0, "targets": "both"} and all("lora_" in k for k in tensors)
    unmerged = attach_adapter(from_pretrained(source / "run" / "ema"), run / "ema" / "adapter.safetensors")
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0.5, -1.0])
    tok, mask = torch.randn(2, cfg.data.text_len, cfg.model.text_dim, generator=g), torch.ones(2, cfg.data.text_len, dtype=torch.bool)
    with torch.no_grad():
        a, b = merged(x, s, tok, mask), unmerged(x, s, tok, mask)
        base = from_pretrained(source / "run" / "ema")(x, s, tok, mask)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert (a - base).abs().max() > 1e-4  # the adapter changes the output
    assert main(["sample", str(run), "--prompt", "a blue ring", "--steps", "2", "--out", str(tmp_path / "s.png"),
                 "--upscale", "1"]) == 0
    from microt2i.export import export_run

    folder = export_run(run, tmp_path / "exp", grid=False, log=lambda *_: None)
    assert (folder / "lora" / "adapter.safetensors").read_bytes() == (run / "ema" / "adapter.safetensors").read_bytes()


@pytest.mark.parametrize("preset", ["world-tiny", "microdit-tiny-2", "cad-i-256"])
def test_targets_per_family_and_merge_restores_names(preset):
    cfg = presets.get(preset).model
    torch.manual_seed(0)
    with torch.device("meta"):
        net = build(cfg)
    attn, mlp = target_names(net, "attention"), target_names(net, "mlp")
    assert attn and mlp and not set(attn) & set(mlp)
    assert all(n.rsplit(".", 1)[1] in ("to_qkv", "to_q", "to_kv", "proj") for n in attn)
    assert all(n.rsplit(".", 1)[1] in ("fc1", "fc2") for n in mlp)
    assert sorted(target_names(net, "both")) == sorted(attn + mlp)


def test_merge_closed_form():
    torch.manual_seed(0)
    net = build(presets.get("world-tiny").model)
    w0 = net.state_dict()
    apply_lora(net, 2, 6.0, "attention")
    lin = net.get_submodule(target_names(build(presets.get("world-tiny").model), "attention")[0])
    with torch.no_grad():
        lin.lora_B["default"].weight.normal_()
    name = target_names(build(presets.get("world-tiny").model), "attention")[0]
    expect = w0[name + ".weight"] + 3.0 * lin.lora_B["default"].weight @ lin.lora_A["default"].weight
    merged = merge_lora(net).state_dict()
    assert set(merged) == set(w0)
    assert torch.allclose(merged[name + ".weight"], expect, atol=1e-6)


@pytest.mark.parametrize("override, needle", [
    ("train.lora_rank=-1", "train.lora_rank=-1 must be a positive integer"),
    ("train.lora_targets=ffn", "train.lora_targets='ffn' is not one of attention, mlp, both"),
    ("train.lora_alpha=-2", "train.lora_alpha=-2"),
])
def test_bad_lora_settings_one_line(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        apply_overrides(presets.get("world-tiny"), ["train.lora_rank=2", override])


def test_lora_refuses_state_mode_and_a_lora_source(source, lora_run, tmp_path):
    with pytest.raises(ConfigError, match="init_mode=weights"):
        apply_overrides(presets.get("world-tiny"), ["train.lora_rank=2", "train.init_mode=state"])
    cfg = _tiny(source, f"train.init={lora_run[1]}", "train.lora_rank=2")
    with pytest.raises(ConfigError, match="is a LoRA run: start from its merged weights"):
        init_run(cfg, tmp_path / "x")
    assert json.loads((lora_run[1] / "init.json").read_text())["kind"] == "run"
