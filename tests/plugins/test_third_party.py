"""A third-party plugin as a user would ship one: the example plugin of docs/plugins.md, built from
the page's own code blocks into a real distribution (pyproject.toml, built into a wheel and
installed), using only the documented plugin API (``vaeflow_cli.plugin_api``, the hookspecs'
protocols). It is selected from TOML, trains, samples, and passes the check kit; the page's test
example and its claims (the check kit's signatures, installing next to a vaeflow checkout, the
decoder mean's range) hold."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

_spec = importlib.util.spec_from_file_location("vaeflow_demo_plugin", Path(__file__).with_name("demo_plugin.py"))
demo_plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_plugin)

CONFIG = (
    'run.sample_n = 4\ndata = { name = "mnist", root = "ROOT" }\n\n'
    + demo_plugin.named_blocks(demo_plugin.PAGE.read_text(encoding="utf-8"))["demo.toml"]  # the page's [model]
    + """
[train]
device = "cpu"
threads = 1
vae = { epochs = 1, batch_size = 32, lr = 1e-3 }
glow = { epochs = 1, batch_size = 32, lr = 1e-3 }
"""
)


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory):
    """vaeflow-demo 0.2.0, as docs/plugins.md shows it, built into a wheel (setuptools, no network)
    and installed into a folder."""
    return demo_plugin.build_site(tmp_path_factory.mktemp("demo"))


@pytest.fixture()
def demo(demo_site, monkeypatch):
    monkeypatch.syspath_prepend(str(demo_site))
    importlib.invalidate_caches()
    yield importlib.import_module("vaeflow_demo")
    for name in [m for m in sys.modules if m == "vaeflow_demo" or m.startswith("vaeflow_demo.")]:
        del sys.modules[name]


def test_the_built_distribution_registers_without_importing_torch(demo_site):
    env = {"PYTHONPATH": str(demo_site), "VAEFLOW_PLUGINS": "demo"}  # (the suite's conftest selects none)
    rows = json.loads(run_cli("plugins", "--json", env=env).stdout)
    row = next(r for r in rows if r["name"] == "demo")
    assert row["version"] == "0.2.0" and not row["builtin"] and row["error"] is None
    assert row["registered"] == {
        "encoder": ["demo-mlp"],
        "decoder": ["demo-mlp"],
        "prior": ["demo-affine"],
        "flow": ["demo-pixel-affine", "demo-conditioned-affine"],
    }
    code = "import sys, vaeflow_demo; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True)


def test_it_is_selected_from_toml_trains_both_phases_and_samples(demo_site, tmp_path, mnist_root):
    config = tmp_path / "demo.toml"
    config.write_text(CONFIG.replace("ROOT", str(mnist_root)))
    run = tmp_path / "run"
    env = {"PYTHONPATH": str(demo_site), "VAEFLOW_PLUGINS": "demo"}
    shown = run_cli("config", "show", "--config", config, env=env).stdout.decode()
    assert 'type = "demo-mlp"' in shown and "init_std = 0.5" in shown  # the factory's defaults, resolved
    bad = run_cli("config", "show", "--config", config, "--set", "model.decoder.hidden=0", env=env, check=False)
    assert bad.returncode == 2 and "model.decoder.hidden" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    for phase in ("train-vae", "train-glow"):
        assert run_cli(phase, "--config", config, "--run", run, env=env).stdout.decode().strip() == str(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in records] == [("vae", 1), ("glow", 0), ("glow", 1)]
    assert records[-1]["test_bpd"] < records[1]["test_bpd"]  # the plugin's flow improved the bound
    assert Path(run_cli("sample", "--run", run, "--n", "4", env=env).stdout.decode().strip()).is_file()
    # the page's conditional flow decoder as the VAE's flow: both phases, then samples
    conditioned = tmp_path / "conditioned.toml"
    conditioned.write_text(config.read_text().replace('flow = { type = "demo-pixel-affine" }', 'flow = { type = "demo-conditioned-affine" }'))
    assert "demo-conditioned-affine" in conditioned.read_text()
    run = tmp_path / "conditioned-run"
    for phase in ("train-vae", "train-glow"):
        run_cli(phase, "--config", conditioned, "--run", run, env=env)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["phase"] == "glow" and records[-1]["test_bpd"] < records[1]["test_bpd"]
    assert Path(run_cli("sample", "--run", run, "--n", "4", env=env).stdout.decode().strip()).is_file()


def test_it_passes_the_check_kit_and_the_protocols(demo):
    import torch

    from vaeflow_cli import hookspecs, testing

    testing.check_encoder(demo.mlp_encoder)
    testing.check_decoder(demo.mlp_decoder)
    testing.check_prior(demo.affine_prior)
    testing.check_flow_component(demo.pixel_affine, pixel_flow=True)
    testing.check_flow_component(demo.conditioned_affine, pixel_flow=True)
    assert isinstance(demo.conditioned_affine(image_shape=(1, 2, 2)), hookspecs.ConditionalFlow)
    prior = demo.affine_prior(latent_dim=3)
    assert isinstance(prior, hookspecs.BijectivePrior) and isinstance(demo.pixel_affine(image_shape=(1, 2, 2)), hookspecs.Flow)
    with torch.no_grad():
        assert prior.log_prob(torch.zeros(2, 3)).shape == (2,)


def test_the_page_s_test_example_passes(demo):
    """The test module that docs/plugins.md suggests for the plugin, run as it is shown."""
    code = demo_plugin.named_blocks(demo_plugin.PAGE.read_text(encoding="utf-8"))["tests/test_demo.py"]
    scope: dict = {"__name__": "test_demo"}
    exec(compile(code, "docs/plugins.md (tests/test_demo.py)", "exec"), scope)  # noqa: S102 -- the docs' own example
    tests = [fn for name, fn in scope.items() if name.startswith("test_") and callable(fn)]
    assert tests
    for fn in tests:
        fn()


def test_the_check_kit_signatures_on_the_page_are_the_code_s():
    """Every default the page gives for an entry point of vaeflow_cli.testing is the code's, and
    every keyword argument it lists exists."""
    import ast
    import inspect

    from vaeflow_cli import testing

    text = demo_plugin.PAGE.read_text(encoding="utf-8")
    shown = dict(re.findall(r"^- `(check_\w+)\((factory.*?)\)`$", text, re.M))
    assert set(shown) == {"check_encoder", "check_decoder", "check_prior", "check_flow_component", "check_dataset"}, shown
    for name, params in shown.items():
        documented = ast.parse(f"def f({params}): pass").body[0].args
        code = inspect.signature(getattr(testing, name)).parameters
        names = [a.arg for a in documented.kwonlyargs]
        assert all(n in code and code[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names), (name, names, list(code))
        for arg, default in zip(documented.kwonlyargs, documented.kw_defaults, strict=True):
            assert ast.literal_eval(default) == code[arg.arg].default, (name, arg.arg)
        assert documented.kwarg is not None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in code.values()), name


def test_the_dependency_on_vaeflow_resolves_against_the_installed_checkout_without_an_index(demo_site):
    """The page: install vaeflow from its checkout, then the plugin; pip then looks for the
    requirement ``vaeflow`` on no index (here --no-index: it must be satisfied by the installation)."""
    wheel = next((demo_site.parent / "dist").glob("vaeflow_demo-*.whl"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run", "--no-index", "--no-build-isolation"]
    proc = subprocess.run([*pip, str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vaeflow-demo" in proc.stdout.replace("_", "-")


def test_the_decoder_mean_ranges_on_the_page_are_the_pixel_transforms():
    """The page's ranges: [0, 1] with pixel_transform "none" (the schema's default), about
    [-13.8, 13.8] with "logit" (the embedded default config's) at logit_alpha 1e-6."""
    import torch

    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.config import schema
    from vaeflow_cli.model.vaeflow import pixel_transform

    text = " ".join(demo_plugin.PAGE.read_text(encoding="utf-8").split())
    claim = re.search(r"puts them in about \[(-?[\d.]+), ([\d.]+)\] at `alpha = model.logit_alpha = ([\de.-]+)`", text)
    assert claim, "the sentence on the logit range is gone from docs/plugins.md"
    low, high, alpha = map(float, claim.groups())
    assert schema.DEFAULTS["model"]["pixel_transform"] == "none" and schema.DEFAULTS["model"]["logit_alpha"] == alpha
    assert config_mod.resolve()["model"]["pixel_transform"] == "logit"
    ends = pixel_transform("logit", alpha)(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1))[0].flatten().tolist()
    assert [round(v, 1) for v in ends] == [low, high]
    y = torch.rand(2, 1, 2, 2)
    assert torch.equal(pixel_transform("none")(y)[0], y)  # "none": the images themselves, in [0, 1)


def test_a_run_records_which_distribution_built_each_component_and_names_it_when_it_is_missing(demo_site, tmp_path, mnist_root):
    """components.toml and every checkpoint name the plugin, distribution and version of each
    component; opened without that plugin, a command's one-line error names what to install (or
    that VAEFLOW_PLUGINS leaves it out), from the checkpoint when components.toml is gone."""
    import torch

    from vaeflow_cli.config.files import load_toml

    config = tmp_path / "demo.toml"
    config.write_text(CONFIG.replace("ROOT", str(mnist_root)))
    run = tmp_path / "run"
    path = os.environ.get("PYTHONPATH", "")
    with_demo = {"PYTHONPATH": os.pathsep.join(filter(None, [str(demo_site), path])), "VAEFLOW_PLUGINS": "demo"}
    run_cli("train-vae", "--config", config, "--run", run, env=with_demo)
    record = load_toml(run / "components.toml")
    assert record["components"]["decoder"] == {"name": "demo-mlp", "plugin": "demo", "distribution": "vaeflow-demo", "version": "0.2.0"}
    assert record["components"]["dataset"] == {"name": "mnist", "plugin": "builtin-datasets", "distribution": "vaeflow-builtins", "version": "0.1.0"}
    assert record["vaeflow"] == "0.1.0" and torch.load(run / "checkpoints" / "vae.pt", weights_only=True)["components"] == record

    left_out = run_cli("sample", "--run", run, env={**with_demo, "VAEFLOW_PLUGINS": ""}, check=False)
    lines = left_out.stderr.strip().splitlines()
    assert left_out.returncode == 2 and len(lines) == 1, left_out.stderr
    assert "model.encoder.type: unknown encoder 'demo-mlp'" in lines[0] and "trained with it from vaeflow-demo 0.2.0 (plugin 'demo')" in lines[0]
    assert "installed but not loaded: VAEFLOW_PLUGINS='' leaves it out; add demo to VAEFLOW_PLUGINS" in lines[0]

    (run / "components.toml").unlink()  # a copy of the run without it: the checkpoint records the same
    missing = run_cli("evaluate", "--run", run, env={"PYTHONPATH": path, "VAEFLOW_PLUGINS": ""}, check=False)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr
    assert "unknown encoder 'demo-mlp'" in lines[0] and "install it with pip install 'vaeflow-demo==0.2.0'" in lines[0]


def test_the_version_note_names_each_component_whose_plugin_version_differs_from_the_recorded_one():
    from vaeflow_cli.registry.core import build_registry
    from vaeflow_cli.registry.provenance import version_note

    registry = build_registry(load_entry_points=False)
    entry = {"name": "resnet-diagonal", "plugin": "builtin-models", "distribution": "vaeflow-builtins"}
    assert version_note({"components": {"decoder": {**entry, "version": "0.1.0"}}}, registry) == ""
    note = version_note({"components": {"decoder": {**entry, "version": "0.0.9"}}}, registry)
    assert note == "; its decoder came from vaeflow-builtins 0.0.9, 0.1.0 is installed now"
    assert version_note({"components": "damaged"}, registry) == version_note(None, registry) == ""
