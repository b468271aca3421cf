"""WebDataset shards from fsspec URLs and `pipe:` commands (data/remote.py), read like local shards."""

import gzip

import fsspec
import pytest
from _ingest_data import write_shards
from _tiny_models import tiny_t5

from microt2i.config import ConfigError, DataConfig
from microt2i.data.ingest import list_webdataset, load_item
from microt2i.data.precompute import precompute
from microt2i.data.remote import is_remote, shard_stem

QUIET = dict(log=lambda *_: None)


def _view(items):
    return [(it.key, it.captions, it.ref[0] if it.ref[0] == "skip" else "tar") for it in items]


def test_file_memory_gzip_and_pipe_sources_list_like_local_shards(tmp_path):
    paths = write_shards(tmp_path / "wds", per_shard=3, shards=2, uncaptioned={4})
    local = list_webdataset(str(tmp_path / "wds"))
    cache = tmp_path / "cache"
    mem = fsspec.filesystem("memory")
    for p in paths:
        mem.pipe(f"/wds/{p.name}", p.read_bytes())
        mem.pipe(f"/gz/{p.stem}.tar.gz", gzip.compress(p.read_bytes()))
    specs = [f"file://{tmp_path}/wds/{{00000..00001}}.tar", f"file://{tmp_path}/wds/*.tar", "memory:///wds/*.tar",
             "memory:///gz/{00000..00001}.tar.gz", f"pipe:cat {tmp_path}/wds/{{00000..00001}}.tar"]
    for spec in specs:
        assert is_remote(spec)
        items = list_webdataset(spec, cache=cache)
        assert _view(items) == _view(local), spec
        # the refs point at a local copy whose bytes are the member's, as for local shards
        assert load_item((items[5].ref, 8, 0))[0] is not None
    assert not is_remote(str(tmp_path)) and shard_stem("s3://b/x/00012.tar.gz?v=1") == "00012"
    assert shard_stem("pipe:aws s3 cp s3://b/cc/00003.tar -") == "00003"


def test_a_shard_cut_in_transit_is_counted_as_a_truncated_archive(tmp_path):
    (path,) = write_shards(tmp_path / "wds", per_shard=3, shards=1)
    data = path.read_bytes()
    cut = tmp_path / "cut" / "00000.tar"
    cut.parent.mkdir()
    cut.write_bytes(data[:len(data) // 2])
    z = gzip.compress(data)
    fsspec.filesystem("memory").pipe("/cut/00000.tar.gz", z[: len(z) * 9 // 10])
    want = _view(list_webdataset(str(cut.parent)))
    assert any(k == "skip" for *_, k in want)
    assert _view(list_webdataset(f"pipe:cat {cut}", cache=tmp_path / "c1")) == want
    gz = _view(list_webdataset("memory:///cut/00000.tar.gz", cache=tmp_path / "c2"))
    assert any("truncated" in key for key, *_ in gz)


@pytest.mark.parametrize("spec, err, msg", [
    ("s3://bucket/shards/{00000..00001}.tar", ConfigError, "pip install s3fs"),
    ("nosuchscheme://x/00000.tar", ConfigError, "unknown URL scheme 'nosuchscheme'"),
    ("pipe:false", RuntimeError, "the command exited with 1"),
    ("pipe:", ConfigError, "needs a command"),
    ("memory:///absent/00000.tar", FileNotFoundError, "does not exist"),
])
def test_bad_remote_sources_are_one_clear_error(tmp_path, spec, err, msg):
    if "s3fs" in msg:
        pytest.importorskip("fsspec")
        try:
            import s3fs  # noqa: F401
            pytest.skip("s3fs is installed here")
        except ImportError:
            pass
    with pytest.raises(err, match=msg) as e:
        list_webdataset(spec, cache=tmp_path)
    assert "\n" not in str(e.value)


def test_precompute_from_a_pipe_counts_skips_like_local_shards(tmp_path):
    t5 = str(tiny_t5(tmp_path / "t5"))
    write_shards(tmp_path / "wds", per_shard=4, shards=2, small={1}, bad={2}, uncaptioned={6})
    common = dict(source="webdataset", resolution=8, codec="pixel", text_encoder=t5, text_len=8, shard_size=3,
                  min_resolution=16, cache_dir=str(tmp_path / "cache"))
    reports = []
    for root, store in ((str(tmp_path / "wds"), "local"), (f"pipe:cat {tmp_path}/wds/{{00000..00001}}.tar", "pipe")):
        out = precompute(DataConfig(root=root, store_dir=str(tmp_path / store), **common), **QUIET)
        reports.append((out["report"]["total"], out["report"]["kept"], out["report"]["skipped"]))
    assert reports[0] == reports[1] == (8, 5, {"below min_resolution": 1, "not an image": 1, "no caption": 1})
