"""The one-shot GPU proof (`microt2i bench gpu`, benchmarks/gpu_proof.sh) cannot rot without a GPU: its `--smoke`
mode runs the same code path on the CPU (tiny world presets), and the record it writes is checked field by field."""

import json

import pytest
import torch

from microt2i.bench_gpu import GOALS_IMG_S, PROOF_PRESETS, SECTION, gpu_proof, proof_rows, write_proof_md
from microt2i.cli import main


@pytest.fixture(scope="module")
def record():
    torch.set_num_threads(1)
    return gpu_proof(smoke=True, device="cpu", log=lambda *_: None)


def test_smoke_record_has_every_field(record):
    assert record["smoke"] and record["device"] and record["date"] and record["torch"] == torch.__version__
    assert [p["preset"] for p in record["presets"]] == list(PROOF_PRESETS)
    for p in record["presets"]:
        assert p["ran"] == PROOF_PRESETS[p["preset"]] and p["precision"] == "bf16" and p["batch_size"] == 4
        assert p["img_s_eager"] > 0 and p["img_s_compiled"] > 0 and p["compile_s"] > 0, p
        assert p["train_flops_per_img"] > 0 and p["params"] > 0
        assert p["mfu_eager"] is None and p["peak_mem_gib"] is None  # a CPU: no bf16 peak, no CUDA allocator
        # every attention of the step ran through SDPA's CPU flash kernel, and the profiler saw each call
        assert set(p["attention"]) == {"flash (cpu)"} and p["attention"]["flash (cpu)"] > 0
        assert p["goal_img_s"] == GOALS_IMG_S.get(p["preset"])
    assert record["presets"][0]["mask_ratio"] == 0.75  # MicroDiT stage 1 trains masked
    a = record["bf16_vs_fp32"]
    assert len(a["loss_fp32"]) == len(a["loss_bf16"]) == a["steps"] == 3
    assert a["loss_fp32"] != a["loss_bf16"]  # bf16 really ran in bf16 ...
    assert a["agree"] and a["max_rel_diff"] < 0.05  # ... and still tracks fp32
    json.dumps(record)  # the --json record is plain data


def test_the_rows_land_in_their_own_section_atomically(record, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Other\n\nkept as is\n")
    write_proof_md(record, md)
    write_proof_md(record, md)
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\n## Other\n\nkept as is\n") and text.count(SECTION) == 1
    rows = [ln for ln in text.split(SECTION)[1].splitlines() if ln.startswith(f"| {record['date'][:10]}")]
    assert rows == proof_rows(record).splitlines() * 2 and len(rows) == 2 * (len(PROOF_PRESETS) + 1)
    assert "microdit-xl-2 (world-microdit-tiny, smoke)" in rows[0] and "1,330" in rows[0] and "flash (cpu)" in rows[0]
    assert not list(tmp_path.glob("*.tmp*"))


def test_without_a_gpu_the_full_proof_refuses_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "gpu", "--no-write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0] and "--smoke" in err[0]
