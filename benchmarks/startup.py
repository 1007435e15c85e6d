"""Start-up time of light commands, and the code's structure, against an older commit, in one run.

    python benchmarks/startup.py --old 6f6af26 [--rounds 9]

Structure, for both trees: the modules of ``vaeflow_cli/`` and ``plugins/``, the longest
functions (lines), and the import cycles between library modules (imports inside functions
included, ``if TYPE_CHECKING`` blocks not).

The older commit is checked out into a temporary git worktree (its Rust extension copied from this
checkout) and run with ``PYTHONPATH`` pointing at it and ``VAEFLOW_PLUGINS=`` (no third-party
plugins, so the installed built-in entry points do not register twice in the old code). Each
round runs every command once per side, the sides alternating, in a fresh interpreter
(``python -m vaeflow_cli ...``); the table gives the median wall time of each side (interquartile
range as spread) and the ratio new/old, and whether the command imported torch.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["plugins", "--json"], ["config", "show"])
PROBE = (
    "import runpy, sys, atexit\n"
    "atexit.register(lambda: sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules)))\n"
    "sys.argv = ['vaeflow'] + sys.argv[1:]\n"
    "runpy.run_module('vaeflow_cli', run_name='__main__')\n"
)


def structure(root: Path) -> dict:
    """Modules, the five longest functions and the import cycles of the tree at ``root``."""
    package = root / "vaeflow_cli"
    modules = sorted(p for p in package.glob("*.py") if not p.stem.startswith("__"))
    names = {p.stem for p in modules}
    lengths, graph = [], {}
    for path in modules + sorted((root / "plugins").glob("*.py")):
        tree = ast.parse(path.read_text())
        lengths += [(n.end_lineno - n.lineno + 1, f"{path.relative_to(root)}:{n.name}") for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        if path.parent == package:
            for node in ast.walk(tree):  # imports for type checkers only are not imports
                if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                    node.body = []
            deps = {n.module.split(".")[1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("vaeflow_cli.")}
            graph[path.stem] = (deps & names) - {path.stem}
    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    return {
        "library_modules": len(modules),
        "plugin_modules": len(list((root / "plugins").glob("*.py"))),
        "longest_functions": [f"{name} ({n} lines)" for n, name in sorted(lengths, reverse=True)[:5]],
        "two_module_import_cycles": [" <-> ".join(c) for c in cycles],
    }


def run_once(env: dict, args: list[str], cwd: str) -> tuple[float, bool]:
    """One command in a fresh interpreter, from ``cwd`` (not a checkout: ``python -c`` puts the
    working directory first on sys.path, before PYTHONPATH)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return seconds, "TORCH=1" in proc.stderr


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the commit to compare with (e.g. the one before the change)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.old], check=True, capture_output=True)
        try:
            shutil.copy2(next((ROOT / "vaeflow_cli").glob("_native*.so")), old / "vaeflow_cli")
            trees = {"old": structure(old), "new": structure(ROOT)}
            sides = {"old": {**base, "PYTHONPATH": str(old), "VAEFLOW_PLUGINS": ""}, "new": {**base, "PYTHONPATH": str(ROOT)}}
            times = {(side, " ".join(c)): [] for side in sides for c in COMMANDS}
            torch_loaded = {}
            for side in sides:  # warm the file cache once per side
                for c in COMMANDS:
                    run_once(sides[side], c, tmp)
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for c in COMMANDS:
                    for side in order:
                        seconds, loaded = run_once(sides[side], c, tmp)
                        times[side, " ".join(c)].append(seconds)
                        torch_loaded[side, " ".join(c)] = loaded
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    rows = []
    for c in COMMANDS:
        name = " ".join(c)
        med = {s: statistics.median(times[s, name]) for s in ("old", "new")}
        iqr = {s: statistics.quantiles(times[s, name], n=4) for s in ("old", "new")}
        rows.append(
            {
                "command": f"vaeflow {name}",
                "old_s": round(med["old"], 3),
                "new_s": round(med["new"], 3),
                "old_iqr": [round(v, 3) for v in (iqr["old"][0], iqr["old"][2])],
                "new_iqr": [round(v, 3) for v in (iqr["new"][0], iqr["new"][2])],
                "ratio_new_over_old": round(med["new"] / med["old"], 3),
                "torch_imported": {"old": torch_loaded["old", name], "new": torch_loaded["new", name]},
            }
        )
    result = {"old": args.old, "rounds": args.rounds, "rows": rows, "structure": trees}
    print(json.dumps(result, indent=2))
    print("| command | old (s) | new (s) | new/old | torch imported old/new |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for row in rows:
        t = row["torch_imported"]
        print(f"| `{row['command']}` | {row['old_s']} | {row['new_s']} | {row['ratio_new_over_old']} | {t['old']}/{t['new']} |", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
