"""MkDocs hook: the CLI reference and the hook reference are rendered from the code at build time,
so they cannot drift from it (``hooks:`` in mkdocs.yml).

docs/cli.md holds one ``<!-- vaeflow-help: COMMAND -->`` marker per command of the Typer app
``vaeflow_cli.cli.commands.app`` (``<!-- vaeflow-help: -->`` for ``vaeflow`` itself, ``<!-- vaeflow-help: data
download -->`` for a subcommand); each becomes that command's ``--help`` text. A command of the app
without a marker, or a marker naming no command, fails the build. ``<!-- vaeflow-commands -->``
becomes a table of every command with its one-line summary.

docs/hooks.md's ``<!-- vaeflow-hookspecs -->`` becomes the reference of ``vaeflow_cli.hookspecs``:
every hook (found by its hookspec marker), the ``register`` callback, the component and factory
protocols, each with its signature and docstring. A public name of the module that the reference
does not know how to render fails the build.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

WIDTH = 100  # the terminal width the --help texts are rendered for
HELP_MARKER = re.compile(r"<!-- vaeflow-help:(?P<path>[a-z0-9 -]*)-->")
COMMANDS_MARKER = "<!-- vaeflow-commands -->"
HOOKSPECS_MARKER = "<!-- vaeflow-hookspecs -->"


def on_config(config):
    """Render from the source tree that holds mkdocs.yml, not from an installed copy elsewhere."""
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "cli.md":
        return _cli_page(markdown)
    if page.file.src_uri == "hooks.md":
        return _hooks_page(markdown)
    for marker in (COMMANDS_MARKER, HOOKSPECS_MARKER):
        if marker in markdown:
            raise PluginError(f"{page.file.src_uri}: {marker} is only rendered in cli.md / hooks.md")
    if HELP_MARKER.search(markdown):
        raise PluginError(f"{page.file.src_uri}: <!-- vaeflow-help: ... --> is only rendered in cli.md")
    return markdown


# ------------------------------------------------------------------------------ the command line


def commands() -> dict:
    """Every command of the app by its path ('' is ``vaeflow`` itself, 'data download' a subcommand),
    in the app's order, each with the click context its ``--help`` is rendered in."""
    import click
    import typer

    from vaeflow_cli.cli.commands import app

    found: dict = {}

    def walk(cmd, path: tuple, parent) -> None:
        ctx = click.Context(cmd, info_name=path[-1] if path else "vaeflow", parent=parent, terminal_width=WIDTH, max_content_width=WIDTH)
        found[" ".join(path)] = (cmd, ctx)
        for name, sub in getattr(cmd, "commands", {}).items():
            if not getattr(sub, "hidden", False):
                walk(sub, (*path, name), ctx)

    walk(typer.main.get_command(app), (), None)
    return found


def _slug(text: str) -> str:
    from markdown.extensions.toc import slugify

    return slugify(text, "-")


def _cli_page(markdown: str) -> str:
    cmds = commands()
    marked = [" ".join(m.group("path").split()) for m in HELP_MARKER.finditer(markdown)]
    unknown = sorted(set(marked) - set(cmds))
    missing = [p for p in cmds if p not in marked]
    twice = sorted({p for p in marked if marked.count(p) > 1})
    if unknown or missing or twice:
        raise PluginError(
            "docs/cli.md and the Typer app disagree: "
            + "; ".join(
                f"{what}: {', '.join(repr(p) for p in paths)}"
                for what, paths in (
                    ("commands without a <!-- vaeflow-help: COMMAND --> marker", missing),
                    ("markers naming no command", unknown),
                    ("commands marked twice", twice),
                )
                if paths
            )
        )

    def help_block(match: re.Match) -> str:
        cmd, ctx = cmds[" ".join(match.group("path").split())]
        return "```text\n" + cmd.get_help(ctx).rstrip() + "\n```"

    markdown = HELP_MARKER.sub(help_block, markdown)
    if COMMANDS_MARKER in markdown:
        rows = ["| command | what it does |", "|---|---|"]
        for path, (cmd, _) in cmds.items():
            if path:
                summary = cmd.get_short_help_str(limit=200).replace("|", "\\|")
                rows.append(f"| [`vaeflow {path}`](#{_slug(path)}) | {summary} |")
        markdown = markdown.replace(COMMANDS_MARKER, "\n".join(rows))
    return markdown


# ------------------------------------------------------------------------------ the hook reference

_FIELD = re.compile(r":(param \w+|returns|raises [\w.]+):")


def _code_spans(text: str) -> str:
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)


def docstring(obj) -> str:
    """A reST-style docstring as Markdown: ``code`` as `code`, :param:/:returns:/:raises: as a list."""
    return _fields(inspect.getdoc(obj) or "")


def _fields(doc: str) -> str:
    parts = _FIELD.split(_code_spans(doc))
    out = [parts[0].strip()] if parts[0].strip() else []
    items, after = [], []
    for field, value in zip(parts[1::2], parts[2::2], strict=True):
        first, *rest = re.split(r"\n\s*\n", value.strip(), maxsplit=1)
        kind, _, name = field.partition(" ")
        label = {"param": f"`{name}`:", "returns": "Returns:", "raises": f"Raises `{name}`:"}[kind]
        items.append(f"- {label} {' '.join(first.split())}")
        after += [r.strip() for r in rest]
    if items:
        out.append("\n".join(items))
    return "\n\n".join(out + after)


def _annotation(ann) -> str:
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


def signature(func, name: str) -> str:
    """``name(params) -> return``, annotations as written in the source, without ``self``."""
    sig = inspect.signature(func)
    parts, star = [], False
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
        star = star or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        ann = f": {_annotation(p.annotation)}" if p.annotation is not p.empty else ""
        default = f" = {p.default!r}" if p.default is not p.empty else ""
        parts.append(f"{prefix}{p.name}{ann}{default}")
    ret = f" -> {_annotation(sig.return_annotation)}" if sig.return_annotation is not sig.empty else ""
    return f"{name}({', '.join(parts)}){ret}"


def _attribute_docs(module, cls_name: str) -> list[tuple[str, str, str]]:
    """(name, annotation, docstring) of the annotated attributes of a class, from the source."""
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            found = []
            for stmt, nxt in zip(node.body, [*node.body[1:], None], strict=True):
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) else ""
                    found.append((stmt.target.id, ast.unparse(stmt.annotation), inspect.cleandoc(str(doc))))
            return found
    return []


def _methods(cls) -> list:
    return [(n, f) for n, f in vars(cls).items() if inspect.isfunction(f) and (n == "__call__" or not n.startswith("_"))]


def hook_reference() -> str:
    from vaeflow_cli import hookspecs as hs

    names = list(hs.__all__)
    hooks = [n for n in names if hasattr(getattr(hs, n), "vaeflow_spec")]
    factories = [n for n in names if n.endswith("Factory")]
    markers = [n for n in ("hookspec", "hookimpl") if n in names]
    protocols = [n for n in names if inspect.isclass(getattr(hs, n)) and n not in factories and n != "Register"]
    rendered = {*hooks, *factories, *markers, *protocols, "Register"}
    if set(names) - rendered:
        raise PluginError(f"docs/_hooks/generate.py cannot render vaeflow_cli.hookspecs.{sorted(set(names) - rendered)}")

    out = [_code_spans(inspect.getdoc(hs) or ""), "## Hooks"]
    out.append(
        "Each hook is a function a plugin implements under the `@hookimpl` marker "
        "(`from vaeflow_cli.hookspecs import hookimpl`), with the name and parameters below."
    )
    for name in hooks:
        func = getattr(hs, name)
        out += [f"### `{name}`", f"```python\n@hookimpl\ndef {signature(func, name)}: ...\n```", docstring(func)]

    out += ["## The `register` callback", f"```python\n{signature(hs.Register.__call__, 'register')}\n```"]
    out += [docstring(hs.Register.__call__)]

    out.append("## Component protocols (what a factory returns)")
    for name in protocols:
        cls = getattr(hs, name)
        bases = [b.__name__ for b in cls.__bases__ if b.__name__ in names]
        out += [f"### `{name}`", docstring(cls)]
        if bases:
            out.append("Also a " + ", ".join(f"[`{b}`](#{_slug(b)})" for b in bases) + ": its methods too.")
        for attr, ann, doc in _attribute_docs(hs, name):
            out.append(f"- `{attr}: {ann}`" + (f": {' '.join(_code_spans(doc).split())}" if doc else ""))
        for meth, func in _methods(cls):
            out += [f"```python\n{signature(func, meth)}\n```", docstring(func)]

    out.append("## Factory protocols (what is registered)")
    out.append("Besides its config keys (its own keyword-only arguments), a factory receives the context arguments its kind's protocol names:")
    out.append("\n\n".join(f"```python\n{signature(getattr(hs, n).__call__, n)}\n```" for n in factories))
    return "\n\n".join(part for part in out if part)


def _hooks_page(markdown: str) -> str:
    if HOOKSPECS_MARKER not in markdown:
        raise PluginError(f"docs/hooks.md lost its {HOOKSPECS_MARKER} marker")
    return markdown.replace(HOOKSPECS_MARKER, hook_reference())
