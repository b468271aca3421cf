"""Untrusted files: weights only from safetensors, pickles never run by any loader, no remote code
without the user's flag, caption keys confined to the image root, prompts escaped in the HTML report."""

import ast
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_models import tiny_clip, tiny_t5, tiny_tokenizer, tiny_vae
from PIL import Image
from test_train import fake_store, tiny_cfg

import microt2i
from microt2i.config import DataConfig
from microt2i.data.captions import CaptionFileError, read_captions
from microt2i.data.precompute import precompute
from microt2i.data.store import StoreDamagedError, cache_key, cache_root, load_or_build, open_store, shard_name
from microt2i.encoders import TextEncoder, load_codec
from microt2i.encoders.clip import load_image_text_model
from microt2i.models import from_pretrained
from microt2i.train.loop import train
from microt2i.train.state import checkpoint_path, load_latest

SRC = Path(microt2i.__file__).parent
QUIET = {"progress": False, "log": lambda *_: None}


class Payload:
    """Unpickling this runs os.mkdir(marker): proof that a loader executed a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture
def evil(tmp_path):
    """(pickle bytes whose loading creates `marker`, marker); the test asserts the marker never appears."""
    marker = tmp_path / "PWNED"
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"model": {"w": torch.zeros(1)}, "x": Payload(marker)}, f)
    data = (tmp_path / "evil.pt").read_bytes()
    pickle.loads(pickle.dumps(Payload(tmp_path / "CHECK")))  # the payload is live: plain pickle would run it
    assert (tmp_path / "CHECK").is_dir()
    return data, marker


def test_training_state_pickle_is_never_run(tmp_path, evil):
    data, marker = evil
    run = tmp_path / "run"
    run.mkdir()
    checkpoint_path(run, 16).write_bytes(data)
    logs = []
    assert load_latest(run, log=logs.append) is None and "UnpicklingError" in logs[0]  # weights_only=True
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        train(tiny_cfg(), run, store=fake_store(), **QUIET)
    assert not marker.exists()


def test_store_files_holding_a_pickle_are_never_run(tmp_path, evil):
    data, marker = evil
    t5 = str(tiny_t5(tmp_path / "t5"))
    cfg = DataConfig(num_images=16, resolution=8, text_encoder=t5, text_len=8, shard_size=8,
                     store_dir=str(tmp_path / "s"), cache_dir=str(tmp_path / "cache"))
    precompute(cfg, log=lambda *_: None)  # sharded store: a shard replaced by a pickle
    (tmp_path / "s" / f"{shard_name(1)}.safetensors").write_bytes(data)
    with pytest.raises(StoreDamagedError):
        open_store(tmp_path / "s").batch([12])
    world = cache_root(cfg) / "stores" / f"world-{cache_key(cfg)}.safetensors"  # world cache: a pickle
    world.parent.mkdir(parents=True)
    world.write_bytes(data)
    world.with_suffix(".json").write_bytes(data)
    logs = []
    store = load_or_build(cfg, lambda: (load_codec("pixel"), TextEncoder(t5, max_length=8)), log=logs.append)
    assert len(store) == 16 and any("rebuilding" in m for m in logs)
    assert not marker.exists()


def test_caption_files_holding_a_pickle_are_never_run(tmp_path, evil):
    data, marker = evil
    for name, error in (("c.pkl", "unknown caption file type '.pkl'"), ("c.tsv", "not UTF-8"),
                        ("c.jsonl", "not UTF-8")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CaptionFileError, match=error):
            read_captions(tmp_path / name)
    assert not marker.exists()


def test_model_folders_load_only_safetensors(tmp_path, evil):
    data, marker = evil
    t5 = tiny_t5(tmp_path / "t5")
    clip = tiny_clip(tmp_path / "clip", kind="full")
    vae = tiny_vae(tmp_path / "vae")
    ours = tmp_path / "ours"
    microt2i.models.save_pretrained(microt2i.models.build(tiny_cfg().model), ours)
    # each folder's safetensors weights swapped for a pickle under the name its library would fall back to
    for folder, st, pt in ((t5, "model.safetensors", "pytorch_model.bin"), (clip, "model.safetensors",
                           "pytorch_model.bin"), (vae, "diffusion_pytorch_model.safetensors",
                           "diffusion_pytorch_model.bin"), (ours, "model.safetensors", "pytorch_model.bin")):
        (folder / st).unlink()
        (folder / pt).write_bytes(data)
    loaders = [lambda: TextEncoder(str(t5)), lambda: load_image_text_model(str(clip)),
               lambda: load_codec(str(vae)), lambda: from_pretrained(ours)]
    for load in loaders:
        with pytest.raises(OSError, match="model.safetensors"):  # never falls back to the pickle
            load()
    assert not marker.exists()


def test_torch_load_only_with_weights_only_and_no_pickle_module():
    calls = [(p, ln) for p in SRC.rglob("*.py") for ln in p.read_text().splitlines()
             if "torch.load(" in ln and not ln.lstrip().startswith("#")]
    assert calls, "expected the training-state loader"
    assert all("weights_only=True" in ln for _, ln in calls), calls
    assert not [p for p in SRC.rglob("*.py") if re.search(r"^\s*(import pickle|from pickle|import dill)",
                                                          p.read_text(), re.M)]


def test_no_remote_code_without_the_user_flag(tmp_path, monkeypatch):
    hits = [f"{p.relative_to(SRC)}:{node.lineno}" for p in SRC.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.Call) and any(k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant)
                                                  and k.value.value is True for k in node.keywords)]
    assert hits == []  # no call of ours passes a literal True (docs may tell users to pass it themselves)
    folder = tmp_path / "jina"
    tiny_tokenizer(folder, specials={"pad_token": "<pad>", "unk_token": "<unk>"}, template="$A")
    (folder / "config.json").write_text('{"model_type": "jina_clip", "auto_map": {"AutoModel": "modeling.Evil"}}')
    (folder / "modeling.py").write_text(f"import os\nos.mkdir({str(tmp_path / 'PWNED')!r})\n")
    monkeypatch.delenv("MICROT2I_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(ValueError, match=r"runs Python code shipped in its folder.*MICROT2I_TRUST_REMOTE_CODE=1"):
        load_image_text_model(str(folder))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("key", ["../secret.JPEG", "n01440764/../../etc/passwd", "..\\..\\boot.ini", "C:\\x.jpg"])
def test_caption_keys_escaping_the_image_root_are_refused(tmp_path, key):
    f = tmp_path / "c.tsv"
    f.write_text(f"ok/a.JPEG\tfine\n{key}\ta red cube\n")
    with pytest.raises(CaptionFileError, match=r"c\.tsv:2: key .* leaves the image folder"):
        read_captions(f)


def test_caption_keys_with_dots_inside_names_are_fine(tmp_path):
    f = tmp_path / "c.tsv"
    f.write_text("a..b/c...JPEG\tfine\n./d.JPEG\talso fine\n")
    assert read_captions(f) == {"a..b/c...JPEG": ["fine"], "./d.JPEG": ["also fine"]}


def test_report_html_escapes_prompts(tmp_path):
    from microt2i.eval.pages import write_report

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "g.png")
    attack = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    page = write_report(tmp_path, title=attack, metrics={attack: 1.0}, images={attack: "g.png"},
                        samples=[{"prompt": attack}], config_text=f"prompt: </pre>{attack}").read_text()
    assert "<script>" not in page and "<img src=x" not in page and "</pre><script" not in page
    assert page.count("&lt;script&gt;") >= 5


def test_foreign_lock_file_is_never_trusted_as_a_live_holder(tmp_path):
    from microt2i.train.state import run_lock

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_bytes(b"\x00\xff" * 5000)  # not JSON, larger than what is read
    logs = []
    with run_lock(run, log=logs.append):
        assert (run / "run.lock").read_text().startswith('{"host"')
    assert "taking over the stale lock of pid ?" in logs[0] and not (run / "run.lock").exists()


def test_a_spoofed_export_marker_never_lets_overwrite_delete_a_run(tmp_path):
    from microt2i.export import EXPORT_MARKER, check_target

    target = tmp_path / "exports"
    (target / "deep" / "run" / "ema").mkdir(parents=True)
    (target / "deep" / "run" / "config.yaml").write_text("name: x\n")
    (target / EXPORT_MARKER).write_text("{}")
    with pytest.raises(FileExistsError, match="holds the training run .*deep/run; --overwrite never deletes runs"):
        check_target(tmp_path / "src", target, overwrite=True)
