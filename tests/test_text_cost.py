"""Text-encoder lengths, truncation counts, storage dtypes and the MicroDiT paper Table 2 cost command."""

from __future__ import annotations

import pytest
import torch

from microt2i.cost import format_text_cost_table
from microt2i.encoders.text import TextEncoder, measure_text_encoder, storage_bytes

from _tiny_models import tiny_clip, tiny_t5

# word-level tiny tokenizers: one token per word, plus </s> (T5) or <bos> … <eos> (CLIP)
CAPTIONS = ["a red cube", "a red cube on the left", "", "one two three red green blue cube sphere cone on left"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return tiny_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"), kind="projection")


def test_storage_closed_form_matches_paper_table2():
    # MicroDiT ("Stretching Each Dollar") Table 2, one H100, fp16, per 1M captions: (length, width, storage GB)
    for length, dim, gb in ((77, 1024, 157), (120, 4096, 983)):  # CLIP ViT-H-14, T5-xxl: N·L·D·2 bytes
        assert int(storage_bytes(10**6, length, dim, torch.float16) / 1e9) == gb
    assert storage_bytes(3, 77, 1024, torch.float32) == 3 * 77 * 1024 * 4
    assert storage_bytes(3, 77, 1024, torch.bfloat16, with_mask=True) == 3 * 77 * (1024 * 2 + 1)


def test_default_lengths(t5_dir, clip_dir):
    assert TextEncoder(str(t5_dir)).max_length == 256  # the authors' create_wds.py
    clip = TextEncoder(str(clip_dir))
    assert clip.max_length == clip.model.config.max_position_embeddings == 32  # CLIP's own limit (77 for real CLIP)
    with pytest.raises(ValueError, match="exceeds"):
        TextEncoder(str(clip_dir), max_length=33)


def test_truncation_is_counted_and_reported(t5_dir, clip_dir):
    logs = []
    t5 = TextEncoder(str(t5_dir), max_length=5, log=logs.append)
    assert t5.token_counts(CAPTIONS) == [4, 7, 1, 12]
    t5.encode(CAPTIONS)
    assert (t5.truncation.captions, t5.truncation.truncated, t5.truncation.longest) == (4, 2, 12)
    assert logs == [f"[text] {t5.name}: 2 of 4 captions exceed 5 tokens and were truncated (longest: 12 tokens)"]
    t5.encode(CAPTIONS[:1])  # nothing cut: nothing logged, counts accumulate
    assert len(logs) == 1 and t5.truncation.captions == 5
    assert t5.truncation.report(5).startswith("2 of 5 captions (40.0%) exceed 5 tokens")
    clip = TextEncoder(str(clip_dir), max_length=8, log=logs.append)
    assert clip.token_counts(CAPTIONS) == [5, 8, 2, 13]  # <bos> … <eos>
    clip.encode(CAPTIONS)
    assert clip.truncation.truncated == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage(t5_dir, dtype):
    full = TextEncoder(str(t5_dir), max_length=12).encode(CAPTIONS)
    half = TextEncoder(str(t5_dir), max_length=12, storage_dtype=dtype).encode(CAPTIONS)
    assert half.tokens.dtype == dtype and half.pooled.dtype == dtype and half.mask.dtype == torch.bool
    assert torch.equal(half.tokens, full.tokens.to(dtype)) and torch.equal(half.mask, full.mask)
    assert TextEncoder(str(t5_dir), max_length=12, storage_dtype=dtype).encode([]).tokens.dtype == dtype
    with pytest.raises(ValueError, match="storage_dtype"):
        TextEncoder(str(t5_dir), storage_dtype=torch.int8)


def test_measure_and_table(t5_dir):
    enc = TextEncoder(str(t5_dir), max_length=6, storage_dtype=torch.float16, batch_size=2)
    cost = measure_text_encoder(enc, CAPTIONS * 4, repeats=3)
    assert cost.batch_size == 16 and cost.seconds_per_batch > 0 and cost.truncated == 0.5
    assert cost.seconds_per_million == pytest.approx(cost.seconds_per_batch / 16 * 1e6)
    assert cost.gb_per_million == storage_bytes(10**6, 6, 16, torch.float16) / 1e9
    assert enc.batch_size == 2 and enc.log is print  # restored
    table = format_text_cost_table([cost], "cpu")
    row = next(line for line in table.splitlines() if line.startswith(f"| {enc.name} |"))
    assert "| t5 | 6 | 16 | fp16 | 16 |" in row and row.endswith("| 0.2 | 50% |")
    assert "| T5 (T5-xxl) | 120 | 4096 | 33:04 | 983 |" in table


def test_cost_text_encoders_cli(t5_dir, clip_dir, capsys):
    from microt2i.cli import main

    rc = main(["cost", "text-encoders", "--encoders", f"{t5_dir},{clip_dir},nobody/no-such-encoder",
               "--repeats", "1", "--batch-size", "4", "--length", "16"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert f"| {t5_dir} | t5 | 16 | 16 | fp16 | 4 |" in out
    assert f"| {clip_dir} | clip_text_model | 16 | 16 | fp16 | 4 |" in out
    assert "skipped nobody/no-such-encoder" in out
