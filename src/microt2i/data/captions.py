"""Caption files: image key → one or more captions (ImageNet-T2I §2.1: long LLaVA captions replace AIO captions).

Formats, picked by the path:
- TSV (`.tsv`, `.txt`): `filename<TAB>caption` per line, as the authors' `captions.tsv` (T2I-ImageNet's captioning code); a key may
  repeat (several captions per image); an optional header line `filename<TAB>caption` is skipped.
- CSV (`.csv`, read only): a header naming the key and caption columns.
- JSONL (`.jsonl`): one object per line, `{"key" | "filename": ..., "caption": str}` or `"captions": [str, ...]`.
- HF datasets: a folder written by `save_to_disk` (`load_from_disk`) or a hub id (`load_dataset`), columns
  configurable; a caption column may hold strings or lists of strings.
- a glob (`captions.shard*.tsv`): the union of the matching files (what a sharded `microt2i caption` job writes).

Untrusted input: files must be UTF-8 (a bad line is named), keys are relative paths that may not leave the image
root (`../x`, `/x` are refused), empty or whitespace-only captions are dropped (an image left with none is skipped
by precompute and counted as "no caption"), and a repeated key means several captions for one image.

`append_captions` is the crash-safe writer of the resumable captioning job: each call is one `write` of whole,
newline-terminated rows followed by fsync, and an unterminated tail left by a killed append is cut before the next
append, so a resumed job neither loses nor duplicates rows.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..io import atomic_write_text
from ..encoders.hub import offline

KEY_COLUMNS = ("key", "filename", "file_name", "image", "path", "image_id", "id", "__key__")
CAPTION_COLUMNS = ("caption", "captions", "text", "long_caption", "llava_caption")
_TSV_SUFFIXES = (".tsv", ".txt")


class CaptionFileError(ValueError):
    """A caption file is malformed; the message names the file and line."""


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _TSV_SUFFIXES:
        return "tsv"
    if suffix in (".jsonl", ".csv"):
        return suffix[1:]
    raise CaptionFileError(f"{path}: unknown caption file type {suffix!r}; use .tsv (filename<TAB>caption) or .jsonl")


def _add(out: dict[str, list[str]], key, caption, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise CaptionFileError(f"{where}: the key must be a non-empty string, got {key!r}")
    parts = PurePosixPath(key.replace("\\", "/")).parts
    if key.startswith(("/", "\\")) or ".." in parts or (len(key) > 1 and key[1] == ":"):
        raise CaptionFileError(f"{where}: key {key!r} leaves the image folder (absolute path or '..'); keys are "
                               f"paths relative to the image root, e.g. 'n01440764/n01440764_10026.JPEG'")
    captions = caption if isinstance(caption, list | tuple) else [caption]
    for c in captions:
        if not isinstance(c, str):
            raise CaptionFileError(f"{where}: captions must be strings, got {type(c).__name__} {c!r:.60}")
        if c.strip():  # an empty / whitespace-only caption is no caption: an image left without any is skipped
            out.setdefault(key, []).append(c)


BOM = b"\xef\xbb\xbf"


def decode_utf8(raw: bytes, where: str, line: int = 1) -> str:
    """The UTF-8 text of `raw`, the bytes of file `where` from line `line` on (a byte-order mark at the file's start is
    dropped). Any other encoding is one CaptionFileError naming file:line and the fix: every ingest path (caption
    files, sidecar captions, WebDataset members, labels and prompt files) reads text through here."""
    if line == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        n = line + raw.count(b"\n", 0, e.start)
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise CaptionFileError(f"{where}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column {col}); re-encode the "
                               f"file, e.g. `iconv -f latin1 -t utf-8`") from None


def read_text_utf8(path: str | os.PathLike) -> str:
    """A whole text file through `decode_utf8`."""
    return decode_utf8(Path(path).read_bytes(), str(path))


def _lines(path: Path):
    """(line number, text) of a UTF-8 text file, split on \\n only; a non-UTF-8 line is one clear error."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            yield n, decode_utf8(raw, str(path), n)


def _read_tsv(path: Path, out: dict[str, list[str]]) -> None:
    for n, line in _lines(path):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            raise CaptionFileError(f"{path}:{n}: expected 'filename<TAB>caption', found no tab in {line!r:.80}")
        if n == 1 and key.lower() in KEY_COLUMNS and caption.lower() in CAPTION_COLUMNS:
            continue  # header
        _add(out, key, caption, f"{path}:{n}")


def _read_jsonl(path: Path, out: dict[str, list[str]], key_column: str | None, caption_column: str | None) -> None:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaptionFileError(f"{path}:{n}: not valid JSON ({e.msg}): {line.strip()!r:.80}") from None
        if not isinstance(row, dict):
            raise CaptionFileError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        kc, cc = _columns(list(row), key_column, caption_column, f"{path}:{n}")
        _add(out, row[kc], row[cc], f"{path}:{n}")


def _read_csv(path: Path, out: dict[str, list[str]], key_column: str | None, caption_column: str | None) -> None:
    rows = "".join(line for _, line in _lines(path))  # decoded line by line: a non-UTF-8 line is named
    reader = csv.DictReader(io.StringIO(rows, newline=""))
    kc, cc = _columns(list(reader.fieldnames or []), key_column, caption_column, f"{path}:1 (header)")
    for row in reader:
        _add(out, row[kc], row[cc], f"{path}:{reader.line_num}")


def _columns(names: list[str], key_column: str | None, caption_column: str | None, where: str) -> tuple[str, str]:
    """The key and caption column among `names`: the given ones, else the first known name present."""
    picked = []
    for given, known, what in ((key_column, KEY_COLUMNS, "key"), (caption_column, CAPTION_COLUMNS, "caption")):
        name = given if given is not None else next((c for c in known if c in names), None)
        if name is None or name not in names:
            hint = f"'{given}'" if given else f"any of {', '.join(known)}"
            raise CaptionFileError(f"{where}: no {what} column ({hint}) among {names}; pass {what}_column=...")
        picked.append(name)
    return picked[0], picked[1]


def load_hf_dataset(source: str, split: str = "train", *, error=ValueError, split_error=None,
                    hint: str = "pass split=..."):
    """A HF `datasets` set from a `save_to_disk` folder or a hub id, split `split` of a DatasetDict. A failed load
    raises `error` (a missing split `split_error`, default `error`) with one line naming the input and the fix;
    with HF_HUB_OFFLINE set after import, the hub is not retried."""
    import datasets  # optional extra `data`: Hub / saved data sets only
    import huggingface_hub  # only when a Hub id has to be resolved

    # both libraries read HF_HUB_OFFLINE once at import; honour a later setting instead of retrying the hub
    flags = [(datasets.config, "HF_HUB_OFFLINE"), (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved = [getattr(m, a) for m, a in flags]
    try:
        if offline():
            for m, a in flags:
                setattr(m, a, True)
        folder = Path(source).expanduser()
        ds = datasets.load_from_disk(str(folder)) if folder.is_dir() else datasets.load_dataset(source, split=split)
    except Exception as e:  # offline hub, unknown id, not a datasets folder
        cause = (str(e).strip().splitlines() or [""])[0]
        raise error(f"could not load the dataset {source!r} ({type(e).__name__}: {cause}); pass a folder written "
                    f"by `Dataset.save_to_disk` or a hub id reachable from this machine") from None
    finally:
        for (m, a), value in zip(flags, saved):
            setattr(m, a, value)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise (split_error or error)(f"{source}: no split {split!r}; it has {list(ds)} ({hint})")
        ds = ds[split]
    return ds


def _read_dataset(source: str, out, key_column, caption_column, split: str) -> None:
    ds = load_hf_dataset(source, split, error=CaptionFileError)
    kc, cc = _columns(ds.column_names, key_column, caption_column, source)
    for i, (key, caption) in enumerate(zip(ds[kc], ds[cc])):
        _add(out, str(key) if isinstance(key, int) else key, caption, f"{source} row {i}")


def read_captions(
    source: str | os.PathLike,
    *,
    key_column: str | None = None,
    caption_column: str | None = None,
    split: str = "train",
) -> dict[str, list[str]]:
    """Key (image filename / relative path) → its captions, in file order. See the module docstring for formats."""
    out: dict[str, list[str]] = {}
    spec = os.fspath(source)
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = sorted(glob.glob(os.path.expanduser(spec)))
        if not files:
            raise FileNotFoundError(f"no caption files match {spec!r}")
        for f in files:
            for key, captions in read_captions(f, key_column=key_column, caption_column=caption_column).items():
                out.setdefault(key, []).extend(captions)
        return out
    if path.is_file():
        kind = _format(path)
        if kind == "tsv":
            _read_tsv(path, out)
        elif kind == "jsonl":
            _read_jsonl(path, out, key_column, caption_column)
        else:
            _read_csv(path, out, key_column, caption_column)
        return out
    if path.is_dir() or (spec.count("/") <= 1 and not spec.startswith((".", "/", "~")) and not path.suffix):
        _read_dataset(spec, out, key_column, caption_column, split)
        return out
    raise FileNotFoundError(
        f"caption source {spec!r} does not exist; pass a .tsv/.jsonl file, a datasets folder or a hub id"
    )


def _encode_rows(path: Path, rows: Iterable[tuple[str, str]]) -> str:
    kind = _format(path)
    if kind == "csv":
        raise CaptionFileError(f"{path}: writing .csv is not supported; use .tsv or .jsonl")
    buf = io.StringIO()
    for key, caption in rows:
        if not isinstance(key, str) or not key or any(c in key for c in "\t\n\r"):
            raise CaptionFileError(f"{path}: key {key!r} must be a non-empty string without tabs or newlines")
        if not isinstance(caption, str):
            raise CaptionFileError(f"{path}: the caption of {key!r} must be a string, got {type(caption).__name__}")
        if kind == "tsv":
            if any(c in caption for c in "\t\n\r"):
                raise CaptionFileError(
                    f"{path}: the caption of {key!r} holds a tab or newline, which TSV cannot store; "
                    "collapse whitespace first or write .jsonl"
                )
            buf.write(f"{key}\t{caption}\n")
        else:
            buf.write(json.dumps({"key": key, "caption": caption}, ensure_ascii=False) + "\n")
    return buf.getvalue()


def write_captions(path: str | os.PathLike, rows: Iterable[tuple[str, str]]) -> None:
    """Write (key, caption) rows atomically (temp file + rename); the format follows the suffix (.tsv / .jsonl)."""
    path = Path(path)
    atomic_write_text(path, _encode_rows(path, rows))


def repair_tail(path: str | os.PathLike) -> int:
    """Cut an unterminated last line (a row torn by a killed append); return the number of bytes removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # scan back for the last newline, in blocks
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def append_captions(path: str | os.PathLike, rows: Iterable[tuple[str, str]]) -> None:
    """Append rows crash-safely: one O_APPEND write of whole lines + fsync, after cutting a torn tail.

    A kill during the write can leave at most one partial last line; it is removed by the next append (or by
    `repair_tail`), and the rows it held were not yet counted as done, so a resumed job redoes them."""
    path = Path(path)
    data = _encode_rows(path, rows).encode("utf-8")
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # a short write is continued, never re-sent
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    # splitmix64 finaliser: a cheap, well-mixed integer hash
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def caption_choice(n: int, seed: int, nimg_or_step: int, index: int) -> int:
    """Which of n captions sample `index` uses at `nimg_or_step`: a pure function of its arguments (resumable)."""
    if n <= 0:
        raise ValueError(f"sample {index} has no captions; every key needs at least one caption")
    h = _mix(_mix(_mix(seed & _MASK) ^ (nimg_or_step & _MASK)) ^ (index & _MASK))
    return h % n


def pick_caption(captions: list[str], seed: int, nimg_or_step: int, index: int) -> str:
    """One of an image's several captions, drawn afresh at every step, deterministically (resume-safe)."""
    return captions[caption_choice(len(captions), seed, nimg_or_step, index)]
