"""Experiment trackers (``[run] loggers``): the built-in TensorBoard logger writes what
metrics.jsonl holds, a third-party logger registered through a plugin receives the same records,
bad names are refused before anything is written, and a failing logger does not stop training."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import call_main, run_cli

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.errors import Interrupted, VaeflowError
from vaeflow_cli.hookspecs import MetricsLogger, hookimpl
from vaeflow_cli.registry import core as plugins_mod
from vaeflow_cli.registry.core import build_registry

FAST = ["--set", "train.threads=1", "--set", "train.vae.epochs=2", "--set", "train.glow.epochs=1"]


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files of ``folder``: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        assert len({e.step for e in events}) == len(events), f"{tag}: a step logged twice"
        out[tag] = {e.step: e.value for e in events}
    return out


def expected_scalars(records: list[dict], phase: str) -> dict[str, dict[int, float]]:
    """What the tensorboard logger must have written for ``phase``: every numeric, finite value
    (but the step itself) of each record, at its global step (``steps``; 0 for a phase's start record)."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        if r["phase"] != phase:
            continue
        step = r.get("steps", 0)
        for key, value in r.items():
            if key in ("steps", "phase") or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            out.setdefault(f"{phase}/{key}", {})[step] = value
    return out


def test_tensorboard_event_files_hold_the_values_of_metrics_jsonl(tiny_config, tmp_path):
    run = tmp_path / "run"
    run_cli("train-vae", "--config", tiny_config, "--run", run, *FAST, "--set", 'run.loggers=["tensorboard"]')
    run_cli("train-glow", "--run", run, *FAST)  # the run's own config keeps the logger; its start record is at step 0
    records = read_metrics(run)
    assert [(r["phase"], r["epoch"]) for r in records] == [("vae", 1), ("vae", 2), ("glow", 0), ("glow", 1)]
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["glow", "vae"]
    for phase in ("vae", "glow"):
        want = expected_scalars(records, phase)
        got = scalars(run / "tensorboard" / phase)
        assert {f"{phase}/train_bpd", f"{phase}/test_bpd", f"{phase}/lr"} <= set(want)
        assert set(got) == set(want)
        for tag, by_step in want.items():
            assert set(got[tag]) == set(by_step), tag
            for step, value in by_step.items():
                assert got[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-6), (tag, step)  # stored as float32
    assert scalars(run / "tensorboard" / "glow")["glow/test_bpd"][0] == pytest.approx(records[2]["test_bpd"], rel=1e-6)


def test_tensorboard_logger_skips_what_is_not_a_finite_number_and_a_resume_replaces_later_steps(tmp_path):
    from vaeflow_plugins.loggers import tensorboard_logger

    first = tensorboard_logger(run_dir=str(tmp_path), phase="vae", config={})
    assert isinstance(first, MetricsLogger)
    assert not (tmp_path / "tensorboard").exists()  # nothing is written before the first record
    first.log({"phase": "vae", "epoch": 1, "step": 3, "train_bpd": float("nan"), "test_bpd": 1.5, "note": "x", "flag": True})
    first.log({"phase": "vae", "epoch": 2, "step": 6, "train_bpd": 2.0, "test_bpd": float("inf")})
    first.close()
    assert scalars(tmp_path / "tensorboard" / "vae") == {"vae/epoch": {3: 1.0, 6: 2.0}, "vae/test_bpd": {3: 1.5}, "vae/train_bpd": {6: 2.0}}
    # a resumed phase logs step 6 again: the events of the killed run from step 6 on are replaced
    second = tensorboard_logger(run_dir=str(tmp_path), phase="vae", config={})
    second.log({"phase": "vae", "epoch": 2, "step": 6, "train_bpd": 3.0})
    second.close()
    second.close()  # a second close is harmless
    assert scalars(tmp_path / "tensorboard" / "vae") == {"vae/epoch": {3: 1.0, 6: 2.0}, "vae/test_bpd": {3: 1.5}, "vae/train_bpd": {6: 3.0}}


def test_without_the_tensorboard_package_the_factory_says_how_to_install_it(tmp_path, monkeypatch):
    from vaeflow_plugins.loggers import tensorboard_logger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails with ImportError
    with pytest.raises(VaeflowError, match=r"pip install 'vaeflow\[tensorboard\]'") as info:
        tensorboard_logger(run_dir=str(tmp_path), phase="vae", config={})
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_importing_the_builtin_logger_plugin_loads_neither_torch_nor_tensorboard():
    code = (
        "import sys, vaeflow_plugins.loggers, vaeflow_cli.training.loggers; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorboard', 'numpy')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- names in the config ------------------------------------------------------------------------


def test_an_unknown_logger_name_is_one_line_exit_2_and_writes_nothing(tiny_config, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train-vae", "--config", tiny_config, "--run", run, *FAST, "--set", 'run.loggers=["nope"]', check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vaeflow: error: --set run.loggers=")
    assert "run.loggers: unknown logger 'nope'; registered loggers: tensorboard" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not run.exists()


@pytest.mark.parametrize(
    "value, words",
    [
        ('["nope"]', "unknown logger 'nope'; registered loggers: tensorboard"),
        ("[1]", "'run.loggers' must be a list of logger names (strings)"),
        ('"tensorboard"', "'run.loggers' must be a list, got str"),
        ('["tensorboard", "tensorboard"]', "'run.loggers' must name each logger once"),
    ],
)
def test_bad_logger_lists_in_a_file_name_the_file_and_the_key(tmp_path, tiny_config, value, words):
    path = tmp_path / "bad.toml"
    path.write_text(tiny_config.read_text().replace("[run]\n", f"[run]\nloggers = {value}\n"))
    with pytest.raises(VaeflowError) as info:
        config_mod.resolve(path)
    message = str(info.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_the_default_is_no_logger_and_a_list_round_trips_through_the_written_config(tmp_path):
    assert config_mod.resolve()["run"]["loggers"] == []
    cfg = config_mod.resolve(overrides=['run.loggers=["tensorboard"]'])
    path = tmp_path / "c.toml"
    path.write_text(config_mod.dumps(cfg))
    assert config_mod.resolve(path)["run"]["loggers"] == ["tensorboard"]


# -- a third-party logger -----------------------------------------------------------------------


class Recorder:
    """A plugin object registering three loggers: one that records, one whose log raises, one
    whose factory raises."""

    def __init__(self):
        self.opened: list[dict] = []
        self.records: list[dict] = []
        self.closed = 0
        self.broken_calls = 0
        self.broken_closed = 0

    @hookimpl
    def register_loggers(self, register):
        register("recording", self.recording)
        register("broken", self.broken)
        register("unbuildable", self.unbuildable)

    def recording(self, *, run_dir, phase, config):
        self.opened.append({"run_dir": run_dir, "phase": phase, "loggers": list(config["run"]["loggers"])})
        outer = self

        class Logger:
            def log(self, record):
                outer.records.append(dict(record))

            def close(self):
                outer.closed += 1

        return Logger()

    def broken(self, *, run_dir, phase, config):
        outer = self

        class Logger:
            def log(self, record):
                outer.broken_calls += 1
                raise ConnectionError("tracker unreachable\nsecond line")

            def close(self):
                outer.broken_closed += 1

        return Logger()

    def unbuildable(self, *, run_dir, phase, config):
        raise ValueError("no API key")


@pytest.fixture()
def recorder(monkeypatch):
    """A Recorder registered as plugin 'recorder' in this process's registry."""
    rec = Recorder()
    registry = build_registry(extra=[("recorder", rec)], load_entry_points=False)
    assert registry.plugins["recorder"].error is None
    assert registry.names("logger") == ["broken", "recording", "tensorboard", "unbuildable"]
    monkeypatch.setattr(plugins_mod, "_REGISTRY", registry)
    threads = torch.get_num_threads()
    yield rec
    torch.set_num_threads(threads)


def call(capsys, *argv) -> tuple[int, str]:
    """``vaeflow ARGV`` in this process: (exit code, stderr)."""
    code, _, err = call_main(argv, capsys)
    return code, err


def test_a_plugin_logger_receives_the_records_of_metrics_jsonl_with_the_global_step(recorder, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = call(capsys, "train-vae", "--config", tiny_config, "--run", run, *FAST, "--set", 'run.loggers=["recording"]')
    assert code == 0, err
    assert recorder.opened == [{"run_dir": str(run), "phase": "vae", "loggers": ["recording"]}]
    assert recorder.closed == 1
    records = read_metrics(run)
    assert len(records) == 2
    assert [{k: v for k, v in r.items() if k != "step"} for r in recorder.records] == records
    assert [r["step"] for r in recorder.records] == [r["steps"] for r in records] == [3, 6]  # 96 images, batch 32
    assert not (run / "tensorboard").exists()  # only the loggers named run


def test_a_logger_that_raises_warns_once_and_training_goes_on(recorder, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = call(capsys, "train-vae", "--config", tiny_config, "--run", run, *FAST, "--set", 'run.loggers=["broken", "recording"]')
    assert code == 0, err
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]  # both epochs trained and recorded
    assert recorder.broken_calls == 1 and recorder.broken_closed == 1  # switched off after its first failure, still closed
    assert len(recorder.records) == 2 and recorder.closed == 1  # the logger after it is unaffected
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("vaeflow: warning: logger 'broken' (plugin 'recorder') failed")
    assert "ConnectionError: tracker unreachable second line" in warnings[0] and "run.loggers" in warnings[0]
    assert "Traceback" not in err


def test_a_logger_factory_that_raises_is_one_line_before_anything_is_written(recorder, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = call(capsys, "train-vae", "--config", tiny_config, "--run", run, *FAST, "--set", 'run.loggers=["recording", "unbuildable"]')
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vaeflow: error: run.loggers: logger 'unbuildable' (plugin 'recorder')")
    assert "ValueError: no API key" in lines[0]
    assert recorder.closed == 1  # the logger opened before it was closed
    assert not run.exists()


def test_loggers_are_closed_when_a_phase_stops_early(recorder, tiny_config, tmp_path):
    from vaeflow_cli.training.loop import train_phase

    cfg = config_mod.resolve(tiny_config, ["train.threads=1", 'run.loggers=["recording"]'])
    with pytest.raises(Interrupted):
        train_phase(cfg, tmp_path / "run", "vae", progress=False, max_steps=1)  # stops inside epoch 1
    assert recorder.opened and recorder.closed == 1 and recorder.records == []


# -- step records and sample grids ----------------------------------------------------------------


def images(folder) -> dict[str, dict[int, bytes]]:
    """Every image in the TensorBoard event files of ``folder``: {tag: {step: PNG bytes}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0})
    acc.Reload()
    return {tag: {e.step: e.encoded_image_string for e in acc.Images(tag)} for tag in acc.Tags()["images"]}


def test_tensorboard_gets_the_recent_loss_every_log_every_steps_and_each_epoch_s_sample_grid(tiny_config, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    run = tmp_path / "run"
    run_cli("train-vae", "--config", tiny_config, "--run", run, *FAST, "--set", 'run.loggers=["tensorboard"]', "--set", "run.log_every=1")
    records = read_metrics(run)
    got = scalars(run / "tensorboard" / "vae")
    steps = got.pop("vae/train_bpd_step")
    assert set(steps) == {1, 2, 3, 4, 5, 6}  # 3 steps an epoch
    for epoch, first in ((0, 1), (1, 4)):  # equal batches: the epoch's loss is the mean of its steps'
        assert sum(steps[s] for s in range(first, first + 3)) / 3 == pytest.approx(records[epoch]["train_bpd"], rel=1e-5)
    assert set(got) == set(expected_scalars(records, "vae"))  # the epoch records as before
    grids = images(run / "tensorboard" / "vae")
    assert set(grids) == {"vae/samples"} and set(grids["vae/samples"]) == {3, 6}
    for epoch, step in ((1, 3), (2, 6)):
        logged = np.asarray(Image.open(io.BytesIO(grids["vae/samples"][step])).convert("L"))
        written = np.asarray(Image.open(run / "samples" / f"vae-epoch{epoch:04d}.png"))
        assert np.array_equal(logged, written)  # the PNG of RUN/samples, pixel for pixel


class Imaging:
    """A plugin registering "imaging" (with the optional log_image), "plain" (without it) and
    "bad-image" (whose log_image raises)."""

    def __init__(self):
        self.records = {"imaging": [], "plain": [], "bad-image": []}
        self.images = {"imaging": [], "bad-image": []}

    @hookimpl
    def register_loggers(self, register):
        for name in self.records:
            register(name, self.factory(name))

    def factory(self, name):
        outer = self

        class Logger:
            def log(self, record):
                outer.records[name].append(dict(record))

            def close(self):
                pass

        class WithImages(Logger):
            def log_image(self, tag, image, *, step):
                outer.images[name].append((tag, image.shape, image.dtype, step))
                if name == "bad-image":
                    raise OSError("tracker full")

        def make(*, run_dir, phase, config):
            return Logger() if name == "plain" else WithImages()

        return make


def test_a_plugin_logger_gets_step_records_and_with_log_image_the_sample_grids(tiny_config, tmp_path, capsys, monkeypatch):
    plugin = Imaging()
    registry = build_registry(extra=[("imaging", plugin)], load_entry_points=False)
    monkeypatch.setattr(plugins_mod, "_REGISTRY", registry)
    run = tmp_path / "run"
    code, err = call(
        capsys,
        "train-vae",
        "--config",
        tiny_config,
        "--run",
        run,
        *FAST,
        "--set",
        'run.loggers=["imaging", "plain", "bad-image"]',
        "--set",
        "run.log_every=2",
    )
    assert code == 0, err
    epochs = read_metrics(run)
    received = plugin.records["imaging"]
    assert [r for r in received if "epoch" in r] == [{**r, "step": r["steps"]} for r in epochs]
    step_records = [r for r in received if "epoch" not in r]
    assert [(r["phase"], r["step"]) for r in step_records] == [("vae", 2), ("vae", 4), ("vae", 6)]
    assert all(set(r) == {"phase", "step", "train_bpd_step"} and math.isfinite(r["train_bpd_step"]) for r in step_records)
    assert plugin.records["plain"] == received  # a logger without log_image gets the same records
    assert [(tag, shape[2], str(dtype), step) for tag, shape, dtype, step in plugin.images["imaging"]] == [
        ("vae/samples", 1, "uint8", 3),
        ("vae/samples", 1, "uint8", 6),
    ]
    assert len(plugin.images["bad-image"]) == 1 and plugin.records["bad-image"] == received[:2]  # off after its first failure
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "logger 'bad-image'" in warnings[0] and "OSError: tracker full" in warnings[0], err
