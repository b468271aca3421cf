"""Caption files (TSV / JSONL / CSV / HF datasets), crash-safe appends, per-step caption choice, ImageNet synsets."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from microt2i.data.captions import (
    CaptionFileError,
    append_captions,
    caption_choice,
    pick_caption,
    read_captions,
    repair_tail,
    write_captions,
)
from microt2i.data.synsets import imagenet_classes, imagenet_lemmas, synset_to_index


def _rows(n: int) -> list[tuple[str, str]]:
    # thousands of rows, several captions for some keys, unicode and quotes
    rows = [(f"n{i % 997:08d}/img_{i}.JPEG", f"A photo “{i}” of a café, with \"quotes\" and ünïcode. Row {i}.")
            for i in range(n)]
    rows += [(rows[i][0], f"second caption for {i}") for i in range(0, n, 7)]
    return rows


def _as_dict(rows):
    out = {}
    for k, c in rows:
        out.setdefault(k, []).append(c)
    return out


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_thousands_of_rows_round_trip(tmp_path, suffix):
    rows = _rows(5000)
    path = tmp_path / f"captions{suffix}"
    write_captions(path, rows)
    got = read_captions(path)
    assert got == _as_dict(rows)
    assert sum(map(len, got.values())) == len(rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_append_in_chunks_equals_one_write(tmp_path):
    rows = _rows(1200)
    for i in range(0, len(rows), 100):
        append_captions(tmp_path / "a.tsv", rows[i : i + 100])
    write_captions(tmp_path / "b.tsv", rows)
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()


def test_torn_tail_is_cut_before_next_append(tmp_path):
    path = tmp_path / "c.tsv"
    append_captions(path, [("a.jpg", "first."), ("b.jpg", "second.")])
    with open(path, "ab") as f:
        f.write(b"c.jpg\tthird, torn mid-wri")  # a killed append
    append_captions(path, [("c.jpg", "third.")])
    assert read_captions(path) == {"a.jpg": ["first."], "b.jpg": ["second."], "c.jpg": ["third."]}
    assert repair_tail(path) == 0
    with open(path, "ab") as f:
        f.write(b"no newline at all")
    assert repair_tail(path) == len(b"no newline at all")


def test_tsv_header_and_blank_lines(tmp_path):
    path = tmp_path / "h.tsv"
    path.write_text("filename\tcaption\nx.png\tA cat.\n\ny.png\tA dog.\tWith a tab.\n")
    assert read_captions(path) == {"x.png": ["A cat."], "y.png": ["A dog.\tWith a tab."]}


def test_malformed_rows_name_file_and_line(tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("a.jpg\tok\nb.jpg no tab here\n")
    with pytest.raises(CaptionFileError, match=r"bad\.tsv:2: .*no tab"):
        read_captions(tsv)
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"key": "a", "caption": "ok"}\n{"key": "b", "caption": \n')
    with pytest.raises(CaptionFileError, match=r"bad\.jsonl:2: not valid JSON"):
        read_captions(jl)
    jl.write_text('{"key": "a", "caption": "ok"}\n{"name": "b", "caption": "x"}\n')
    with pytest.raises(CaptionFileError, match=r"bad\.jsonl:2: no key column"):
        read_captions(jl)
    jl.write_text('{"key": "a", "caption": 3}\n')
    with pytest.raises(CaptionFileError, match=r"bad\.jsonl:1: captions must be strings"):
        read_captions(jl)
    with pytest.raises(CaptionFileError, match="tab or newline"):
        write_captions(tmp_path / "w.tsv", [("a", "two\nlines")])
    with pytest.raises(CaptionFileError, match="unknown caption file type"):
        write_captions(tmp_path / "w.parquet", [("a", "b")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_captions(tmp_path / "missing.tsv")


def test_jsonl_captions_list_and_filename_column(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [{"filename": "a.jpg", "captions": ["one.", "two."]}, {"filename": "b.jpg", "caption": "three."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert read_captions(path) == {"a.jpg": ["one.", "two."], "b.jpg": ["three."]}
    path.write_text(json.dumps({"img": "a.jpg", "long": "x."}) + "\n")
    assert read_captions(path, key_column="img", caption_column="long") == {"a.jpg": ["x."]}


def test_csv_and_glob_of_shards(tmp_path):
    (tmp_path / "c.csv").write_text('file_name,text\na.jpg,"A cat, sitting."\n')
    assert read_captions(tmp_path / "c.csv") == {"a.jpg": ["A cat, sitting."]}
    write_captions(tmp_path / "cap.shard0of2.tsv", [("a", "x.")])
    write_captions(tmp_path / "cap.shard1of2.tsv", [("b", "y."), ("a", "z.")])
    assert read_captions(str(tmp_path / "cap.shard*.tsv")) == {"a": ["x.", "z."], "b": ["y."]}


def test_hf_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image_id": ["a.jpg", "b.jpg"], "long_caption": [["A.", "B."], ["C."]]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert read_captions(tmp_path / "ds") == {"a.jpg": ["A.", "B."], "b.jpg": ["C."]}
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    assert read_captions(tmp_path / "dd", split="validation")["b.jpg"] == ["C."]
    with pytest.raises(CaptionFileError, match="no split 'train'"):
        read_captions(tmp_path / "dd")


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CaptionFileError, match="could not load the dataset 'nobody/no-such-captions'.*save_to_disk"):
        read_captions("nobody/no-such-captions")


def test_pick_caption_deterministic_and_covers_all():
    caps = ["a", "b", "c"]
    picks = [pick_caption(caps, 0, step, 5) for step in range(3000)]
    assert picks == [pick_caption(caps, 0, step, 5) for step in range(3000)]  # pure function
    counts = Counter(picks)
    assert set(counts) == set(caps) and min(counts.values()) > 900  # ~uniform (1000 each)
    # different seed / index give a different sequence; a single caption is always picked
    assert picks != [pick_caption(caps, 1, step, 5) for step in range(3000)]
    assert picks != [pick_caption(caps, 0, step, 6) for step in range(3000)]
    assert pick_caption(["only"], 3, 99, 7) == "only"
    with pytest.raises(ValueError, match="no captions"):
        caption_choice(0, 0, 0, 4)


def test_imagenet_classes():
    classes = imagenet_classes()
    assert len(classes) == 1000 and len({s for s, _ in classes}) == 1000
    assert classes[0] == ("n01440764", "tench")
    assert classes[1] == ("n01443537", "goldfish")
    assert classes[207] == ("n02099601", "golden retriever")
    assert classes[999] == ("n15075141", "toilet tissue")
    assert [s for s, _ in classes] == sorted(s for s, _ in classes)  # the standard index order is sorted synsets
    assert imagenet_lemmas("n01440764") == ("tench", "Tinca tinca")
    assert synset_to_index()["n15075141"] == 999
    with pytest.raises(KeyError, match="not an ImageNet-1k synset"):
        imagenet_lemmas("n0")
    assert os.path.getsize(__import__("microt2i.data.synsets", fromlist=["_TSV"])._TSV) > 20_000
