"""vaeflow_cli.files: atomic writes give a file the permissions a plain write would (the umask for
a new file, its own mode for a replaced one), for every kind of file vaeflow writes."""

import os
import shutil
import stat

import pytest
from conftest import call_main

from vaeflow_cli.files import atomic_write, atomic_write_bytes

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask():
    """Set the process umask for the test; restored afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027], ids=oct)
def test_a_new_file_gets_0666_less_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(tmp_path / "new.bin", b"x")
    with open(tmp_path / "plain.bin", "wb") as fh:
        fh.write(b"x")
    assert mode(tmp_path / "new.bin") == mode(tmp_path / "plain.bin") == 0o666 & ~mask


@pytest.mark.parametrize("existing", [0o644, 0o640, 0o600, 0o664], ids=oct)
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, existing):
    umask(0o077)
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    path.chmod(existing)
    atomic_write(path, lambda fh: fh.write(b"new"))
    assert path.read_bytes() == b"new" and mode(path) == existing
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left


def test_a_failed_write_leaves_nothing_and_the_target_unchanged(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "kept.txt"
    path.write_bytes(b"old")
    path.chmod(0o640)

    def fail(fh):
        fh.write(b"half")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and mode(path) == 0o640 and [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_checkpoints_run_files_and_out_files_follow_the_umask(tmp_path, trained_run, umask, capsys):
    from vaeflow_cli.runtime.runs import RunDir

    umask(0o022)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rd = RunDir(run)
    rd.save_checkpoint("vae", rd.load_checkpoint("vae"), keep=2, tag="step7")  # the tagged file and PHASE.pt (a hard link)
    assert mode(run / "checkpoints" / "vae-step7.pt") == mode(run / "checkpoints" / "vae.pt") == 0o644
    out = tmp_path / "grid.png"
    code, _, err = call_main(["sample", "--run", run, "--n", "4", "--out", out], capsys)
    assert code == 0, err
    assert mode(out) == 0o644
    # overwriting a 0644 file leaves it 0644 whatever the umask
    umask(0o077)
    code, _, err = call_main(["sample", "--run", run, "--n", "4", "--out", out], capsys)
    assert code == 0, err
    assert mode(out) == 0o644
