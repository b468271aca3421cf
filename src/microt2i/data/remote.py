"""WebDataset shards from anywhere: any fsspec URL (`s3://`, `gs://`, `https://`, `file://`, `memory://`, …) or a
`pipe:` command (webdataset's notation: the command writes the shard to stdout, e.g. `pipe:aws s3 cp s3://b/x.tar -`).

Each shard is streamed once into the data cache (`<cache>/webdataset/<hash of the URL>/<shard stem>.tar`, written
to a temp name and renamed) and gzip-compressed shards (`.tar.gz`, `.tgz`, or gzip magic) are decompressed on the
way. The local-tar reader (data/ingest.py `list_webdataset`) then lists and reads the copy by offset exactly as it
reads local shards, so the sample keys (`<shard stem>/<key>`) and the per-reason skip accounting ("truncated
archive", "no image", "not an image", …) are the same; a shard cut in transit is a truncated archive there.
We use fsspec (installed with datasets / huggingface_hub) rather than the `webdataset` package: the store needs
random access by offset for exact resume, which webdataset's streaming pipeline does not give.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

from ..config import ConfigError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")
# backends fsspec names but does not ship, and the package that provides each
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs", "hdfs": "pyarrow", "sftp": "paramiko", "ssh": "paramiko"}
CHUNK = 1 << 20


def is_remote(spec: str) -> bool:
    """A `pipe:` command or a URL with a scheme (anything but a plain local path)."""
    return spec.startswith("pipe:") or bool(_SCHEME.match(spec))


def expand_braces(spec: str) -> list[str]:
    """`a/{00000..00012}.tar` → the 13 names (zero padding kept); a spec without a range is itself."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if not m:
        return [spec]
    lo, hi, width = int(m[1]), int(m[2]), len(m[1])
    return [spec[:m.start()] + f"{i:0{width}d}" + spec[m.end():] for i in range(lo, hi + 1)]


def shard_stem(name: str) -> str:
    """`.../00012.tar.gz` → `00012` (the part of the sample keys that names the shard); in a `pipe:` command the last
    word naming a tar (`pipe:aws s3 cp s3://b/00012.tar -` → `00012`)."""
    found = re.findall(r"([^/\s?]+?)(?:\.tar\.gz|\.tgz|\.tar)(?=$|[\s?])", name)
    if found:
        return found[-1]
    base = name.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    return re.sub(r"[^\w.\-]+", "_", base) or hashlib.sha256(name.encode()).hexdigest()[:8]


def _filesystem(url: str):
    """(fsspec filesystem, path) of `url`; a missing backend or an unknown scheme is one ConfigError."""
    import fsspec  # optional at import time: only remote shards need it

    scheme = _SCHEME.match(url)[1].lower()
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        pkg = _BACKENDS.get(scheme, str(e).split("Install ")[-1].split()[0] if "Install " in str(e) else "its fsspec backend")
        raise ConfigError(f"data.root={url!r}: reading {scheme}:// needs {pkg}: pip install {pkg}") from None
    except ValueError as e:
        if "not known" in str(e) or "protocol" in str(e).lower():
            raise ConfigError(f"data.root={url!r}: unknown URL scheme {scheme!r}; use a local path, an fsspec URL "
                              f"(file://, https://, s3://, gs://, …) or pipe:<command writing a tar to stdout>") from None
        raise
    return fs, path


def list_remote(spec: str) -> list[str]:
    """The shard URLs / pipe commands of `spec`: brace ranges expanded; globs (`*`, `?`) listed through fsspec."""
    if spec.startswith("pipe:"):
        if not spec[5:].strip():
            raise ConfigError("data.root='pipe:' needs a command after it, e.g. pipe:cat shards/00000.tar")
        return expand_braces(spec)
    out = []
    for url in expand_braces(spec):
        if any(c in url.split("://", 1)[1] for c in "*?["):
            fs, path = _filesystem(url)
            scheme = _SCHEME.match(url)[1]
            out += [f"{scheme}://{p}" if "://" not in p else p for p in sorted(fs.glob(path))]
        else:
            out.append(url)
    if not out:
        raise FileNotFoundError(f"no tar shards match data.root={spec!r}")
    return out


def _open_source(source: str):
    """(readable binary stream, close function returning an error message or "") of a URL or a pipe: command."""
    if source.startswith("pipe:"):
        proc = subprocess.Popen(source[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def close() -> str:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            code = proc.wait()
            return f"the command exited with {code}: {err.splitlines()[-1] if err else '(no message)'}" if code else ""

        return proc.stdout, close
    fs, path = _filesystem(source)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"shard {source} does not exist; fix data.root") from None
    return f, lambda: (f.close(), "")[1]


def fetch_shard(source: str, cache: Path, log=print) -> Path:
    """A local uncompressed copy of one shard (downloaded or piped once, gunzipped on the way), reused afterwards."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    dest = Path(cache) / "webdataset" / digest / f"{shard_stem(source)}.tar"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    stream, close = _open_source(source)
    try:
        head = stream.read(2)
        gz = head == b"\x1f\x8b"
        with open(tmp, "wb") as out:
            if gz:  # gzip magic: decompress the stream chunk by chunk; a cut stream keeps what decompressed, and
                _gunzip(head, stream, out)  # the tar reader then counts the cut as a truncated archive
            else:
                out.write(head)
                shutil.copyfileobj(stream, out, CHUNK)
    finally:
        err = close()
    if err:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"data.root shard {source!r}: {err}")
    os.replace(tmp, dest)
    log(f"[data] fetched {source} → {dest} ({dest.stat().st_size / 2**20:.1f} MiB{', gunzipped' if gz else ''})")
    return dest


def fetch_shards(spec: str, cache: Path, log=print) -> list[Path]:
    """Local copies of every shard of a remote `spec` (see the module docstring), in the order of `spec`."""
    return [fetch_shard(s, cache, log=log) for s in list_remote(spec)]


def _gunzip(head: bytes, stream, out) -> None:
    """gzip (one or more members) from `head` + `stream` into `out`, incrementally: output of a cut or corrupt stream
    up to the damage is kept."""
    d, chunk = zlib.decompressobj(wbits=31), head
    while chunk:
        try:
            out.write(d.decompress(chunk))
        except zlib.error:  # corrupt data: stop here, the tar reader sees where it ends
            return
        while d.eof and d.unused_data:  # a further gzip member
            rest, d = d.unused_data, zlib.decompressobj(wbits=31)
            try:
                out.write(d.decompress(rest))
            except zlib.error:
                return
        chunk = stream.read(CHUNK)
