"""The example plugin of docs/plugins.md ("A complete plugin"), exactly as the page shows it: its
files are the page's code blocks whose first line names a file (``# vaeflow_demo/nets.py``),
built into a wheel (setuptools, no network) and installed into a folder that a test puts on
PYTHONPATH. Used by tests/plugins/test_third_party.py and tests/training/test_ddp_registry.py.

Not a test module: the tests load it from its file (the tests folder is not a package)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "plugins.md"
FILES = ("pyproject.toml", "vaeflow_demo/__init__.py", "vaeflow_demo/nets.py")  # the plugin's files on the page
NAME, VERSION, ENTRY_POINT = "vaeflow-demo", "0.2.0", "demo"

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced code block of a Markdown text, in order."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def named_blocks(text: str) -> dict[str, str]:
    """{name: code} of the code blocks whose first line is a comment ``# NAME`` (NAME its first word)."""
    out = {}
    for _, code in code_blocks(text):
        first = code.split("\n", 1)[0]
        if first.startswith("# ") and first[2:].strip():
            out[first[2:].split()[0]] = code
    return out


def example_files(page: Path = PAGE) -> dict[str, str]:
    """The plugin's files, {relative path: text}, as the page shows them."""
    blocks = named_blocks(page.read_text(encoding="utf-8"))
    missing = [f for f in FILES if f not in blocks]
    assert not missing, f"{page} shows no code block starting '# {missing[0]}'"
    return {f: blocks[f] for f in FILES}


def build_site(tmp: Path) -> Path:
    """Write the page's plugin into ``tmp/vaeflow-demo``, build its wheel and install it (without
    dependencies) into ``tmp/site``; returns the site folder."""
    project = tmp / NAME
    for rel, text in example_files().items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(project)], check=True, capture_output=True
    )
    wheel = next((tmp / "dist").glob(f"{NAME.replace('-', '_')}-{VERSION}-*.whl"))
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True, capture_output=True)
    return site
