"""The kill-anywhere soak (benchmarks/soak.py): ≥ 20 SIGKILLs across precompute and training, including inside
checkpoint and shard writes; the resumed results equal uninterrupted runs bit for bit. Minutes on 2 cores: slow."""

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
def test_soak_twenty_kills_resume_to_identical_results(tmp_path):
    spec = importlib.util.spec_from_file_location("soak", Path(__file__).parents[1] / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    out = soak.run(kills=20, precompute_kills=5, seed=1, workdir=tmp_path, log=lambda *_: None)
    assert out["kills"] == 20, out["events"]
    assert out["checks"] == {"store_files_equal": True, "ema_weights_equal": True, "checkpoint_equal": True,
                             "stats_equal": True, "no_temp_files": True}
    landed = out["landed"]
    assert landed.get("train: mid-write of a checkpoint", 0) >= 1 and landed.get("precompute: mid-write of a shard", 0) >= 1
    assert sum(n for k, n in landed.items() if k.startswith("precompute")) == 5
    assert out["max_temp_files_between_runs"] <= 1  # a kill leaves at most one temp file; the restart removes it
