"""The Python API: ``vaeflow_cli.load_run`` and ``Run``, the example of docs/api.md, the CLI as a thin
wrapper (same pixels for the same seed), cheap ``import vaeflow_cli``."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

import vaeflow_cli
from vaeflow_cli.api import as_uint8_images, load_run
from vaeflow_cli.data.images import to_uint8
from vaeflow_cli.errors import VaeflowError

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"  # the Python API page of the docs site


def test_public_api_is_declared_and_lazy():
    assert set(vaeflow_cli.__all__) == {"__version__", *vaeflow_cli._EXPORTS}
    code = (
        "import sys, vaeflow_cli; assert 'torch' not in sys.modules and 'numpy' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')); "
        "f = vaeflow_cli.load_run; assert 'torch' in sys.modules; print(f.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "vaeflow_cli.api"
    with pytest.raises(AttributeError):
        vaeflow_cli.no_such_name  # noqa: B018
    assert (Path(vaeflow_cli.__file__).parent / "py.typed").is_file()


def api_page_example() -> str:
    text = API_PAGE.read_text()
    section = text[text.index("# Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_api_page_example_runs_and_means_what_it_says(trained_run, capsys):
    code = api_page_example().replace('"runs/default"', repr(str(trained_run)))
    scope: dict = {}
    exec(compile(code, "docs/api.md (Python API)", "exec"), scope)  # noqa: S102 -- the docs' own example
    run, x, test = scope["run"], scope["x"], scope["test"]
    c, h, w = run.image_shape
    assert run.phase == "glow" and (c, h, w) == (1, 28, 28)
    assert x.shape == (16, c, h, w) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert 0 <= x.min() and x.max() <= 1
    assert test.dtype == np.uint8 and test.shape[1:] == (c, h, w)
    d = run.config["model"]["latent_dim"]
    assert scope["mean"].shape == scope["log_std"].shape == (len(test), d)
    assert scope["recon"].shape == (len(test), c, h, w)
    elbo, iwae = scope["elbo"], scope["iwae"]
    assert elbo.shape == iwae.shape == (len(test),) and elbo.dtype == torch.float64
    assert iwae.mean() < elbo.mean()  # IWAE_64 is the tighter bound
    assert scope["path"].shape == (8, c, h, w)
    assert "bits/dim" in capsys.readouterr().out


def test_cli_sample_gives_the_api_pixels_for_the_same_seed(trained_run):
    run = load_run(trained_run)
    for args, kwargs in (
        (["--n", "5", "--seed", "3"], dict(seed=3)),
        (["--n", "4", "--seed", "9", "-t", "0.8"], dict(seed=9, temperature=0.8)),
        (["--n", "3", "--vae-only"], dict(seed=0, vae_only=True)),
    ):
        cli = np.load(io.BytesIO(run_cli("sample", "--run", trained_run, "--format", "npy", "--out", "-", *args).stdout))
        api = to_uint8(run.sample(int(args[1]), **kwargs))
        assert cli.dtype == np.uint8 and np.array_equal(cli, api), args


def test_bounds_match_evaluate_and_the_model_computed_here(trained_run):
    """log_prob_bound with the default seed is what evaluate reports; k=1 is the ELBO."""
    from vaeflow_cli.evaluation.evaluate import evaluate_run

    run = load_run(trained_run, device="cpu")
    test = run.images("test")
    result = evaluate_run(trained_run, metrics=["bpd", "iwae"], iwae_k=4)
    assert float(run.log_prob_bound(test).mean()) == pytest.approx(result["bpd_elbo_full"], rel=1e-6)
    assert float(run.log_prob_bound(test, k=4).mean()) == pytest.approx(result["bpd_iwae_full"], rel=1e-6)
    vae = load_run(trained_run, checkpoint="vae")
    assert vae.phase == "vae" and not vae.use_flow and run.use_flow
    assert float(vae.log_prob_bound(test).mean()) == pytest.approx(result["bpd_elbo_vae"], rel=1e-6)
    # another seed dequantizes and samples differently: a different (but close) number
    other = run.log_prob_bound(test, seed=123)
    assert not torch.equal(other, run.log_prob_bound(test)) and abs(float(other.mean() - run.log_prob_bound(test).mean())) < 0.5


def test_encode_and_reconstruct_agree_with_the_model(trained_run):
    run = load_run(trained_run, device="cpu")
    test = run.images("test")[:5]
    y = torch.from_numpy((test.astype(np.float32) + 0.5) / 256)
    with torch.no_grad():
        mean, log_std = run.model.encoder(y)
        g_mu, g_sigma = run.model.decoder(mean)
        want = run.model.from_decoder_space(g_mu, condition=(g_mu, g_sigma))  # a conditional flow reads the decoder's output
    got_mean, got_log_std = run.encode(test)
    assert torch.equal(got_mean, mean) and torch.equal(got_log_std, log_std)
    assert np.array_equal(to_uint8(run.reconstruct(test)), to_uint8(want))
    # the layouts a notebook has: NHWC, a tensor, one image, (N, H, W) for one channel. Each is
    # compared with the encoder on a batch of the same size: a CPU's convolution kernels may
    # depend on the batch size (one image against five differs in the last bits on some CPUs).
    nhwc = test.transpose(0, 2, 3, 1)
    for variant in (nhwc, torch.from_numpy(test), test[0], test[:, 0], nhwc[0]):
        m, _ = run.encode(variant)
        with torch.no_grad():
            expected = run.model.encoder(y[: len(m)])[0]
        assert torch.equal(m, expected)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 1, 28, 28), np.float32), "must be uint8"),
        (np.zeros((2, 3, 28, 28), np.uint8), "has shape (2, 3, 28, 28)"),
        (np.zeros((0, 1, 28, 28), np.uint8), "holds no images"),
        ([[0, 1]], "must be a uint8 numpy array or tensor, not list"),
        (np.zeros((2, 1, 1, 28, 28), np.uint8), "has shape"),
    ],
)
def test_bad_images_are_one_line(bad, message):
    with pytest.raises(VaeflowError, match=re.escape(message)) as info:
        as_uint8_images(bad, (1, 28, 28))
    assert "\n" not in str(info.value)


def test_bad_arguments_and_checkpoints_are_one_line(trained_run, tmp_path):
    run = load_run(trained_run, device="cpu")
    for call, message in (
        (lambda: run.sample(0), "n must be an integer >= 1"),
        (lambda: run.sample(2, temperature=float("nan")), "temperature must be"),
        (lambda: run.sample(2, seed=-1), "seed must be"),
        (lambda: run.log_prob_bound(run.images("test")[:2], k=0), "k must be"),
        (lambda: run.interpolate(run.images("test")[:2], run.images("test")[0]), "one image for a"),
        (lambda: run.temperature_sweep([], 2), "temperatures is empty"),
        (lambda: run.images("nope"), "not 'nope'"),
        (lambda: load_run(tmp_path), "is not a vaeflow run"),
        (lambda: load_run(trained_run, checkpoint="joint"), "has no checkpoint for the joint fine-tuning"),
        (lambda: load_run(trained_run, checkpoint=tmp_path / "x.pt"), "x.pt"),
        (lambda: load_run(trained_run, device="tpu"), "device"),
        (lambda: run.sample(10**12), "needs about"),
        (lambda: run.compare(10**9, 1000), "needs about"),
        (lambda: run.sample(2, temperature=1e308), "temperature must be a number in [0, 100]"),
        (lambda: run.sample(2, seed=2**32), "seed must be an integer in [0, 4294967295]"),
        (lambda: run.sample(2, vae_only="no"), "vae_only must be True or False"),
        (lambda: run.log_prob_bound(run.images("test")[:1], k=10**7), "k must be an integer >= 1 and <= 100000"),
        (lambda: run.temperature_sweep(0.5, 2), "temperatures must be a list"),
        (lambda: run.temperature_sweep((t for t in [0.5]), 2), "temperatures must be a list"),
        (lambda: load_run(None), "load_run takes the path of a run directory"),
        (lambda: load_run(trained_run, checkpoint=3), "checkpoint must be None, a phase name"),
        (lambda: load_run(trained_run, checkpoint="nosuch"), "is neither a phase (vae, glow"),
        (lambda: load_run(trained_run, device="cuda:9"), 'device="cpu"'),
    ):
        with pytest.raises(VaeflowError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value), message


def test_temperature_sequences_and_numpy_numbers_are_accepted(trained_run):
    run = load_run(trained_run, device="cpu")
    want = run.temperature_sweep([0.0, 0.5], 2, seed=1)
    for temps in (np.array([0.0, 0.5]), torch.tensor([0.0, 0.5]), (0.0, 0.5)):
        assert torch.equal(run.temperature_sweep(temps, np.int64(2), seed=np.uint32(1)), want)
    assert torch.equal(run.sample(2, temperature=np.int64(1), seed=3), run.sample(2, temperature=1.0, seed=3))


def test_a_checkpoint_file_and_a_phase_name_load_the_same_weights(trained_run):
    by_name = load_run(trained_run, checkpoint="glow", device="cpu")
    by_file = load_run(trained_run, checkpoint=trained_run / "checkpoints" / "glow.pt", device="cpu")
    assert load_run(trained_run, checkpoint="glow.pt", device="cpu").checkpoint == by_file.checkpoint  # a name in RUN/checkpoints
    newest = load_run(trained_run, device="cpu")
    assert by_name.phase == by_file.phase == newest.phase == "glow" and by_name.complete
    for a, b in zip(by_name.model.state_dict().values(), by_file.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_run_whose_logger_is_not_installed_loads_but_does_not_train(trained_run, tmp_path):
    """run.loggers of a stored run may name a tracker this machine lacks: reading the run works,
    training refuses it in one line before writing anything."""
    import shutil

    run = tmp_path / "copied"
    shutil.copytree(trained_run, run)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("loggers = []", 'loggers = ["gone-tracker"]'))
    assert 'loggers = ["gone-tracker"]' in (run / "config.toml").read_text()
    assert load_run(run, device="cpu").sample(2, seed=0).shape == (2, 1, 28, 28)
    before = sorted(p.name for p in run.rglob("*"))
    proc = run_cli("train-joint", "--run", run, check=False)
    assert proc.returncode == 2 and "unknown logger 'gone-tracker'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in run.rglob("*")) == before


def test_the_latest_checkpoint_is_chosen_by_the_phase_table_and_a_no_op_resume_changes_nothing(trained_run, tmp_path):
    """A copied or restored run whose phase-1 file is newer than its phase-2 file still loads and
    samples phase 2; resuming a finished phase rewrites no file."""
    import shutil

    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.runtime.phases import latest
    from vaeflow_cli.training.loop import train_phase

    run = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(trained_run), str(run)], check=True)
    shutil.rmtree(run / "eval", ignore_errors=True)

    def snapshot():
        return {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    before = snapshot()
    train_phase(config_mod.resolve(run / "config.toml"), run, "vae", resume=True, progress=False)  # already complete: a no-op
    train_phase(config_mod.resolve(run / "config.toml"), run, "glow", resume=True, progress=False)
    assert snapshot() == before
    vae = run / "checkpoints" / "vae.pt"
    future = vae.stat().st_mtime_ns + 10**12
    os.utime(vae, ns=(future, future))  # a restore touched phase 1
    assert load_run(run, device="cpu").phase == "glow"
    done = run_cli("sample", "--run", run, "--n", "4", "--out", tmp_path / "s.png")
    assert "has no phase-2 checkpoint" not in done.stderr
    # the rule: what no other checkpoint started from; ties by LOAD_ORDER
    starts = {"glow": "vae", "prior": "glow", "joint": "glow"}
    assert latest(["glow", "vae"], starts.get) == "glow"
    assert latest(["prior", "glow", "vae"], starts.get) == "prior"  # train-prior after phase 2
    assert latest(["prior", "glow", "vae"], {"glow": "prior", "prior": "vae"}.get) == "glow"  # phase 2 from the trained prior
    assert latest(["joint", "glow", "vae"], starts.get) == "joint"
    assert latest(["vae"], starts.get) == "vae"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metrics": "bpd"}, r"metrics must be a non-empty list of names from bpd, iwae"),
        ({"metrics": ["bpd", "fidd"]}, r"metrics: unknown 'fidd'; choose from bpd, iwae, fid, digit_fd, cifar_fd, simclr_fd"),
        ({"metrics": []}, "metrics must be a non-empty list"),
        ({"metrics": ["iwae"], "iwae_k": 10**7}, r"iwae_k must be an integer >= 1 and <= 100000, not 10000000"),
        ({"metrics": ["iwae"], "iwae_k": 2.5}, r"iwae_k must be an integer >= 1 and <= 100000, not 2.5"),
        ({"seed": 2**70}, r"seed must be an integer in \[0, 4294967295\]"),
        ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\]"),
        ({"metrics": ["digit_fd"], "temperatures": [float("nan")]}, r"temperature must be a number in \[0, 100\], not nan"),
        ({"temperatures": 0.5}, "temperatures must be a list"),
        ({"n_samples": 1}, r"n_samples must be an integer >= 2"),
        ({"split": 3}, "split must be the name of a split"),
    ],
)
def test_evaluate_run_checks_its_arguments_as_the_cli_does_and_writes_nothing(trained_run, tmp_path, kwargs, message):
    """The library door of evaluate keeps the CLI's rules: one VaeflowError naming the argument,
    before any work, and RUN/eval untouched."""
    import shutil

    from vaeflow_cli.evaluation.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.name for p in (run / "eval").glob("*")) if (run / "eval").exists() else []
    with pytest.raises(VaeflowError, match=message) as info:
        evaluate_run(run, **kwargs)
    assert "\n" not in str(info.value)
    after = sorted(p.name for p in (run / "eval").glob("*")) if (run / "eval").exists() else []
    assert after == before


def test_encode_and_reconstruct_go_in_batches(trained_run, monkeypatch):
    """Many images are encoded and reconstructed in batches of api.BATCH (peak memory of one batch),
    with the results of a single pass; reconstruct checks the memory its output needs first."""
    from vaeflow_cli import api

    r = load_run(trained_run, device="cpu")
    images = r.images("test")
    monkeypatch.setattr(api, "BATCH", 7)
    seen = []
    encode = r.model.encode
    monkeypatch.setattr(r.model, "encode", lambda y: seen.append(len(y)) or encode(y))
    mean, log_std = r.encode(images)
    assert max(seen) == 7 and sum(seen) == len(images) and mean.shape == (len(images), r.model.latent_dim)
    monkeypatch.setattr(api, "BATCH", 10**6)
    whole_mean, whole_log_std = r.encode(images)
    assert torch.allclose(mean, whole_mean, atol=1e-5) and torch.allclose(log_std, whole_log_std, atol=1e-5)
    monkeypatch.setattr(api, "BATCH", 7)
    assert torch.allclose(r.reconstruct(images), api.sampling.reconstruct(r.model, images), atol=1e-5)
    monkeypatch.setattr(api, "require_image_memory", lambda *a: (_ for _ in ()).throw(VaeflowError("reconstruct (60000 images) needs about 1 GiB")))
    with pytest.raises(VaeflowError, match="reconstruct"):
        r.reconstruct(images)


def test_train_phase_checks_its_arguments(tiny_config, tmp_path):
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.training.loop import train_phase

    cfg = config_mod.resolve(tiny_config)
    for kwargs, message in (
        ({"phase": "vea"}, "phase must be one of vae, glow"),
        ({"phase": "vae", "cfg": {"train": {}}}, "cfg must be a resolved config"),
        ({"phase": "vae", "run_dir": 3}, "run_dir must be the path of a run directory"),
        ({"phase": "vae", "resume": "yes"}, "resume must be True or False"),
        ({"phase": "vae", "max_steps": 0}, "max_steps must be an integer >= 1"),
    ):
        args = {"cfg": cfg, "run_dir": tmp_path / "run", **kwargs}
        with pytest.raises(VaeflowError, match=message):
            train_phase(args.pop("cfg"), args.pop("run_dir"), args.pop("phase"), progress=False, **args)
    assert not (tmp_path / "run").exists()


def test_the_library_doors_found_by_an_attack(trained_run, tmp_path):
    """Cases a fresh attack on the Python API found: numpy integers work in evaluate_run as in
    Run; wrong argument types, configs edited after resolve_config and a checkpoint renamed to
    another phase are one VaeflowError each, before anything is written."""
    import json
    import shutil

    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.evaluation.evaluate import evaluate_run
    from vaeflow_cli.training.loop import train_phase

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    r = evaluate_run(run, metrics=["iwae"], iwae_k=np.int64(2), seed=np.uint32(3))
    assert r["iwae_k"] == 2 and r["seed"] == 3 and json.loads((run / "eval" / "evaluate-test.json").read_text())["iwae_k"] == 2
    for kwargs, message in (
        ({"run": None}, "run must be the path of a run directory"),
        ({"run": b"/tmp"}, "run must be the path of a run directory"),
        ({"run": ""}, "run must be the path of a run directory"),
        ({"device": None}, "device must be"),
        ({"metrics": ["fid"], "fid_weights": 5}, "fid_weights must be None or a path"),
        ({"data": 3}, "data must be None or the name of a registered dataset"),
    ):
        args = {"run": run, **kwargs}
        with pytest.raises(VaeflowError, match=message):
            evaluate_run(args.pop("run"), **args)
    for args, kw, message in (
        ((5,), {}, "path must be None or the path of a TOML config file"),
        (("a\0b.toml",), {}, "path must be None or the path"),
        ((None, None), {}, "overrides must be a list"),
        ((None, [b"train.seed=1"]), {}, "overrides must be a list"),
        ((), {"base": {5: 1}}, "base must be None or a config dict"),
    ):
        with pytest.raises(VaeflowError, match=message):
            vaeflow_cli.resolve_config(*args, **kw)
    cfg = config_mod.resolve(run / "config.toml")
    for edit, message in (
        (lambda c: c["train"]["vae"].__setitem__("batch_size", 0), "train.vae.batch_size' must be >= 1"),
        (lambda c: c["train"].__setitem__("threads", -1), "train.threads' must be >= 0"),
        (lambda c: c["train"]["vae"].__setitem__("lr", float("nan")), "must be a finite number"),
    ):
        edited = cfg.to_dict()  # a Config is frozen: its tables, edited as a dict
        edit(edited)
        with pytest.raises(VaeflowError, match=message):
            train_phase(edited, tmp_path / "new", "vae", progress=False)
        assert not (tmp_path / "new").exists()
    # a phase-1 checkpoint copied over phase 2's file is refused, not scored as the full model
    shutil.copy(run / "checkpoints" / "vae.pt", run / "checkpoints" / "glow.pt")
    with pytest.raises(VaeflowError, match="holds phase 'vae', but it is the glow checkpoint"):
        load_run(run, device="cpu", checkpoint="glow")
    with pytest.raises(VaeflowError, match="holds phase 'vae'"):
        evaluate_run(run, metrics=["bpd"])
    # a numpy matrix is one 28x28 image
    single = np.asmatrix(load_run(trained_run, device="cpu").images("test")[0, 0])
    assert load_run(trained_run, device="cpu").encode(single)[0].shape[0] == 1
    with pytest.raises(VaeflowError, match="temperatures cannot be read as numbers"):
        load_run(trained_run, device="cpu").temperature_sweep(torch.tensor([0.5], device="meta"), 2)
