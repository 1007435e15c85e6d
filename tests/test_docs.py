"""The documentation: the site builds with warnings as errors, its CLI and hook references are
rendered from the code (every command, every option, every hook), the README stays a front page
whose links resolve, and no user document speaks of issue numbers."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 10_240

# "issue 10", "Issue-4", "issue #12", and a bare "#12" (not inside a word, a path or an HTML entity).
ISSUE_REFERENCES = [re.compile(r"\bissue[- ]?#?\d+", re.I), re.compile(r"(?<![\w/&])#\d+\b")]


def user_documents() -> list[Path]:
    docs = sorted((ROOT / "docs").rglob("*.md"))
    configs = sorted((ROOT / "configs").glob("*.toml")) + sorted((ROOT / "vaeflow_cli" / "defaults").glob("*.toml"))
    return [README, ROOT / "CONTRIBUTING.md", *docs, *configs]


def page_text(site: Path, page: str) -> str:
    """The text of a built page, tags removed and entities decoded."""
    raw = (site / page / "index.html").read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    return out


def test_the_site_builds_strictly_with_every_page(site):
    pages = {p.relative_to(ROOT / "docs").with_suffix("").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert {"index", "tutorial", "cli", "reference", "configs", "data", "gpu", "plugins", "hooks", "model", "reproduce", "design"} <= pages
    for page in pages - {"index"}:
        assert (site / page / "index.html").is_file(), page
    assert (site / "index.html").is_file()
    assert not (site / "_hooks").exists(), "the docs generator must not be published"


def _commands():
    import typer

    from vaeflow_cli.cli.commands import app

    found = {}

    def walk(cmd, path):
        found[" ".join(path)] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def test_the_cli_reference_is_rendered_from_the_app_with_every_command_and_option(site):
    text = page_text(site, "cli")
    commands = _commands()
    assert len(commands) >= 15 and {"train-vae", "train-glow", "sample", "evaluate", "data download"} <= set(commands)
    for path, cmd in commands.items():
        usage = f"Usage: vaeflow {path} ".replace("  ", " ")
        assert usage in text, f"docs/cli.md shows no --help of `vaeflow {path}`"
        summary = (cmd.get_short_help_str(limit=200) or "").strip()
        if path:
            assert f"vaeflow {path}" in text and summary in text, (path, summary)
        for param in cmd.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert opt in text, f"option {opt} of `vaeflow {path}` missing from the CLI reference"


def test_the_hook_reference_is_rendered_from_the_hookspecs(site):
    from vaeflow_cli import hookspecs

    text = page_text(site, "hooks")
    hooks = [name for name, obj in vars(hookspecs).items() if hasattr(obj, "vaeflow_spec")]
    assert len(hooks) >= 6 and "register_flows" in hooks
    for name in hooks:
        assert f"def {name}(register: Register) -> None" in text, f"hook {name} missing from the hook reference"
    for name in hookspecs.__all__:
        assert name in text, f"vaeflow_cli.hookspecs.{name} missing from the hook reference"
    # docstrings, not just names: a line of each protocol's docstring and each :param:
    assert "The amortised posterior q(z|y)" in text and "Flush and release; called once at the end of a phase" in text
    assert "call register(name, factory) once per logger" in text


def test_the_api_reference_is_rendered_from_the_docstrings(site):
    """docs/reference.md (mkdocstrings): load_run and Run with every public method, the notebook's
    names of vaeflow_cli.__all__, and every name of the plugin API and of the check kit, each under
    its own heading, with its docstring."""
    import vaeflow_cli
    from vaeflow_cli import plugin_api, testing
    from vaeflow_cli.api import Run

    raw = (site / "reference" / "index.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'id="(vaeflow_cli\.[\w.]+)"', raw))
    notebook = [f"vaeflow_cli.{name}" for name in vaeflow_cli.__all__ if name not in ("__version__", "PHASES")]
    methods = [f"vaeflow_cli.Run.{name}" for name, obj in vars(Run).items() if not name.startswith("_") and callable(obj)]
    kits = [f"vaeflow_cli.plugin_api.{name}" for name in plugin_api.__all__] + [f"vaeflow_cli.testing.{name}" for name in testing.__all__]
    missing = [name for name in [*notebook, *methods, *kits] if name not in anchors]
    assert not missing, f"missing from the API reference: {missing}"
    text = page_text(site, "reference")
    assert "Load a trained run directory for sampling, inference and scoring." in text
    assert "Check a registered encoder factory" in text


def test_the_readme_is_a_front_page():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; the front page is at most {README_MAX_BYTES} (move detail to docs/)"


def test_every_relative_link_in_the_readme_resolves():
    text = README.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not links
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", text, flags=re.M)  # reference-style definitions
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]
    assert len(relative) >= 5, relative  # the figure and the documentation pages
    for target in relative:
        path = target.split("#", 1)[0]
        assert (ROOT / path).exists(), f"README.md links to {target}, which does not exist"


def test_no_issue_numbers_in_user_documents():
    found = []
    for path in user_documents():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for pattern in ISSUE_REFERENCES:
                for match in pattern.finditer(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r} in {line.strip()!r}")
    assert not found, "user documents speak of the product, not of issue numbers:\n" + "\n".join(found)


@pytest.mark.parametrize("text", ["before issue 10 the", "see the issue-4 note", "Issue #12 said", "fixed in #7.", "(#3)"])
def test_the_issue_number_patterns_catch_what_they_are_for(text):
    assert any(p.search(text) for p in ISSUE_REFERENCES)


@pytest.mark.parametrize("text", ["issued on a side stream", "a/#12/b", "&#8212;", "color #abc", "section 3.4", "`--seed` 12"])
def test_the_issue_number_patterns_leave_other_text_alone(text):
    assert not any(p.search(text) for p in ISSUE_REFERENCES)


def test_the_config_on_the_configs_page_is_a_valid_config():
    """Every key the annotated config of docs/configs.md shows exists and has a valid value."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.config import schema

    block = re.search(r"```toml\n(.*?)```", (ROOT / "docs" / "configs.md").read_text(encoding="utf-8"), re.S).group(1)
    cfg = config_mod.resolve(base=tomllib.loads(block), source="docs/configs.md")
    assert cfg["run"]["log_every"] == schema.DEFAULTS["run"]["log_every"] and cfg["run"]["loggers"] == []


TUTORIAL = ROOT / "docs" / "tutorial.md"


def _tutorial_commands() -> list[str]:
    """The ``vaeflow ...`` command lines of docs/tutorial.md: in its code blocks and inline code."""
    text = TUTORIAL.read_text(encoding="utf-8")
    lines = [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for line in block.splitlines()]
    lines += re.findall(r"`(vaeflow [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line.strip() for line in lines if line.strip().startswith("vaeflow ")]


def _check_command_line(line: str, commands: dict) -> str:
    """The command path of ``line`` ('data info'); AssertionError for a subcommand or an option that
    the app does not have."""
    import shlex

    words = shlex.split(line, comments=True)[1:]
    path: list[str] = []
    i = 0
    while i < len(words):
        word, cmd = words[i], commands[" ".join(path)]
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            param = next((p for p in cmd.params if name in (*p.opts, *p.secondary_opts)), None)
            assert param is not None, f"docs/tutorial.md: `{line}`: `vaeflow {' '.join(path)}` has no option {name}"
            takes_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
            i += 2 if takes_value and "=" not in word else 1
            continue
        if hasattr(cmd, "commands"):  # a group: the word names one of its commands
            assert word in cmd.commands, f"docs/tutorial.md: `{line}`: `vaeflow {' '.join(path)}` has no command {word!r}"
            path.append(word)
        i += 1  # otherwise a positional argument
    return " ".join(path)


def test_every_command_and_option_of_the_tutorial_exists():
    commands = _commands()
    used = {_check_command_line(line, commands) for line in _tutorial_commands()}
    assert {"data info", "config show", "train-vae", "train-glow", "sample", "evaluate", "score", "ood"} <= used, used
    # an option named on its own in the prose (`--resume`) is an option of some command
    every = {opt for cmd in commands.values() for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", TUTORIAL.read_text(encoding="utf-8")))
    assert named and named <= every, f"docs/tutorial.md names options that no command has: {sorted(named - every)}"


@pytest.mark.parametrize("line", ["vaeflow train-vea -c my.toml", "vaeflow sample --run runs/x --no-such-option", "vaeflow data infos x"])
def test_the_tutorial_check_catches_a_command_or_option_that_does_not_exist(line):
    with pytest.raises(AssertionError):
        _check_command_line(line, _commands())


def test_the_config_of_the_tutorial_is_a_valid_config():
    """The TOML of docs/tutorial.md resolves (every key exists and has a valid value)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    from vaeflow_cli.config import core as config_mod

    block = re.search(r"```toml\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.S).group(1)
    config_mod.resolve(base=tomllib.loads(block), source="docs/tutorial.md")
