"""A third-party plugin as a user would ship one: a real distribution (pyproject.toml, built into a
wheel and installed), using only the documented plugin API (``vaeflow_cli.plugin_api``, the
hookspecs' protocols). It is selected from TOML, trains, samples, and passes the check kit."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

PYPROJECT = """
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "vaeflow-demo"
version = "0.2.0"
dependencies = ["vaeflow"]

[project.entry-points.vaeflow]
demo = "vaeflow_demo"

[tool.setuptools]
packages = ["vaeflow_demo"]
"""

REGISTRATION = '''
"""Registration and config schema; imports no torch (the networks are in .nets)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from vaeflow_cli.hookspecs import hookimpl
from vaeflow_cli.plugin_api import Range

if TYPE_CHECKING:
    from vaeflow_cli.hookspecs import Decoder, Encoder, Flow, Prior

Width = Annotated[int, Range(1, 4096)]


@hookimpl
def register_encoders(register):
    register("demo-mlp", mlp_encoder)


@hookimpl
def register_decoders(register):
    register("demo-mlp", mlp_decoder)


@hookimpl
def register_priors(register):
    register("demo-affine", affine_prior)


@hookimpl
def register_flows(register):
    register("demo-pixel-affine", pixel_affine)


def mlp_encoder(*, image_shape: tuple[int, int, int], latent_dim: int, hidden: Width = 32) -> Encoder:
    from vaeflow_demo.nets import MLPEncoder

    return MLPEncoder(image_shape, latent_dim, hidden)


def mlp_decoder(*, image_shape: tuple[int, int, int], latent_dim: int, hidden: Width = 32,
                init_std: Annotated[float, Range(gt=0)] = 0.5) -> Decoder:
    from vaeflow_demo.nets import MLPDecoder

    return MLPDecoder(image_shape, latent_dim, hidden, init_std)


def affine_prior(*, latent_dim: int, layers: Annotated[int, Range(1, 8)] = 2) -> Prior:
    from vaeflow_demo.nets import AffinePrior

    return AffinePrior(latent_dim, layers)


def pixel_affine(*, image_shape: tuple[int, int, int]) -> Flow:
    from vaeflow_demo.nets import PixelAffine

    return PixelAffine(image_shape)
'''

NETS = '''
"""The networks: torch and the plugin API only."""
import math

import torch
from torch import nn

from vaeflow_cli.plugin_api import FlowSequence, standard_normal_log_prob


class MLPEncoder(nn.Module):
    def __init__(self, image_shape, latent_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * latent_dim))

    def forward(self, y):
        mean, log_std = self.net(y).chunk(2, dim=1)
        return mean, log_std.clamp(-6, 2)


class MLPDecoder(nn.Module):
    def __init__(self, image_shape, latent_dim, hidden, init_std):
        super().__init__()
        self.shape = tuple(image_shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, math.prod(image_shape)))
        self.log_std = nn.Parameter(torch.full(self.shape, math.log(init_std)))

    def forward(self, z):
        mean = self.net(z).reshape(-1, *self.shape)
        return mean, torch.exp(self.log_std).expand_as(mean) + 1e-3


class ElementwiseAffine(nn.Module):
    """u = z * exp(s) + b elementwise; ``params`` holds s and b."""

    def __init__(self, dim):
        super().__init__()
        self.params = nn.Parameter(torch.zeros(2, dim))

    def forward(self, z):
        s, b = self.params
        return z * s.exp() + b, s.sum().expand(len(z))

    def inverse(self, u):
        s, b = self.params
        return (u - b) * (-s).exp(), -s.sum().expand(len(u))


class AffinePrior(nn.Module):
    """p(z) = N(h(z); 0, I) |det dh/dz| with h a stack of elementwise affine maps."""

    def __init__(self, latent_dim, layers):
        super().__init__()
        self.h = FlowSequence(ElementwiseAffine(latent_dim) for _ in range(layers))

    def forward(self, z):
        return self.h(z)

    def inverse(self, u):
        return self.h.inverse(u)

    def log_prob(self, z):
        u, log_det = self.h(z)
        return standard_normal_log_prob(u) + log_det

    def from_base(self, u):
        return self.h.inverse(u)[0]


class PixelAffine(nn.Module):
    """y = x * exp(s) + b per pixel: the identity at initialisation."""

    def __init__(self, image_shape):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(tuple(image_shape)))
        self.bias = nn.Parameter(torch.zeros(tuple(image_shape)))

    def forward(self, x):
        return x * torch.exp(self.log_scale) + self.bias, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y):
        return (y - self.bias) * torch.exp(-self.log_scale), -self.log_scale.sum().expand(y.shape[0])
'''

CONFIG = """
run.sample_n = 4
data = { name = "mnist", root = "ROOT" }

[model]
latent_dim = 4
encoder = { type = "demo-mlp", hidden = 16 }
decoder = { type = "demo-mlp", hidden = 16 }
prior = { type = "demo-affine" }
flow = { type = "demo-pixel-affine" }

[train]
device = "cpu"
threads = 1
vae = { epochs = 1, batch_size = 32, lr = 1e-3 }
glow = { epochs = 1, batch_size = 32, lr = 1e-3 }
"""


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory):
    """vaeflow-demo 0.2.0 built into a wheel (setuptools, no network) and installed into a folder."""
    tmp = tmp_path_factory.mktemp("demo")
    project = tmp / "vaeflow-demo"
    (project / "vaeflow_demo").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "vaeflow_demo" / "__init__.py").write_text(REGISTRATION)
    (project / "vaeflow_demo" / "nets.py").write_text(NETS)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(project)], check=True, capture_output=True
    )
    wheel = next((tmp / "dist").glob("vaeflow_demo-0.2.0-*.whl"))
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True, capture_output=True)
    return site


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
    assert row["registered"] == {"encoder": ["demo-mlp"], "decoder": ["demo-mlp"], "prior": ["demo-affine"], "flow": ["demo-pixel-affine"]}
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


def test_it_passes_the_check_kit_and_the_protocols(demo):
    import torch

    from vaeflow_cli import hookspecs, testing

    testing.check_encoder(demo.mlp_encoder)
    testing.check_decoder(demo.mlp_decoder)
    testing.check_prior(demo.affine_prior)
    testing.check_flow_component(demo.pixel_affine, pixel_flow=True)
    prior = demo.affine_prior(latent_dim=3)
    assert isinstance(prior, hookspecs.BijectivePrior) and isinstance(demo.pixel_affine(image_shape=(1, 2, 2)), hookspecs.Flow)
    with torch.no_grad():
        assert prior.log_prob(torch.zeros(2, 3)).shape == (2,)
