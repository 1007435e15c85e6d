"""Third-party plugins: a real distribution (dist-info with an entry point) on sys.path."""

import importlib
import json
import sys
import textwrap

import pytest

from vaeflow_cli import config as config_mod
from vaeflow_cli import hookspecs
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.hookspecs import hookimpl
from vaeflow_cli.plugins import build_registry
from vaeflow_cli.testing import check_flow_component

from conftest import run_cli

PLUGIN = '''
"""A third-party flow: a per-pixel affine map y = x * exp(s) + b (identity at initialisation)."""
import torch
from torch import nn
from vaeflow_cli.hookspecs import hookimpl


class PixelAffine(nn.Module):
    def __init__(self, *, image_shape, scale_init: float = 0.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.full(tuple(image_shape), scale_init))
        self.bias = nn.Parameter(torch.zeros(tuple(image_shape)))

    def forward(self, x):
        return x * torch.exp(self.log_scale) + self.bias, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y):
        return (y - self.bias) * torch.exp(-self.log_scale), -self.log_scale.sum().expand(y.shape[0])


@hookimpl
def register_flows(register):
    register("pixel-affine", PixelAffine)
'''


@pytest.fixture()
def site(tmp_path, monkeypatch):
    """A folder holding the module and the dist-info of 'vaeflow-pixel-affine' 0.3.0."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "vaeflow_pixel_affine.py").write_text(PLUGIN)
    info = site / "vaeflow_pixel_affine-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vaeflow-pixel-affine\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[vaeflow]\npixel_affine = vaeflow_pixel_affine\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def test_entry_point_plugin_registers_passes_the_component_checks_and_can_be_limited(site):
    registry = build_registry(allowed=None)
    comp = registry.get("flow", "pixel-affine")
    assert comp.plugin == "pixel_affine"
    assert registry.plugins["pixel_affine"].version == "0.3.0"
    check_flow_component(comp.factory, image_shape=(3, 4, 4))
    assert "pixel-affine" not in build_registry(allowed=set()).names("flow")
    assert "pixel-affine" in build_registry(allowed={"vaeflow-pixel-affine"}).names("flow")  # by distribution name
    with pytest.raises(VaeflowError, match="unknown key 'model.flow.scale' for flow 'pixel-affine'.*scale_init"):
        config_mod.resolve(overrides=["model.flow.type=pixel-affine", "model.flow.scale=1"], registry=registry)


def test_third_party_flow_trains_from_a_toml_config(site, tmp_path, tiny_config):
    env = {"PYTHONPATH": str(site), "VAEFLOW_PLUGINS": "pixel_affine"}
    rows = json.loads(run_cli("plugins", "--json", env=env).stdout)
    assert {"name": "pixel_affine", "version": "0.3.0", "builtin": False, "registered": {"flow": ["pixel-affine"]}} in rows
    cfg = tiny_config.read_text().replace('type = "glow-layer"\ndepth = 2\nhidden_channels = 8', 'type = "pixel-affine"\nscale_init = 0.0')
    path = tmp_path / "third.toml"
    path.write_text(cfg)
    run = tmp_path / "third-run"
    run_cli("train-vae", "--config", path, "--run", run, "--set", "train.vae.epochs=1", env=env)
    run_cli("train-glow", "--run", run, env=env)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["phase"] == "glow" and metrics[-1]["steps"] == 3
    assert metrics[-1]["test_bpd"] < metrics[-2]["test_bpd"]  # the per-pixel affine flow improves the bound
    # without the plugin allowed, the run's config names an unknown flow: one clear line
    proc = run_cli("sample", "--run", run, check=False, env={"PYTHONPATH": str(site), "VAEFLOW_PLUGINS": ""})
    assert proc.returncode == 2 and "unknown flow 'pixel-affine'" in proc.stderr and "Traceback" not in proc.stderr


def test_duplicate_names_are_an_error_naming_both_plugins():
    class Dupe:
        @hookimpl
        def register_flows(self, register):
            register("glow-layer", object)

    with pytest.raises(VaeflowError, match="'glow-layer' is registered twice: by plugin 'vaeflow_plugins.glow' and by plugin 'dupe'"):
        build_registry(extra=[("dupe", Dupe())], load_entry_points=False)


def test_a_hook_that_vaeflow_does_not_define_is_reported():
    class Typo:
        @hookimpl
        def register_flow(self, register):  # missing 's'
            pass

    with pytest.raises(VaeflowError, match="plugin .*typo.* hook that vaeflow does not define"):
        build_registry(extra=[("typo", Typo())], load_entry_points=False)


def test_registering_a_plugin_object_adds_its_components():
    class Extra:
        @hookimpl
        def register_priors(self, register):
            register("my-gaussian", sys.modules["vaeflow_plugins.priors"].GaussianPrior)

    registry = build_registry(extra=[("extra", Extra())], load_entry_points=False)
    assert registry.get("prior", "my-gaussian").plugin == "extra"
    assert registry.plugins["extra"].registered == {"prior": ["my-gaussian"]}


def test_every_hook_is_documented_and_named_register():
    specs = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert len(specs) == 5
    for name in specs:
        doc = getattr(hookspecs, name).__doc__
        assert doc and "register(name, factory)" in doc, name
