"""vaeflow score and Run.score: each score against an independent computation (the model's own
bound on evaluate's batches and noise, evaluate's numbers, PNG file lengths), the inputs (files,
folders, stdin, a dataset's split), the rows on stdout in a shell pipeline, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, call_main, run_cli
from PIL import Image

from vaeflow_cli.config import core as config_mod


@pytest.fixture(scope="module")
def run(trained_run):
    from vaeflow_cli.api import load_run

    return load_run(trained_run, device="cpu")


@pytest.fixture(scope="module")
def images(run) -> np.ndarray:
    return run.images("test")  # uint8 (32, 1, 28, 28)


def write_pngs(folder, images, names=None, **options):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(images):
        path = folder / (names[i] if names else f"{i:04d}.png")
        Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)).save(path, **options)
        paths.append(path)
    return paths


def run_state(path) -> dict:
    """Every file of a run directory with its contents' digest: nothing may change it."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def direct_elbo(model, images, seed, use_flow=None):
    """The model's own bound on evaluate's batches (256 images), noise (EVAL_EPOCH, image index)
    and latent stream, computed here: (bpd, latent_bpd, pixel_bpd) float64 each."""
    from vaeflow_cli.data.dequantization import EVAL_EPOCH, dequantize

    g = torch.Generator().manual_seed(seed)
    out = [[], [], []]
    with torch.no_grad():
        for start in range(0, len(images), 256):
            idx = np.arange(start, min(start + 256, len(images)))
            b = model.bound(torch.from_numpy(dequantize(images[idx], seed=seed, epoch=EVAL_EPOCH, indices=idx)), use_flow=use_flow, generator=g)
            for part, value in zip(out, (b.bpd, b.latent_bpd, b.pixel_bpd), strict=True):
                part.append(value.double().numpy())
    return [np.concatenate(p) for p in out]


def test_the_elbo_and_its_terms_are_evaluate_s_per_image_numbers(trained_run, run, images, tmp_path):
    from vaeflow_cli.evaluation.evaluate import evaluate_run
    from vaeflow_cli.evaluation.results import per_image_stats

    s = run.score(images)
    assert s.bound == "elbo" and s.model == "full" and s.labels == [str(i) for i in range(32)]
    bpd, latent, pixel = direct_elbo(run.model, images, run.seed)
    assert np.array_equal(s.bpd, bpd) and np.array_equal(s.elbo_bpd, bpd) and np.array_equal(s.latent_bpd, latent)
    np.testing.assert_allclose(s.pixel_bpd, pixel, atol=1e-5)  # Bound.pixel_bpd, up to float32 rounding
    np.testing.assert_allclose(s.latent_bpd + s.pixel_bpd, s.bpd, rtol=1e-14)  # they add up to the bound
    # evaluate's per-image distribution of the same images and seed
    r = evaluate_run(trained_run, metrics=["bpd"], out=tmp_path / "evaluate.json")
    stats = per_image_stats(s.bpd)
    for key in ("median", "p90", "max"):
        assert stats[key] == r["bpd_elbo_full_per_image"][key]
    assert stats["mean"] == pytest.approx(r["bpd_elbo_full"], rel=1e-6)
    # the CLI on PNG files of the same images, and on the run's split: the same numbers
    folder = tmp_path / "pngs"
    write_pngs(folder, images)
    rows = [json.loads(line) for line in run_cli("score", "--run", trained_run, "--json", folder).stdout.decode().splitlines()]
    assert [row["path"] for row in rows] == [str(folder / f"{i:04d}.png") for i in range(32)]
    assert [row["bpd"] for row in rows] == s.bpd.tolist() and [row["latent_bpd"] for row in rows] == s.latent_bpd.tolist()
    rows = [json.loads(line) for line in run_cli("score", "--run", trained_run, "--json", "--split", "test").stdout.decode().splitlines()]
    assert [row["path"] for row in rows] == [f"mnist:test:{i}" for i in range(32)] and [row["bpd"] for row in rows] == s.bpd.tolist()


def test_iwae_scores_are_the_iwae_bound_and_keep_the_elbo_s_terms(run, images):
    from vaeflow_cli.data.dequantization import EVAL_EPOCH, dequantize
    from vaeflow_cli.model.distributions import bits_per_dim

    s = run.score(images, k=8, seed=3)
    assert s.bound == "iwae" and s.k == 8 and s.columns() == ("bpd", "elbo_bpd", "latent_bpd", "pixel_bpd", "png_bpd", "complexity")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        want = []
        for start in range(0, 32, 256 // 8):  # evaluate's IWAE batches: 32 images of 8 samples
            idx = np.arange(start, start + 32)
            y = torch.from_numpy(dequantize(images[idx], seed=3, epoch=EVAL_EPOCH, indices=idx))
            want.append(bits_per_dim(run.model.iwae_log_likelihood(y, k=8, generator=g, chunk=8), run.model.dims).double().numpy())
    assert np.array_equal(s.bpd, np.concatenate(want))
    assert np.array_equal(s.elbo_bpd, direct_elbo(run.model, images, 3)[0])
    np.testing.assert_allclose(s.latent_bpd + s.pixel_bpd, s.elbo_bpd, rtol=1e-14)
    assert np.array_equal(s.bpd, run.log_prob_bound(images, k=8, seed=3).numpy())


def test_png_is_the_length_of_a_png_file_and_complexity_is_the_difference(run, images, tmp_path):
    paths = write_pngs(tmp_path, images, optimize=True)
    s = run.score(images)
    assert np.array_equal(s.png_bpd, [8 * p.stat().st_size / 784 for p in paths])
    assert np.array_equal(s.complexity, s.bpd - s.png_bpd)


def test_files_in_chunks_and_from_stdin_give_the_numbers_of_one_array(trained_run, run, images, tmp_path):
    """600 images: three batches of 256, files read 256 at a time; the same numbers however they come."""
    many = np.concatenate([np.roll(images, shift, axis=3) for shift in range(19)])[:600]
    paths = write_pngs(tmp_path / "many", many)
    whole = run.score(many)
    from_files = run.score(str(tmp_path / "many"))
    assert from_files.labels == [str(p) for p in paths] and np.array_equal(from_files.bpd, whole.bpd)
    assert np.array_equal(from_files.latent_bpd, whole.latent_bpd) and np.array_equal(from_files.png_bpd, whole.png_bpd)
    listing = "".join(f"{p}\n" for p in paths[:300]) + "\n" + "".join(f"{p}\n" for p in paths[300:])  # an empty line is skipped
    proc = run_cli("-q", "score", "--run", trained_run, "-", input=listing.encode())
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "path\tbpd\tlatent_bpd\tpixel_bpd\tpng_bpd\tcomplexity" and len(lines) == 601 and proc.stderr == ""
    assert [float(line.split("\t")[1]) for line in lines[1:]] == [float(f"{v:.6f}") for v in whole.bpd]


def test_rows_work_with_sort_head_and_awk(trained_run, run, images, tmp_path):
    write_pngs(tmp_path / "pngs", images)
    s = run.score(images)
    command = (
        f"{sys.executable} -m vaeflow_cli -q score --run {trained_run} --no-header {tmp_path / 'pngs'} "
        "| sort -t \"$(printf '\\t')\" -k2,2gr | head -n 3 | awk -F '\\t' '{print $1, $2 - $3 - $4}'"
    )
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    worst = np.argsort(-s.bpd, kind="stable")[:3]
    assert [line.split(" ")[0] for line in out] == [str(tmp_path / "pngs" / f"{i:04d}.png") for i in worst]
    assert all(abs(float(line.split(" ")[1])) < 2e-6 for line in out)  # bpd = latent + pixel, to the 6 decimals printed


def test_a_reader_that_closes_the_pipe_stops_score_quietly(trained_run, images, tmp_path):
    folder = tmp_path / ("a-long-folder-name-" * 12)  # rows of ~300 bytes: 600 of them overflow any pipe buffer
    write_pngs(folder, np.concatenate([images] * 19)[:600])
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaeflow_cli", "score", "--run", str(trained_run), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline().startswith(b"path\t")
    proc.stdout.close()  # as head does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err and "error" not in err, err


def test_inputs_that_cannot_be_scored_are_one_line_each_and_exit_3(trained_run, images, tmp_path):
    good = write_pngs(tmp_path / "in", images[:3])
    data = good[0].read_bytes()
    (tmp_path / "in" / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "in" / "text.png").write_text("not an image")
    (tmp_path / "in" / "notes.txt").write_text("left out: not .png/.jpg/.jpeg")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "in" / "wide.png")
    (tmp_path / "empty").mkdir()
    before = run_state(trained_run)
    proc = run_cli("score", "--run", trained_run, tmp_path / "in", tmp_path / "missing.png", tmp_path / "empty", check=False)
    assert proc.returncode == 3
    rows = proc.stdout.decode().splitlines()
    assert [row.split("\t")[0] for row in rows] == ["path", *map(str, good)]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vaeflow: error:")]
    assert len(errors) == 6, proc.stderr
    for name, why in (
        ("missing.png", "not found"),
        ("empty", "is an empty folder"),
        ("truncated.png", "truncated"),
        ("text.png", "not a PNG or JPEG"),
        ("wide.png", "image is 30x30, the model needs 28x28"),
    ):
        assert any(name in line and why in line for line in errors), (name, proc.stderr)
    assert errors[-1].endswith("5 of 8 inputs could not be scored (each is named above); stdout has the scores of the other 3")
    assert "left out 1 file that is not .png/.jpg/.jpeg" in proc.stderr and "Traceback" not in proc.stderr
    assert run_state(trained_run) == before  # nothing in the run directory changed


@pytest.mark.parametrize(
    "args, words",
    [
        (["{empty}"], "is an empty folder"),
        ([], "nothing to score"),
        (["-", "-"], "given more than once"),
        (["--json", "--no-header", "{png}"], "--no-header is for the TSV"),
        (["--split", "test", "{png}"], "not both"),
        (["--data", "mnist"], "add --split"),
        (["--crop-resize", "{png}"], "has no crop or resize for image files"),
        (["--split", "val"], "has splits train, test"),
        (["{huge}"], "more than the limit"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(trained_run, images, tmp_path, args, words):
    (tmp_path / "empty").mkdir()
    write_pngs(tmp_path, images[:1], ["x.png"])
    (tmp_path / "huge.png").write_bytes(_png_header(50_000, 50_000))
    before = run_state(trained_run)
    full = [a.format(empty=tmp_path / "empty", png=tmp_path / "x.png", huge=tmp_path / "huge.png") for a in args]
    proc = run_cli("score", "--run", trained_run, *full, check=False)
    assert proc.returncode == 2 and proc.stdout == b""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vaeflow: error:")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert run_state(trained_run) == before


def _png_header(width: int, height: int) -> bytes:
    """A PNG file whose header claims width x height pixels (and holds none)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def test_odd_file_names_come_through_escaped(trained_run, images, tmp_path):
    names = ["tab\there.png", "new\nline.png", "space and ü.png", "back\\slash.png", "-dash.png"]
    paths = write_pngs(tmp_path, images[: len(names)], names)
    odd = os.fsencode(tmp_path) + b"/odd\xff.png"
    shutil.copy(paths[0], odd)
    args = [*map(str, paths), os.fsdecode(odd)]
    tsv = run_cli("-q", "score", "--run", trained_run, "--", *args).stdout.decode().splitlines()
    base = str(tmp_path)
    assert [row.split("\t")[0] for row in tsv[1:]] == [
        f"{base}/tab\\there.png",
        f"{base}/new\\nline.png",
        f"{base}/space and ü.png",
        f"{base}/back\\\\slash.png",
        f"{base}/-dash.png",
        f"{base}/odd\\xff.png",
    ]
    assert all(len(row.split("\t")) == 6 for row in tsv)
    rows = [json.loads(line) for line in run_cli("-q", "score", "--run", trained_run, "--json", "--", *args).stdout.decode().splitlines()]
    assert [r["path"] for r in rows] == [*map(str, paths), f"{base}/odd\\xff.png"]


def test_the_same_seed_gives_the_same_numbers(trained_run, images, tmp_path):
    write_pngs(tmp_path, images[:8])
    first, again = (run_cli("-q", "score", "--run", trained_run, "--seed", "5", tmp_path).stdout for _ in range(2))
    other = run_cli("-q", "score", "--run", trained_run, "--seed", "6", tmp_path).stdout
    assert first == again and first != other


def test_a_phase_1_run_and_a_standalone_flow_say_what_they_score(trained_run, images, tmp_path):
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.dequantization import EVAL_EPOCH, dequantize
    from vaeflow_cli.model.distributions import bits_per_dim, standard_normal_log_prob
    from vaeflow_cli.training.loop import train_phase

    phase1 = tmp_path / "phase1"
    shutil.copytree(trained_run, phase1)
    for p in (phase1 / "checkpoints").glob("glow*"):
        p.unlink()
    write_pngs(tmp_path / "pngs", images)
    proc = run_cli("score", "--run", phase1, "--json", tmp_path / "pngs")
    assert "phase-1 model, the VAE alone" in proc.stderr
    r1 = load_run(phase1, device="cpu")
    assert [json.loads(line)["bpd"] for line in proc.stdout.decode().splitlines()] == direct_elbo(r1.model, images, r1.seed, use_flow=False)[
        0
    ].tolist()

    cfg = config_mod.resolve(base=config_mod.resolve(trained_run / "config.toml")).to_dict()
    cfg["train"]["baseline"].update(epochs=1, batch_size=32)
    cfg["model"]["flow"] = {"type": "multiscale-glow", "levels": 2, "steps": 2, "hidden_channels": 8, "coupling": "affine", "lu": True}
    train_phase(cfg, tmp_path / "baseline", "baseline", progress=False)
    proc = run_cli("score", "--run", tmp_path / "baseline", "--json", "--iwae-k", "4", tmp_path / "pngs")
    assert "standalone flow" in proc.stderr and "exact bits/dim, and no latent term" in proc.stderr and "--iwae-k changes nothing" in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    flow = load_run(tmp_path / "baseline", device="cpu").model
    with torch.no_grad():
        z, log_det = flow.flow(torch.from_numpy(dequantize(images, seed=0, epoch=EVAL_EPOCH, indices=np.arange(32))))
        exact = bits_per_dim(standard_normal_log_prob(z) + log_det, 784).double().numpy()
    np.testing.assert_allclose([r["bpd"] for r in rows], exact, rtol=1e-6)
    assert all(r["latent_bpd"] == 0.0 and r["pixel_bpd"] == r["bpd"] and "elbo_bpd" not in r for r in rows)


def test_crop_resize_applies_the_run_s_own_crop_and_resize(tmp_path):
    from vaeflow_cli.api import load_run
    from vaeflow_cli.data.decode import decode_with_fallback
    from vaeflow_cli.training.loop import train_phase

    rng = np.random.RandomState(0)
    write_pngs(tmp_path / "photos", rng.randint(0, 256, (12, 3, 12, 10)).astype(np.uint8))
    path = tmp_path / "images.toml"
    path.write_text(
        TINY.format(root=tmp_path / "photos", run=tmp_path / "run")
        .replace('name = "mnist"', 'name = "imagefolder"\nsize = 8\ntest_fraction = 0.3')
        .replace("epochs = 2", "epochs = 1")
    )
    train_phase(config_mod.resolve(path), tmp_path / "run", "vae", progress=False)
    raw = write_pngs(tmp_path / "raw", rng.randint(0, 256, (3, 3, 50, 40)).astype(np.uint8))
    proc = run_cli("score", "--run", tmp_path / "run", tmp_path / "raw", check=False)
    assert proc.returncode == 2 and proc.stdout == b"" and proc.stderr.count("image is 40x50, the model needs 8x8") == 3
    assert "add --crop-resize to apply the run's own crop and resize" in proc.stderr
    proc = run_cli("score", "--run", tmp_path / "run", "--crop-resize", "--json", tmp_path / "raw")
    assert "applying the run's preprocessing (imagefolder): the centred square of the shorter side, resized to 8x8" in proc.stderr
    want = load_run(tmp_path / "run", device="cpu").score(decode_with_fallback(raw, crop=0, size=8).transpose(0, 3, 1, 2))
    assert [json.loads(line)["bpd"] for line in proc.stdout.decode().splitlines()] == want.bpd.tolist()
    # ood's size hint names the command line's option, Run.score's the Python keyword
    proc = run_cli("ood", "--run", tmp_path / "run", "--in", "imagefolder:test", "--out", tmp_path / "raw", check=False)
    assert proc.returncode == 2 and "add --crop-resize to apply the run's own crop and resize" in proc.stderr, proc.stderr
    assert "crop_resize=True" not in proc.stderr
    from vaeflow_cli.errors import VaeflowError

    with pytest.raises(VaeflowError, match=r"crop_resize=True"):
        load_run(tmp_path / "run", device="cpu").score(tmp_path / "raw")


def test_the_api_takes_arrays_paths_and_lists_and_names_the_failures(run, images, tmp_path):
    from vaeflow_cli.errors import VaeflowError

    paths = write_pngs(tmp_path, images[:4])
    s = run.score([paths[0], str(tmp_path / "missing.png"), paths[1]])
    assert s.labels == [str(paths[0]), str(paths[1])] and len(s) == 2
    assert s.failed == [(str(tmp_path / "missing.png"), f"{tmp_path / 'missing.png'} not found; give an image file or a folder of them")]
    assert np.array_equal(run.score(tmp_path).bpd, run.score(images[:4]).bpd)
    assert np.array_equal(run.score(torch.from_numpy(images[:4])).bpd, run.score(images[:4].transpose(0, 2, 3, 1)).bpd)
    for bad, words in (
        (images.astype(np.float32), "must be uint8"),
        ([], "non-empty list of paths"),
        ([paths[0], 3], "a path, or a non-empty list of paths"),
        (str(tmp_path / "missing.png"), "none of the 1 files could be scored"),
    ):
        with pytest.raises(VaeflowError, match=words):
            run.score(bad)
    with pytest.raises(VaeflowError, match="k must be"):
        run.score(images, k=0)
    with pytest.raises(VaeflowError, match="crop_resize applies to image files"):
        run.score(images, crop_resize=True)


def test_progress_is_a_bar_on_a_terminal_and_nothing_under_quiet(trained_run, images, tmp_path):
    import pty
    import select

    write_pngs(tmp_path / "pngs", images)

    def on_a_terminal(*args):
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "160"}
        proc = subprocess.Popen([sys.executable, "-m", "vaeflow_cli", *map(str, args)], stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        seen = []
        while True:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the process ended
                    break
                if not data:
                    break
                seen.append(data)
            elif proc.poll() is not None:
                break
        stdout = proc.communicate(timeout=300)[0]
        os.close(master)
        return proc.returncode, stdout, b"".join(seen).decode(errors="replace")

    code, stdout, terminal = on_a_terminal("score", "--run", trained_run, tmp_path / "pngs")
    assert code == 0 and len(stdout.splitlines()) == 33
    assert "scoring the single-sample ELBO" in terminal and "\u2501" in terminal and "32/32" in terminal, terminal[-2000:]
    code, quiet, terminal = on_a_terminal("-q", "score", "--run", trained_run, tmp_path / "pngs")
    assert code == 0 and terminal == "" and quiet == stdout


@pytest.mark.parametrize("fd, args, words", [(1, ["{png}"], "stdout is closed"), (0, ["-"], "reads paths from stdin, which is closed")])
def test_a_closed_stdout_or_stdin_is_one_line(trained_run, images, tmp_path, fd, args, words):
    write_pngs(tmp_path, images[:1], ["x.png"])
    command = [sys.executable, "-m", "vaeflow_cli", "score", "--run", str(trained_run), *[a.format(png=tmp_path / "x.png") for a in args]]
    proc = subprocess.run(command, stdout=subprocess.PIPE if fd else None, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(fd))
    assert proc.returncode == 2 and proc.stderr.splitlines() == [proc.stderr.strip()] and words in proc.stderr, proc.stderr


def test_an_unreadable_subfolder_is_named_in_one_line_and_the_rest_is_scored(trained_run, run, images, tmp_path, capsys, monkeypatch):
    good = write_pngs(tmp_path / "ud", images[:2])
    sub = tmp_path / "ud" / "sub"
    write_pngs(sub, images[2:3])
    real_scandir = os.scandir

    def scandir(path="."):  # as for a folder of mode 000 to a user who is not root (tests run as root)
        if os.fspath(path) == str(sub):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, out, err = call_main(["score", "--run", trained_run, tmp_path / "ud"], capsys)
    assert code == 3, err
    assert [row.split("\t")[0] for row in out.splitlines()] == ["path", *map(str, good)]
    errors = [line for line in err.splitlines() if line.startswith("vaeflow: error:")]
    assert errors[0] == f"vaeflow: error: {sub}: cannot list its files (Permission denied); check its permissions", err
    assert len(errors) == 2 and "1 of 3 inputs could not be scored" in errors[1]
    s = run.score(tmp_path / "ud")
    assert s.labels == list(map(str, good)) and [p for p, _ in s.failed] == [str(sub)]
    # only the unreadable subfolder: it is the one error, naming it (not the readable parent)
    for p in good:
        p.unlink()
    code, out, err = call_main(["score", "--run", trained_run, tmp_path / "ud"], capsys)
    assert code == 2 and out == "" and err.strip() == f"vaeflow: error: {sub}: cannot list its files (Permission denied); check its permissions"


def test_a_file_that_may_not_be_read_is_told_permission_denied(trained_run, images, tmp_path, capsys, monkeypatch):
    good, locked = write_pngs(tmp_path, images[:2], ["good.png", "locked.png"])
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.fspath(path) == str(locked) else real_access(path, mode, **kw))
    code, out, err = call_main(["score", "--run", trained_run, good, locked], capsys)
    assert code == 3 and [row.split("\t")[0] for row in out.splitlines()] == ["path", str(good)], err
    errors = [line for line in err.splitlines() if line.startswith("vaeflow: error:")]
    assert errors[0].startswith(f"vaeflow: error: {locked}: permission denied; check its permissions") and "PNG or JPEG" not in errors[0], err
