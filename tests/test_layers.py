"""The package's import layers: every arrow points down.

Each module of ``vaeflow_cli`` has a layer (``LAYERS``, below); a module may import modules of its
own layer and of the layers below it, never one above. Every import counts: top-level ones,
function-local ones (a lazy import is an arrow whenever it is taken), type-only ones under
``if TYPE_CHECKING`` (a type is a dependency too), and the home modules that a lazy-export table
names by string (``vaeflow_cli.lazy.lazy_exports``). docs/design.md ("Layers") describes them.
"""

from __future__ import annotations

import ast
import importlib.machinery
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vaeflow_cli"

# (layer name, the modules in it): a name stands for the module and everything under it, unless a
# longer name of another layer is listed; the package itself ("vaeflow_cli") stands for its
# __init__ alone.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",  # errors, files, logging, lazy exports, the version, the native decoder, the limits of user values
        (
            "vaeflow_cli._version",
            "vaeflow_cli._native",
            "vaeflow_cli.errors",
            "vaeflow_cli.files",
            "vaeflow_cli.console",
            "vaeflow_cli.progress",
            "vaeflow_cli.lazy",
            "vaeflow_cli.config",  # the package's __init__ (a docstring)
            "vaeflow_cli.config.limits",
            "vaeflow_cli.config.constraints",
        ),
    ),
    ("runtime", ("vaeflow_cli.runtime",)),  # the ground floor: threads, devices, distributed, run directories, the phase table
    ("plugins", ("vaeflow_cli.hookspecs", "vaeflow_cli.registry")),  # the hook contract, the registry, provenance
    (
        "config",
        (
            "vaeflow_cli.config.core",
            "vaeflow_cli.config.files",
            "vaeflow_cli.config.schema",
            "vaeflow_cli.config.signature",
            "vaeflow_cli.config.typed",
        ),
    ),  # the config schema, validated against the registry; its typed view
    ("components", ("vaeflow_cli.model", "vaeflow_cli.data")),  # the model and the data path
    ("measures", ("vaeflow_cli.evaluation",)),  # bounds, yardsticks, Frechet distances, scoring, plots
    ("training", ("vaeflow_cli.training",)),  # the trainer of a phase, its step, state, lineage, loggers, timing
    # the library's entry points, each composing the layers below: load_run, evaluate_run, OOD detection
    ("library", ("vaeflow_cli.api", "vaeflow_cli.evaluation.evaluate", "vaeflow_cli.evaluation.ood")),
    # what users and plugin authors call: the command line and the facades (lazy exports of the layers below)
    ("entry", ("vaeflow_cli", "vaeflow_cli.__main__", "vaeflow_cli.cli", "vaeflow_cli.plugin_api", "vaeflow_cli.testing")),
]

# (importer, imported) -> why this upward import is allowed. Empty: every arrow points down.
ALLOWED: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``'s layer (the longest listed name that covers it)."""
    exact = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # "vaeflow_cli" itself covers only the package's __init__
        name = ".".join(parts[:n])
        if name in exact:
            return exact[name]
    if module in exact:
        return exact[module]
    raise KeyError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")


def describe(i: int) -> str:
    return f"layer {i}, {LAYERS[i][0]}"


def modules(package_dir: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__), compiled extension
    modules included."""
    found = {}
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for path in sorted(package_dir.rglob("*")):
        if path.suffix == ".py":
            parts = path.relative_to(package_dir.parent).with_suffix("").parts
        elif path.name.endswith(suffixes):
            parts = (*path.relative_to(package_dir.parent).parent.parts, path.name.split(".")[0])
        else:
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _known(name: str, known: set[str]) -> str | None:
    """``name``, or the closest enclosing module that exists (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


BY_NAME = {"import_module", "__import__"}


def _callee(call: ast.Call) -> str:
    return getattr(call.func, "attr", None) or getattr(call.func, "id", "")


def imports(module: str, source: str, known: set[str], *, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for each import of a package module in ``source``, the source of
    ``module``: anywhere in the file, relative imports resolved, ``from pkg import name`` as
    ``pkg.name`` where that is a module, and the modules named by string in a dict (a lazy-export
    table's homes) or to ``importlib.import_module``."""
    top = module.split(".")[0]
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):  # by name: a lazy-export table's homes, importlib.import_module("...")
        named = node.values if isinstance(node, ast.Dict) else node.args[:1] if isinstance(node, ast.Call) and _callee(node) in BY_NAME else []
        for value in named:
            if isinstance(value, ast.Tuple) and value.elts:  # {"name": ("module", "attribute")}
                value = value.elts[0]
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value in known:
                found.append((value.value, value.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found += [(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, node.lineno) for a in node.names]
    out = []
    for name, line in found:
        if name == top or name.startswith(top + "."):
            target = _known(name, known)
            if target is not None and target != module:
                out.append((target, line))
    return out


def violations(package_dir: Path = PACKAGE, allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    """One line per import of a higher layer: where, the importing module, the imported one and
    both layers."""
    allowed = ALLOWED if allowed is None else allowed
    mods = modules(package_dir)
    known = set(mods)
    out = []
    for module, path in mods.items():
        if path.suffix != ".py":
            continue
        for target, line in imports(module, path.read_text(encoding="utf-8"), known, is_package=path.name == "__init__.py"):
            here, there = layer_of(module), layer_of(target)
            if there > here and (module, target) not in allowed:
                where = path.relative_to(package_dir.parent)
                out.append(f"{where}:{line}: {module} ({describe(here)}) imports {target} ({describe(there)})")
    return out


def test_every_module_has_a_layer_and_every_listed_name_is_a_module():
    mods = modules()
    for module in mods:
        layer_of(module)
    listed = {name for _, names in LAYERS for name in names}
    assert listed <= set(mods), f"LAYERS names modules that do not exist: {sorted(listed - set(mods))}"


def test_no_module_imports_a_higher_layer():
    found = violations()
    assert not found, "imports that point up (move the code down, or the import up):\n" + "\n".join(found)


def test_every_allowed_exception_is_used():
    needed = violations(allowed={})
    for (importer, imported), reason in ALLOWED.items():
        assert reason.strip(), f"{importer} -> {imported}: an allowed exception needs its reason"
        assert any(f" {importer} (" in line and f" imports {imported} (" in line for line in needed), (
            f"{importer} -> {imported} is allowed but unused"
        )


def test_the_ground_floor_imports_only_the_standard_library_torch_and_numpy_from_outside():
    """vaeflow_cli.runtime: the standard library, torch and numpy (and, by the test above, the base layer)."""
    for module, path in modules().items():
        if layer_of(module) != layer_of("vaeflow_cli.runtime"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - {"vaeflow_cli"}:
                assert top in sys.stdlib_module_names or top in {"torch", "numpy"}, (
                    f"{module} imports {top}: not the standard library, torch or numpy"
                )


@pytest.mark.parametrize(
    ("module", "source", "upward"),
    [
        # a synthetic upward import of each kind is caught ...
        ("vaeflow_cli.runtime.threads", "from vaeflow_cli.training.step import Stepper\n", "vaeflow_cli.training.step"),
        ("vaeflow_cli.runtime.runs", "def f():\n    from vaeflow_cli.config import core\n", "vaeflow_cli.config.core"),
        ("vaeflow_cli.errors", "import vaeflow_cli.cli.commands\n", "vaeflow_cli.cli.commands"),
        ("vaeflow_cli.model.sampling", "from ..training import loop\n", "vaeflow_cli.training.loop"),
        ("vaeflow_cli.config.core", "if TYPE_CHECKING:\n    from vaeflow_cli.api import Run\n", "vaeflow_cli.api"),
        ("vaeflow_cli.runtime.phases", "_HOMES = {'Run': 'vaeflow_cli.api'}\n", "vaeflow_cli.api"),
        ("vaeflow_cli.registry.provenance", "from vaeflow_cli import load_run\n", "vaeflow_cli"),
        # ... and a downward or sideways one is not
        ("vaeflow_cli.training.loop", "from vaeflow_cli.runtime.threads import tick\nfrom vaeflow_cli.training import state\n", None),
        ("vaeflow_cli.api", "import vaeflow_cli.errors\nfrom .evaluation import evaluate\n", None),
        ("vaeflow_cli.runtime.runs", '"""Not an import: vaeflow_cli.api."""\nfrom vaeflow_cli import errors\n', None),
    ],
)
def test_the_checker_flags_an_upward_import(module, source, upward):
    known = set(modules())
    flagged = [target for target, _ in imports(module, source, known) if layer_of(target) > layer_of(module)]
    assert flagged == ([upward] if upward else [])
