"""What a new user meets first: hints that name the right path, help that lists what a
command accepts and fits on a line, a data info that reports the splits that are there, and log
lines that -q and -v control."""

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import call_main, write_idx

REPO = Path(__file__).resolve().parents[2]


def call(argv, capsys):
    """Run ``vaeflow ARGV`` in this process: (exit code, stdout, stderr)."""
    return call_main(argv, capsys)


def one_error(code, err) -> str:
    """The one stderr line of a failure (no traceback)."""
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vaeflow: error: "), err
    return lines[0]


@pytest.fixture(autouse=True)
def vaeflow_logger():
    """Each test starts with the "vaeflow" logger as the CLI leaves it by default, and leaves it so."""
    from vaeflow_cli import console

    saved = (list(console.logger.handlers), console.logger.level, console.logger.propagate)
    console.configure(0)
    yield console
    console.logger.handlers[:], console.logger.level, console.logger.propagate = saved[0], saved[1], saved[2]


# ---------------------------------------------------------------- a --config that is not there


@pytest.mark.parametrize(
    "given, suggested",
    [
        ("celeba.toml", "configs/celeba.toml"),  # the file is in ./configs
        ("celeba", "configs/celeba.toml"),  # no suffix
        ("elsewhere/celeba.toml", "configs/celeba.toml"),  # a folder that does not hold it
        ("configs/celba.toml", "configs/celeba.toml"),  # a typo in the name
        ("mine/cifar-10.toml", "mine/cifar10.toml"),  # the closest name in its own folder
    ],
)
def test_a_missing_config_names_the_one_in_configs(tmp_path, monkeypatch, capsys, given, suggested):
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "celeba.toml", tmp_path / "configs" / "celeba.toml")
    (tmp_path / "mine").mkdir()
    shutil.copy(REPO / "configs" / "cifar10.toml", tmp_path / "mine" / "cifar10.toml")
    monkeypatch.chdir(tmp_path)
    for cmd in (["config", "show"], ["train-vae"]):
        line = one_error(*call([*cmd, "--config", given], capsys)[::2])
        assert f"config file {given!r} not found" in line and f"pass --config {suggested}" in line, line
    assert (tmp_path / suggested).is_file()  # the path to pass, from where the command ran


def test_a_missing_config_with_nothing_like_it_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_error(*call(["config", "show", "--config", "celeba.toml"], capsys)[::2])
    assert line == "vaeflow: error: config file 'celeba.toml' not found; pass a TOML file to --config"


# ---------------------------------------------------------------- downloads


def test_the_celeba_instructions_name_the_given_root(tmp_path, capsys):
    root = tmp_path / "data" / "faces"
    line = one_error(*call(["data", "download", "celeba", "--root", root], capsys)[::2])
    assert "ROOT" not in line
    for words in (f"unzip into {root} ", f"{root}/img_align_celeba/*.jpg", f"list_eval_partition.txt in {root}", f"set data.root to {root}"):
        assert words in line, (words, line)
    assert not root.exists()  # nothing created for a dataset it does not download


def test_download_help_lists_every_name_the_command_accepts(capsys):
    from vaeflow_cli.data.download import MANUAL, SOURCES

    rc, out, _ = call(["data", "download", "--help"], capsys)
    text = " ".join(out.split())
    assert rc == 0 and SOURCES and MANUAL
    for name in [*SOURCES, *MANUAL]:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (name, text)
    code = (
        "from vaeflow_cli.data import download; download.SOURCES['new-set'] = []; download.MANUAL['by-hand'] = 'x'; "
        "import vaeflow_cli.cli.commands; from typer.testing import CliRunner; "
        "print(CliRunner().invoke(vaeflow_cli.cli.commands.app, ['data', 'download', '--help'], terminal_width=200).output)"
    )
    text = " ".join(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout.split())
    assert "or new-set;" in text and "and by-hand" in text, text  # derived from data/download.py, not a copy


def test_evaluate_help_lists_every_metric_and_the_cli_imports_no_heavy_module():
    code = (
        "from vaeflow_cli.evaluation import metrics; metrics.METRICS += ('a_new_metric',); "  # the help follows METRICS
        "import vaeflow_cli.cli.commands; from vaeflow_cli.evaluation import arguments; assert arguments.METRICS is metrics.METRICS; "
        "from typer.testing import CliRunner; "
        "out = CliRunner().invoke(vaeflow_cli.cli.commands.app, ['evaluate', '--help'], terminal_width=200).output; "
        "print(' '.join(out.split()))"
    )
    cheap = "import sys; import vaeflow_cli.cli.commands; print(sorted({'torch', 'numpy', 'http.client', 'urllib.request', 'tarfile'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", cheap], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip() == "[]"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    from vaeflow_cli.evaluation.metrics import METRICS

    assert "digit_fd" in METRICS
    assert f"--metrics <str> Comma-separated: {', '.join(METRICS)}, a_new_metric." in out, out


# ---------------------------------------------------------------- data info


def test_data_info_reports_the_splits_that_exist_and_names_the_missing(tmp_path, digits, capsys):
    root = tmp_path / "mnist"
    root.mkdir()
    write_idx(root / "t10k-images-idx3-ubyte", digits[:7])  # the test files only
    rc, out, err = call(["data", "info", "mnist", "--root", root], capsys)
    info = json.loads(out)
    assert rc == 0 and info["splits"] == {"test": 7} and info["image_shape"] == [1, 28, 28]
    assert list(info["missing"]) == ["train"] and "train-images-idx3-ubyte" in info["missing"]["train"]
    assert err.splitlines() == [f"vaeflow: warning: mnist: split 'train' cannot be read, reporting the others: {info['missing']['train']}"]
    rc, out, err = call(["-q", "data", "info", "mnist", "--root", root], capsys)  # a warning: shown under -q too
    assert rc == 0 and json.loads(out) == info and len(err.splitlines()) == 1

    write_idx(root / "train-images-idx3-ubyte", digits[7:12], gz=True)  # both: no "missing", no warning
    rc, out, err = call(["data", "info", "mnist", "--root", root], capsys)
    assert rc == 0 and json.loads(out)["splits"] == {"train": 5, "test": 7} and "missing" not in json.loads(out) and err == ""


def test_data_info_without_any_split_is_one_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = one_error(*call(["data", "info", "fashion-mnist", "--root", tmp_path / "empty"], capsys)[::2])
    assert "train-images-idx3-ubyte[.gz] not found" in line


def test_dataset_info_of_a_plugin_dataset_with_a_missing_split():
    from vaeflow_cli.data.splits import dataset_info
    from vaeflow_cli.errors import VaeflowError

    class Halves:
        image_shape = (1, 2, 2)
        splits = ("train", "val", "test")

        def __init__(self, root=""):
            pass

        def split(self, name):
            if name == "val":
                raise VaeflowError("halves: no val files")
            return np.zeros((3, 1, 2, 2), np.uint8)

    class Registry:
        def get(self, kind, name):
            return type("Entry", (), {"factory": Halves})

    info = dataset_info("halves", "/nowhere", registry=Registry())
    assert info["splits"] == {"train": 3, "test": 3} and info["missing"] == {"val": "halves: no val files"}


# ---------------------------------------------------------------- command summaries


def test_no_command_summary_is_cut_off_and_each_command_keeps_its_full_help(monkeypatch, capsys):
    import typer

    from vaeflow_cli.cli.commands import app

    monkeypatch.setenv("COLUMNS", "80")
    group = typer.main.get_command(app)
    groups = [([], group)] + [([name], cmd) for name, cmd in group.commands.items() if hasattr(cmd, "commands")]
    seen = 0
    for path, grp in groups:
        rc, out, _ = call([*path, "--help"], capsys)
        listing = out.split("Commands:\n", 1)[1].splitlines()
        assert rc == 0 and listing
        for name, cmd in grp.commands.items():
            row = [line for line in listing if line.split()[:1] == [name]]
            assert row, (name, out)
            summary = " ".join(row[0].split()[1:])
            assert summary and not summary.endswith(("...", "…")), (path, name, row[0])
            assert len(row[0]) <= 78, row[0]  # one line in an 80-column terminal
            seen += 1
            if not hasattr(cmd, "commands"):  # the command's own --help keeps its whole text
                full = " ".join(call([*path, name, "--help"], capsys)[1].split())
                assert " ".join((cmd.help or "").split()).split("\n")[0][:60] in full
    assert seen >= 15


# ---------------------------------------------------------------- the README's quick start


def test_the_quick_start_is_two_commands_and_says_what_the_install_costs():
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", quick, re.S)
    assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 1 for b in blocks), blocks
    prose = " ".join(quick.split())
    assert "3 GB of CUDA libraries" in prose and "about 5 more minutes" in prose
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in prose


# ---------------------------------------------------------------- log lines, -q and -v


def test_quiet_hides_the_info_lines_verbose_adds_debug_and_stdout_is_the_same(tmp_path, tiny_config, capsys):
    args = ["--config", tiny_config, "--set", "train.threads=1", "--set", "train.vae.epochs=1"]
    rc, out, err = call(["train-vae", *args, "--run", tmp_path / "plain"], capsys)
    assert rc == 0 and out == f"{tmp_path / 'plain'}\n" and "vae epoch 1/1: train loss" in err
    rc, out, err = call(["-q", "train-vae", *args, "--run", tmp_path / "quiet"], capsys)
    assert rc == 0 and out == f"{tmp_path / 'quiet'}\n" and err == ""
    assert (tmp_path / "quiet" / "checkpoints" / "vae.pt").exists()

    outs = {}
    for flags in ([], ["-q"], ["-v"], ["--verbose"], ["--quiet"]):
        rc, outs[tuple(flags)], err = call([*flags, "config", "show", "--config", tiny_config, "--set", "train.threads=1"], capsys)
        debug_line = f"config: {tiny_config}, --set train.threads=1"
        assert rc == 0 and (err.splitlines() == [debug_line] if flags in (["-v"], ["--verbose"]) else err == ""), (flags, err)
    assert len(set(outs.values())) == 1


def test_errors_stay_one_line_under_quiet_and_both_flags_are_refused(tmp_path, capsys):
    line = one_error(*call(["-q", "config", "show", "--config", tmp_path / "none.toml"], capsys)[::2])
    assert "none.toml' not found" in line
    line = one_error(*call(["-q", "-v", "plugins"], capsys)[::2])
    assert "not both" in line


def test_quiet_turns_the_progress_bar_off(monkeypatch, vaeflow_logger):
    from vaeflow_cli.progress import Progress

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert Progress(enabled=True).enabled
    vaeflow_logger.configure(-1)
    assert not Progress(enabled=True).enabled
    vaeflow_logger.configure(1)
    assert Progress(enabled=True).enabled


LIBRARY = """
import logging, sys
{setup}
from vaeflow_cli import console
console.log("an info line")
console.debug("a debug line")
console.warning("a warning")
print("stdout", console.progress_enabled())
"""


@pytest.mark.parametrize(
    "setup, err, progress",
    [
        ("", "an info line\nvaeflow: warning: a warning\n", True),  # never configured: stderr, as before logging
        (
            "logging.basicConfig(level=logging.DEBUG, format='root %(message)s')",  # the root's handler: not twice
            "an info line\nvaeflow: warning: a warning\n",
            True,
        ),
        ("logging.getLogger('vaeflow').setLevel(logging.WARNING)", "a warning\n", False),  # the app's level; logging.lastResort
        (
            "logging.getLogger('vaeflow').setLevel(logging.DEBUG); logging.basicConfig(format='app %(levelname)s %(message)s')",
            "app INFO an info line\napp DEBUG a debug line\napp WARNING a warning\n",
            True,
        ),  # handed to the app's handlers
    ],
)
def test_library_users_see_the_info_lines_unless_they_configure_logging(setup, err, progress):
    proc = subprocess.run([sys.executable, "-c", LIBRARY.format(setup=setup)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stderr == err and proc.stdout == f"stdout {progress}\n", proc


def test_a_library_line_reaches_a_redirected_stderr(vaeflow_logger):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        vaeflow_logger.log("to the buffer")
    assert buffer.getvalue() == "to the buffer\n"
    assert logging.getLogger("vaeflow").propagate is False


def test_train_baseline_of_the_embedded_default_says_its_glow_layer_is_conditional_and_how_to_train_it_alone(tmp_path, capsys):
    """The embedded default's Glow layer reads the decoder's output: as a standalone density it is
    refused in one line that names the switch, before anything is written; with the switch it trains."""
    run = tmp_path / "run"
    code, out, err = call_main(["train-baseline", "--run", run, "--max-steps", "1", "--set", "train.eval_samples=8"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "is a conditional flow" in err and "--set model.flow.conditional=false" in err and "Traceback" not in err
    assert not run.exists()
    sets = ["--set", "train.eval_samples=8", "--set", "model.flow.conditional=false", "--set", "train.threads=1"]
    code, out, err = call_main(["train-baseline", "--run", run, "--max-steps", "1", *sets], capsys)
    assert code == 0, err
    assert out.strip() == str(run)
