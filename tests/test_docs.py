"""Docs are contracts: every `microt2i` command written in README.md and docs/*.md parses with the real CLI, and
every preset + dotted overrides it names resolves to a valid config (no flag, preset, recipe or config key that the
code refuses). Running them is the job of the tests next to each feature (shrunk); this file makes sure no command
line in the docs has drifted from the parser."""

import re
import shlex
from pathlib import Path

import pytest

from microt2i import presets
from microt2i.cli import parse_cli
from microt2i.config import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# commands whose first positional is a preset (or a config file) followed by dotted overrides
PRESET_COMMANDS = {"train", "precompute", "cutmix", "filter", "recipe"}


def _blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    """The block's lines joined across `\\` continuations, shell variables of the block expanded, comments dropped."""
    env, out = {}, []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        m = re.fullmatch(r"([A-Z_]+)=(\"[^\"]*\"|'[^']*'|\S+)(\s+#.*)?", line)
        if m:
            env[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2)[0] in "\"'" else m.group(2)
            continue
        for k, v in env.items():
            line = line.replace(f"${k}", v).replace(f"${{{k}}}", v)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell we can read (e.g. a heredoc)
            continue
        if "-m" in words and "microt2i.cli" in words:  # torchrun … -m microt2i.cli CMD …
            words = ["microt2i", *words[words.index("microt2i.cli") + 1:]]
        if words and Path(words[0]).name == "microt2i":
            out.append(words)
    return out


def _all_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in _blocks(doc.read_text()):
            found += [(f"{doc.name}: {' '.join(w)}", w[1:]) for w in _commands(block)]
    return found


COMMANDS = _all_commands()


def test_the_docs_hold_commands():
    assert len(COMMANDS) > 40 and {a[0] for _, a in COMMANDS if a} >= {"train", "sample", "eval", "precompute"}


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS], ids=[i for i, _ in COMMANDS])
def test_every_documented_command_parses_and_resolves(argv):
    args = [a for a in argv if a not in ("-q", "--quiet")]
    try:
        ns = parse_cli(args)
    except SystemExit as e:  # argparse refused it (or printed --help, which exits 0)
        assert e.code == 0, f"the CLI refuses this documented command: microt2i {' '.join(argv)}"
        return
    cmd = args[0] if args else ""
    name = getattr(ns, "preset", None) or getattr(ns, "name", None) or getattr(ns, "config", None)
    overrides = [o for o in getattr(ns, "overrides", None) or [] if "=" in o]
    if getattr(ns, "verify", False) and not (name in presets.PRESETS or name in presets.RECIPES):
        return  # `precompute STORE_DIR --verify` / `cutmix STORE_DIR --verify` take a store folder
    if cmd in PRESET_COMMANDS and isinstance(name, str) and not name.endswith((".yaml", ".yml")):
        if getattr(ns, "recipe", None):
            name = ns.recipe
        stages = presets.stages(name) if name in presets.RECIPES or name in presets.PRESETS else None
        assert stages is not None, f"unknown preset or recipe {name!r} in: microt2i {' '.join(argv)}"
        for stage in stages:
            apply_overrides(stage, overrides)
