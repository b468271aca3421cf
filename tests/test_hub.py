"""`export --push-to-hub REPO` and `train --init HUB_ID` (hub.py, encoders/hub.py): the Hub client's network calls
are replaced at the boundary (HfApi.create_repo / upload_folder, snapshot_download); we assert what would be sent."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file

from microt2i import presets
from microt2i.cli import main, parse_cli
from microt2i.config import apply_overrides
from microt2i.export import export_run
from microt2i.train.finetune import finetune
from microt2i.train.loop import train
from microt2i.train.state import load_latest

QUIET = {"progress": False, "log": lambda *_: None}


def tiny(*extra):
    return apply_overrides(presets.get("world-tiny"), [
        "train.device=cpu", "train.total_nimg=32", "train.batch_size=16", "train.threads=1", "eval.steps=2",
        "data.num_images=32", *extra])


@pytest.fixture(scope="module")
def base(tmp_path_factory, cache):
    """A finished tiny run exported as a diffusers folder: what a Hub model repo of ours holds."""
    root = tmp_path_factory.mktemp("hub")
    train(tiny(), root / "base", **QUIET)
    return export_run(root / "base", root / "base-export", grid=False, log=lambda *_: None)


def test_train_init_from_a_hub_id_downloads_into_the_cache_then_reads_the_folder(base, tmp_path, monkeypatch):
    calls = []

    def fake_snapshot(repo_id, **kw):  # the Hub's cache already holds the repo (or the download put it there)
        calls.append((repo_id, kw))
        return str(base)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    out = finetune(tiny("train.init=someone/microt2i-base"), tmp_path / "ft", stop_nimg=0, **QUIET)
    assert calls[0] == ("someone/microt2i-base", {"local_files_only": True}) and out["nimg"] == 0
    info = json.loads((tmp_path / "ft" / "init.json").read_text())
    assert Path(info["init"]) == base / "transformer" and info["kind"] == "export"
    # the run's first checkpoint holds exactly the exported weights
    exported = {k[4:]: v for k, v in load_file(str(base / "transformer" / "diffusion_pytorch_model.safetensors"))
                .items() if k.startswith("net.")}
    start = load_latest(tmp_path / "ft")["model"]
    assert exported.keys() == start.keys() and all(torch.equal(exported[k], start[k].to(exported[k].dtype))
                                                   for k in exported)


def test_train_init_hub_id_offline_and_not_cached_names_the_fix(tmp_path, monkeypatch):
    def not_cached(repo_id, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 is set: unset HF_HUB_OFFLINE") as e:
        finetune(tiny("train.init=someone/absent"), tmp_path / "ft", **QUIET)
    assert "\n" not in str(e.value)


def test_push_to_hub_uploads_the_export_with_a_complete_model_card(base, tmp_path, monkeypatch, capsys):
    sent = {}

    def create_repo(self, repo_id, **kw):
        sent["create"] = (repo_id, kw)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        root = Path(folder_path)
        sent["upload"] = (repo_id, kw)
        sent["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                               and not p.name.startswith("."))
        sent["readme"] = (root / "README.md").read_text()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    # a fine-tune of a Hub model: its card names the base model
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(base))
    ft = tmp_path / "ft"
    finetune(tiny("train.init=someone/microt2i-base"), ft, **QUIET)
    out = tmp_path / "ft-export"
    assert main(["export", str(ft), str(out), "--no-grid", "--no-progress", "--push-to-hub", "me/microt2i-ft",
                 "--license", "apache-2.0", "--private"]) == 0
    assert sent["create"] == ("me/microt2i-ft", {"repo_type": "model", "private": True, "exist_ok": True})
    assert sent["upload"][0] == "me/microt2i-ft"
    assert {"model_index.json", "pipeline.py", "README.md", "training_config.yaml", "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors"} <= set(sent["files"])
    card = huggingface_hub.ModelCard(sent["readme"])
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert card.data.license == "apache-2.0" and card.data.base_model == "someone/microt2i-base"
    assert {"microt2i", "text-to-image"} <= set(card.data.tags)
    assert "## Training details" in card.text and "32 images seen, batch 16" in card.text
    assert "fine-tuned from [someone/microt2i-base]" in card.text and "## Training config" in card.text


@pytest.mark.parametrize("repo, msg", [("me/x", "HF_HUB_OFFLINE=1 is set"), ("not a/valid/id", "is not a Hub repo id")])
def test_push_refusals_are_one_line_before_any_work(base, tmp_path, monkeypatch, capsys, repo, msg):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = base.parent / "base"
    assert main(["export", str(run), str(tmp_path / "out"), "--no-grid", "--push-to-hub", repo]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:  # --push-to-hub without its repo id: argparse's usage error
        parse_cli(["export", str(run), str(tmp_path / "out"), "--push-to-hub"])
    assert e.value.code == 2
