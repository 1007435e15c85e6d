"""What the commands write, and where: the format of ``--out`` follows its extension (a format
option that contradicts it, or an extension naming a format the command cannot write, is refused
before any work); ``evaluate`` prints its results whatever happens to the copy in the run, and
``--out`` saves them elsewhere; and the small things of the command line (``--version``, the
train commands' help, usage errors, which ``--set`` a config error comes from, counts)."""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata

import numpy as np
import pytest
from conftest import call_main

from vaeflow_cli.errors import RuntimeFailure


def one_error(code: int, err: str, exit_code: int = 2) -> str:
    lines = err.strip().splitlines()
    assert code == exit_code and len(lines) == 1 and lines[0].startswith("vaeflow: error: "), (code, err)
    return lines[0]


# -- the format of --out -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt, magic",
    [("x.npy", None, b"\x93NUMPY"), ("X.NPY", None, b"\x93NUMPY"), ("x.png", None, b"\x89PNG"), ("x", None, b"\x89PNG"), ("x", "npy", b"\x93NUMPY")],
)
def test_sample_writes_the_format_its_out_extension_names(trained_run, tmp_path, capsys, name, fmt, magic):
    out = tmp_path / name
    code, stdout, err = call_main(["sample", "--run", trained_run, "--n", "4", "-o", out, *(["--format", fmt] if fmt else [])], capsys)
    assert code == 0 and stdout == f"{out}\n", err
    assert out.read_bytes().startswith(magic)
    if magic == b"\x93NUMPY":
        arr = np.load(out)
        assert arr.dtype == np.uint8 and arr.shape == (4, 1, 28, 28)


@pytest.mark.parametrize(
    "argv, out, words",
    [
        (["sample", "--format", "npy"], "x.png", "--format npy and --out {out} disagree (.png is png); name the file x.npy or leave out --format"),
        (["sample", "--format", "png"], "x.npy", "--format png and --out {out} disagree (.npy is npy)"),
        (["sample"], "x.jpg", "--out {out}: this command writes png or npy, not .jpg; name the file x.png or x.npy"),
        (["sample", "--format", "gif"], "x.gif", "--format gif must be one of png, npy, not 'gif'"),
        (["sample", "--compare"], "figure.npy", "--compare and --temperatures write one PNG figure"),
        (["interpolate"], "i.npy", "--out {out}: this command writes png, not .npy; name the file i.png"),
        (["plot"], "p.jpg", "--out {out}: this command writes png or svg or pdf, not .jpg"),
        (["evaluate", "--json"], "r.txt", "--json and --out {out} disagree (.txt is table); name the file r.json or leave out --json"),
        (["evaluate"], "r.png", "--out {out}: this command writes json or table, not .png; name the file r.json or r.txt"),
        (["evaluate"], "results", "--out {out}: the extension chooses the format; name the file results.json or results.txt"),
    ],
)
def test_an_out_extension_the_command_cannot_honour_is_refused_before_any_work(trained_run, tmp_path, capsys, argv, out, words):
    path = tmp_path / out
    before = sorted(p.relative_to(trained_run) for p in trained_run.rglob("*"))
    line = one_error(*call_main([*argv, "--run", trained_run, "-o", path], capsys)[::2])
    assert words.format(out=path) in line
    assert not path.exists()
    assert sorted(p.relative_to(trained_run) for p in trained_run.rglob("*")) == before


def test_evaluate_out_dash_is_refused_before_any_work(trained_run, capsys):
    line = one_error(*call_main(["evaluate", "--run", trained_run, "-o", "-"], capsys)[::2])
    assert "--out -: the results are on stdout already" in line


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<svg"), (".pdf", b"%PDF"), (".png", b"\x89PNG")])
def test_plot_writes_the_format_its_out_extension_names(trained_run, tmp_path, capsys, suffix, magic):
    out = tmp_path / f"curves{suffix}"
    code, stdout, err = call_main(["plot", "--run", trained_run, "-o", out], capsys)
    assert code == 0 and stdout == f"{out}\n", err
    assert magic in out.read_bytes()[:1000]


def test_plot_out_dash_writes_the_png_bytes_to_stdout_and_no_file_named_dash(trained_run, tmp_path):
    from conftest import run_cli

    proc = run_cli("plot", "--run", trained_run, "--out", "-", cwd=tmp_path)
    assert proc.stdout.startswith(b"\x89PNG\r\n\x1a\n") and proc.stderr == "", proc.stderr
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(
    "argv", [["sample", "--n", "2"], ["sample", "--n", "2", "--format", "npy"], ["interpolate", "--pairs", "1", "--steps", "2"], ["plot"]]
)
def test_an_out_ending_in_a_separator_names_a_folder_and_is_refused_before_any_work(trained_run, tmp_path, capsys, argv):
    out = f"{tmp_path / 'new'}{os.sep}"  # the folder does not exist: no extensionless file may take its name
    before = sorted(p.relative_to(trained_run) for p in trained_run.rglob("*"))
    line = one_error(*call_main([*argv, "--run", trained_run, "--out", out], capsys)[::2])
    assert f"--out {out} names a folder" in line and "give a file path" in line, line
    assert not (tmp_path / "new").exists()
    assert sorted(p.relative_to(trained_run) for p in trained_run.rglob("*")) == before


def test_sample_no_grid_into_a_new_folder_ending_in_a_separator_writes_into_it(trained_run, tmp_path, capsys):
    out = f"{tmp_path / 'pngs'}{os.sep}"
    code, stdout, err = call_main(["sample", "--run", trained_run, "--n", "2", "--no-grid", "--out", out], capsys)
    assert code == 0, err
    assert stdout.split() == [str(tmp_path / "pngs" / f"{i:05d}.png") for i in range(2)]


def test_sample_no_grid_stops_quietly_when_the_reader_of_its_paths_leaves(trained_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / ("a-long-folder-name-" * 12)  # paths of ~250 bytes: 400 of them overflow any pipe buffer
    command = [sys.executable, "-m", "vaeflow_cli", "sample", "--run", str(trained_run), "--n", "400", "--no-grid", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip().endswith(b"00000.png")
    proc.stdout.close()  # as head -n 1 does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert "error" not in err and "--out" not in err and "Traceback" not in err, err


# -- evaluate: the results are printed whatever happens to the copy in the run ------------------


def unwritable_copy(trained_run, tmp_path):
    """A copy of the run whose eval/ cannot be created: a file stands where the folder goes, so
    nothing can be written under it, by root either (a read-only run, as far as evaluate goes)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    (run / "eval").write_text("")
    return run


def test_evaluate_prints_the_results_of_a_run_it_cannot_write_and_warns_once(trained_run, tmp_path, capsys):
    from vaeflow_cli.evaluation.table import format_table

    run = unwritable_copy(trained_run, tmp_path)
    code, out, err = call_main(["evaluate", "--run", run, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["bpd_elbo_vae"] > 0 and result["bpd_elbo_full"] > 0
    warnings = [line for line in err.splitlines() if line.startswith("vaeflow: warning:")]
    assert len(warnings) == 1 and f"the results were not saved in {run / 'eval'}" in warnings[0] and "--out FILE" in warnings[0], err
    assert "error" not in err
    code, out, err = call_main(["evaluate", "--run", run], capsys)
    assert code == 0 and out == format_table(result) + "\n"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_evaluate_prints_the_results_of_a_read_only_run(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        code, out, err = call_main(["evaluate", "--run", run, "--json"], capsys)
        assert code == 0 and json.loads(out)["bpd_elbo_full"] > 0, err
        assert "were not saved" in err
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_evaluate_out_saves_the_results_there_and_writes_nothing_into_the_run(trained_run, tmp_path, capsys):
    from vaeflow_cli.evaluation.table import format_table

    run = unwritable_copy(trained_run, tmp_path)
    code, out, err = call_main(["evaluate", "--run", run, "--json", "-o", tmp_path / "results.json"], capsys)
    assert code == 0 and "warning" not in err, err
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(out)
    code, out, err = call_main(["evaluate", "--run", run, "-o", tmp_path / "results.txt"], capsys)
    assert code == 0 and "warning" not in err, err
    assert (tmp_path / "results.txt").read_text() == out
    assert out.startswith(f"run {run}, split test (32 images)") and out == format_table(json.loads((tmp_path / "results.json").read_text())) + "\n"
    assert (run / "eval").is_file()


def test_when_out_cannot_be_written_the_results_are_printed_before_the_error(trained_run, tmp_path, capsys, monkeypatch):
    from vaeflow_cli import files

    target = tmp_path / "results.json"
    real = files.atomic_write_bytes

    def disk_full(path, data):
        if str(path) == str(target):
            raise RuntimeFailure(f"cannot write {path}: No space left on device; the disk is full")
        return real(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", disk_full)
    code, out, err = call_main(["-q", "evaluate", "--run", trained_run, "--json", "-o", target], capsys)
    assert json.loads(out)["bpd_elbo_full"] > 0
    assert "No space left on device" in one_error(code, err, exit_code=1)


# -- the small things ----------------------------------------------------------------------------


def test_version_prints_the_installed_version(capsys):
    code, out, err = call_main(["--version"], capsys)
    assert code == 0 and err == "" and out == f"vaeflow {metadata.version('vaeflow')}\n"


def test_a_usage_error_names_the_program_once(capsys):
    line = one_error(*call_main(["--nope"], capsys)[::2])
    assert line == "vaeflow: error: No such option: --nope; see 'vaeflow --help'"
    line = one_error(*call_main(["config", "show", "--nope"], capsys)[::2])
    assert line == "vaeflow: error: config show: No such option: --nope; see 'vaeflow config show --help'"


def test_each_train_command_s_help_gives_its_own_set_example_and_the_config_it_uses_without_c(capsys):
    from vaeflow_cli.runtime.phases import PHASES

    for phase in PHASES.values():
        code, out, _ = call_main([phase.command, "--help"], capsys)
        text = " ".join(out.split())
        assert code == 0 and f"--set train.{phase.name}.epochs=3" in text, text
        assert "train.vae." not in text or phase.name == "vae"
        stored = "the config stored in the run directory, --run or runs/default, when there is one" if phase.starts_from else "stored in --run's"
        assert stored in text and "else the embedded MNIST config" in text, text


@pytest.mark.parametrize(
    "override, where",
    [
        ("model.decoder.type=nope", "model.decoder.type: unknown decoder 'nope'"),
        ("data.name=nope", "data.name: unknown dataset 'nope'"),
        ("model.decoder.min_std=-1", "'model.decoder.min_std'"),
        ("train.seed=-1", "'train.seed'"),
    ],
)
def test_a_bad_set_is_reported_against_the_set_not_the_file(tiny_config, capsys, override, where):
    line = one_error(*call_main(["config", "show", "--config", tiny_config, "--set", override], capsys)[::2])
    assert line.startswith(f"vaeflow: error: --set {override}: ") and where in line and str(tiny_config) not in line


def test_a_count_of_one_is_singular(trained_run, tmp_path, capsys):
    from vaeflow_cli.console import counted

    assert (counted(1, "epoch"), counted(2, "epoch"), counted(0, "image")) == ("1 epoch", "2 epochs", "0 images")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, out, err = call_main(["train-glow", "--run", run, "--resume", "--set", "train.threads=1"], capsys)  # one epoch, finished
    assert code == 0, err
    assert "is already complete (1 epoch); raise train.glow.epochs" in err and "1 epochs" not in err


def test_plugins_stops_quietly_when_the_reader_of_its_rows_leaves(monkeypatch, capsys):
    """A listing is rows, as score's: `vaeflow plugins | head -1` stops without a word, exit 141."""
    from vaeflow_cli.cli import commands

    rows = []

    def out(text, nl=True):
        rows.append(text)
        if len(rows) > 1:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(commands, "_out", out)
    code, _, err = call_main(["plugins"], capsys)
    assert code == 141 and err == "" and len(rows) == 2, (code, err)
