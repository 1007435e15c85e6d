"""Third-party plugins: a real distribution (dist-info with an entry point) on sys.path."""

import importlib
import json
import sys
import textwrap

import pytest
from conftest import run_cli

from vaeflow_cli import hookspecs
from vaeflow_cli.config import core as config_mod
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.hookspecs import hookimpl
from vaeflow_cli.registry.core import build_registry, parse_selection
from vaeflow_cli.testing import check_flow_component

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
    yield site
    for name, module in list(sys.modules.items()):  # the next test's modules of the same name are other files
        if str(getattr(module, "__file__", None) or "").startswith(str(site)):
            del sys.modules[name]


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
    assert {"name": "pixel_affine", "version": "0.3.0", "builtin": False, "registered": {"flow": ["pixel-affine"]}, "error": None} in rows
    cfg = tiny_config.read_text().replace('type = "glow-layer"\ndepth = 2\nhidden_channels = 8\nlu = true', 'type = "pixel-affine"\nscale_init = 0.0')
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

    with pytest.raises(VaeflowError, match="'glow-layer' is registered twice: by plugin 'builtin-models' and by plugin 'dupe'"):
        build_registry(extra=[("dupe", Dupe())], load_entry_points=False)


def test_a_hook_that_vaeflow_does_not_define_fails_only_that_plugin():
    class Typo:
        @hookimpl
        def register_flow(self, register):  # missing 's'
            register("typo-flow", object)

        @hookimpl
        def register_priors(self, register):
            register("typo-prior", object)

    registry = build_registry(extra=[("typo", Typo())], load_entry_points=False)
    info = registry.plugins["typo"]
    assert "hook that vaeflow does not define (register_flow)" in info.error and "register_flows" in info.error
    assert info.registered == {} and "typo-prior" not in registry.names("prior")
    assert "glow-layer" in registry.names("flow")


def test_registering_a_plugin_object_adds_its_components():
    class Extra:
        @hookimpl
        def register_priors(self, register):
            register("my-gaussian", sys.modules["vaeflow_plugins.models"].gaussian_prior)
            register(name="my-gaussian-2", factory=sys.modules["vaeflow_plugins.models"].gaussian_prior)

    registry = build_registry(extra=[("extra", Extra())], load_entry_points=False)
    assert registry.get("prior", "my-gaussian").plugin == "extra"
    assert registry.plugins["extra"].registered == {"prior": ["my-gaussian", "my-gaussian-2"]}
    assert registry.plugins["extra"].error is None


def test_every_hook_is_documented_and_named_register():
    specs = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert len(specs) == 6
    for name in specs:
        doc = getattr(hookspecs, name).__doc__
        assert doc and "register(name, factory)" in doc and ":param register:" in doc, name


# -- broken plugins: reported, never fatal, excludable ---------------------------------------------


def add_dist(site, *, module: str, source: str, dist: str, ep_name: str, version: str = "1.0.0"):
    """Install module ``module`` (``source``) as distribution ``dist`` with entry point ``ep_name``."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[vaeflow]\n{ep_name} = {module}\n")
    importlib.invalidate_caches()


BROKEN = """
from vaeflow_cli.hookspecs import hookimpl

raise RuntimeError("boom: the plugin needs a GPU driver")


@hookimpl
def register_encoders(register):
    register("broken-encoder", object)
"""


@pytest.fixture()
def broken_site(site):
    """``site`` (the working pixel_affine plugin) plus 'vaeflow-broken', which raises at import."""
    add_dist(site, module="vaeflow_broken", source=BROKEN, dist="vaeflow-broken", ep_name="broken")
    return site


def test_a_plugin_that_raises_at_import_is_recorded_and_the_others_load(broken_site):
    registry = build_registry(allowed=None)
    broken = registry.plugins["broken"]
    assert broken.error == "import failed: RuntimeError: boom: the plugin needs a GPU driver at vaeflow_broken.py:4"
    assert broken.version == "1.0.0" and broken.registered == {} and not broken.builtin
    assert [p.name for p in registry.failed()] == ["broken"]
    assert registry.get("flow", "pixel-affine").plugin == "pixel_affine"
    with pytest.raises(VaeflowError) as err:
        registry.get("encoder", "broken-encoder", where="run.toml: model.encoder.type")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("run.toml: model.encoder.type: unknown encoder 'broken-encoder'")
    assert msg.endswith(
        "; plugin 'broken' failed to load (import failed: RuntimeError: boom: the plugin needs a GPU "
        "driver at vaeflow_broken.py:4), which may provide it"
    )
    # excluded by entry-point or distribution name: not loaded, not listed
    for excluded in ("-broken", "-vaeflow-broken", ["-broken"]):
        registry = build_registry(allowed=excluded)
        assert "broken" not in registry.plugins and registry.failed() == []
        assert "pixel-affine" in registry.names("flow")


HOOK_RAISES_HALFWAY = """
from vaeflow_cli.hookspecs import hookimpl

@hookimpl
def register_encoders(register):
    register("half-encoder", dict)

@hookimpl
def register_flows(register):
    register("half-flow", dict)
    raise ValueError("flow table\\nis missing")
"""

SIGNATURE_MISMATCH = """
from vaeflow_cli.hookspecs import hookimpl

@hookimpl
def register_flows(registrar):
    registrar("bad-flow", dict)
"""


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def broken(:\n    pass\n", "import failed: SyntaxError: invalid syntax"),
        (
            "import vaeflow_no_such_dependency\n",
            "import failed: ModuleNotFoundError: No module named 'vaeflow_no_such_dependency' at vaeflow_bad.py:1",
        ),
        ("import sys\nsys.exit(3)\n", "import failed: SystemExit: 3 at vaeflow_bad.py:2"),
        (HOOK_RAISES_HALFWAY, "register_flows raised ValueError: flow table is missing at vaeflow_bad.py:11"),
        (SIGNATURE_MISMATCH, "invalid hook: Plugin 'bad' for hook 'register_flows'"),
        (
            "from vaeflow_cli.hookspecs import hookimpl\n@hookimpl\ndef register_flows(register):\n    register('', dict)\n",
            "it registered a flow without a name",
        ),
        (
            "from vaeflow_cli.hookspecs import hookimpl\n@hookimpl\ndef register_flows(register):\n    register('x-flow', 3)\n",
            "it registered flow 'x-flow' with a non-callable factory",
        ),
        (
            "from vaeflow_cli.hookspecs import hookimpl\n@hookimpl\ndef register_flowz(register):\n    pass\n",
            "it has a hook that vaeflow does not define (register_flowz)",
        ),
    ],
    ids=["syntax-error", "missing-dependency", "sys-exit", "hook-raises-halfway", "signature-mismatch", "no-name", "non-callable", "unknown-hook"],
)
def test_every_kind_of_broken_plugin_is_recorded_with_a_one_line_error_and_adds_nothing(site, source, expected):
    add_dist(site, module="vaeflow_bad", source=source, dist="vaeflow-bad", ep_name="bad")
    registry = build_registry(allowed=None)
    bad = registry.plugins["bad"]
    assert bad.error.startswith(expected), bad.error
    assert "\n" not in bad.error and len(bad.error) <= 240
    assert bad.registered == {}
    assert not any(c.plugin == "bad" for kind in registry.components.values() for c in kind.values())
    assert "pixel-affine" in registry.names("flow")  # the working plugin next to it is unaffected


def test_plugins_command_lists_the_failed_plugin_and_exits_0(broken_site):
    env = {"PYTHONPATH": str(broken_site), "VAEFLOW_PLUGINS": "-nothing"}
    proc = run_cli("plugins", "--json", env=env)
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["pixel_affine"]["error"] is None and rows["pixel_affine"]["registered"] == {"flow": ["pixel-affine"]}
    assert rows["broken"] == {
        "name": "broken",
        "version": "1.0.0",
        "builtin": False,
        "registered": {},
        "error": "import failed: RuntimeError: boom: the plugin needs a GPU driver at vaeflow_broken.py:4",
    }
    assert proc.stderr == ""  # listed, so no warning besides
    text = run_cli("plugins", env=env).stdout.decode()
    assert "broken 1.0.0 (external, FAILED to load): import failed: RuntimeError: boom" in text
    assert "pixel_affine 0.3.0 (external)\n  flow: pixel-affine" in text


def test_other_commands_warn_once_and_fail_only_when_they_need_a_missing_component(broken_site, tmp_path, tiny_config):
    env = {"PYTHONPATH": str(broken_site)}
    env["VAEFLOW_PLUGINS"] = "-nothing"  # all installed plugins (conftest sets "" = none)
    warning = (
        "vaeflow: warning: plugin 'broken' failed to load (import failed: RuntimeError: boom: the plugin "
        "needs a GPU driver at vaeflow_broken.py:4); its components are unavailable; "
        "exclude it with VAEFLOW_PLUGINS=-nothing,-broken"
    )
    # built-ins only: works, with one warning line
    proc = run_cli("config", "show", "--config", tiny_config, env=env)
    assert proc.stderr.splitlines() == [warning]
    # the working plugin's component validates and trains
    cfg = tmp_path / "third.toml"
    cfg.write_text(tiny_config.read_text().replace('type = "glow-layer"\ndepth = 2\nhidden_channels = 8\nlu = true', 'type = "pixel-affine"'))
    assert b'type = "pixel-affine"' in run_cli("config", "show", "--config", cfg, env=env).stdout
    run = tmp_path / "third-run"
    proc = run_cli("train-vae", "--config", cfg, "--run", run, "--set", "train.vae.epochs=1", env=env)
    assert proc.stderr.splitlines().count(warning) == 1 and "Traceback" not in proc.stderr
    assert (run / "metrics.jsonl").exists()
    # a component that only the broken plugin could provide: one error line naming it, exit 2
    proc = run_cli("config", "show", "--config", tiny_config, "--set", "model.encoder.type=broken-encoder", check=False, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vaeflow: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [warning, errors[0]]
    assert "unknown encoder 'broken-encoder'" in errors[0]
    assert "plugin 'broken' failed to load (import failed: RuntimeError: boom" in errors[0]
    assert errors[0].endswith("which may provide it")
    # excluding it (by entry-point or distribution name) silences the warning
    for value in ("-broken", "-vaeflow-broken", "pixel_affine"):
        proc = run_cli("config", "show", "--config", cfg, env={**env, "VAEFLOW_PLUGINS": value})
        assert proc.stderr == "" and b'type = "pixel-affine"' in proc.stdout
    # with an allow-list naming it, the hint says to take it out of the list
    proc = run_cli("config", "show", "--config", tiny_config, env={**env, "VAEFLOW_PLUGINS": "pixel_affine,broken"})
    assert proc.stderr.strip().endswith("its components are unavailable; remove 'broken' from VAEFLOW_PLUGINS")


def test_a_bare_dash_in_the_selection_is_one_clear_error(broken_site, tiny_config):
    proc = run_cli("config", "show", "--config", tiny_config, check=False, env={"PYTHONPATH": str(broken_site), "VAEFLOW_PLUGINS": "pixel_affine,-"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("vaeflow: error: VAEFLOW_PLUGINS=pixel_affine,-: a '-' must be followed by a plugin name")


@pytest.mark.parametrize(
    "value, include, exclude",
    [
        (None, None, set()),  # unset: all
        ("", set(), set()),  # empty: none
        (" , ", set(), set()),
        ("a,b", {"a", "b"}, set()),  # allow-list
        ("-x", None, {"x"}),  # all but x
        (" -x , -y ", None, {"x", "y"}),
        ("a,b,-b", {"a", "b"}, {"b"}),  # the named ones minus the excluded
        (["a", "-x"], {"a"}, {"x"}),  # build_registry(allowed=[...]) takes the items
        (set(), set(), set()),
    ],
)
def test_selection_syntax(value, include, exclude):
    sel = parse_selection(value)
    assert (None if sel.include is None else set(sel.include)) == include
    assert set(sel.exclude) == exclude


def test_selection_admits_by_entry_point_or_distribution_name_and_exclusion_wins():
    assert parse_selection(None).admits("p", "dist-p")
    assert not parse_selection("").admits("p", "dist-p")
    assert parse_selection("dist-p").admits("p", "dist-p")
    assert not parse_selection("-dist-p").admits("p", "dist-p")
    assert parse_selection("-q").admits("p", "dist-p")
    assert not parse_selection("p,-p").admits("p", "dist-p")
    assert not parse_selection("q").admits("p", "dist-p")
    with pytest.raises(VaeflowError, match="a '-' must be followed by a plugin name"):
        parse_selection("a, -")


def test_a_name_registered_by_two_external_plugins_is_one_line_naming_both_and_how_to_exclude(site, monkeypatch):
    add_dist(site, module="vaeflow_pixel_copy", source=PLUGIN, dist="vaeflow-pixel-copy", ep_name="pixel_copy")
    monkeypatch.delenv("VAEFLOW_PLUGINS")
    with pytest.raises(VaeflowError) as err:
        build_registry()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        "flow 'pixel-affine' is registered twice: by plugin 'pixel_affine' and by plugin 'pixel_copy'; "
        "uninstall one, or exclude it with VAEFLOW_PLUGINS=-pixel_affine "
        "or exclude it with VAEFLOW_PLUGINS=-pixel_copy"
    )
    monkeypatch.setenv("VAEFLOW_PLUGINS", "-pixel_copy")
    assert build_registry().get("flow", "pixel-affine").plugin == "pixel_affine"
