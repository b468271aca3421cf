"""The 1000 ImageNet-1k classes: WordNet synset ids and names, in the standard class-index order.

`imagenet_classes.tsv` (shipped next to this file) holds `synset<TAB>lemmas` for class indices 0..999 (the sorted
synset order every ImageNet-1k loader uses); the lemmas are WordNet's comma-separated names. The short human name
is the first lemma, which is what AIO captions ("An image of <class>", ImageNet-T2I §2.1) use.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_TSV = Path(__file__).with_name("imagenet_classes.tsv")


@cache
def _rows() -> tuple[tuple[str, tuple[str, ...]], ...]:
    rows = []
    for n, line in enumerate(_TSV.read_text().splitlines(), 1):
        synset, _, lemmas = line.partition("\t")
        if not (synset.startswith("n") and lemmas):
            raise ValueError(f"{_TSV}:{n}: expected 'synset<TAB>names', got {line!r}")
        rows.append((synset, tuple(s.strip() for s in lemmas.split(","))))
    if len(rows) != 1000:
        raise ValueError(f"{_TSV} has {len(rows)} classes, expected 1000 (reinstall microt2i)")
    return tuple(rows)


def imagenet_classes() -> list[tuple[str, str]]:
    """[(synset id, human name)] for class indices 0..999, e.g. ('n01440764', 'tench')."""
    return [(synset, lemmas[0]) for synset, lemmas in _rows()]


def imagenet_lemmas(synset: str) -> tuple[str, ...]:
    """All WordNet names of one synset, e.g. ('tench', 'Tinca tinca')."""
    table = dict(_rows())
    if synset not in table:
        raise KeyError(f"{synset!r} is not an ImageNet-1k synset (expected e.g. 'n01440764')")
    return table[synset]


def synset_to_index() -> dict[str, int]:
    """Synset id → class index (the sorted order of the 1000 synset folder names)."""
    return {synset: i for i, (synset, _) in enumerate(_rows())}
