"""The bad-input corpus: every bad config, file, checkpoint and option gives exactly one
``vaeflow: error:`` line on stderr, the documented exit code, no traceback, and leaves the run
directory exactly as it was, so the corrected command just works.

The corpus runs the real console entry point (``vaeflow_cli.cli.commands.main``) in this process, which is
what keeps ~60 cases fast; a few cases also run as subprocesses (tests/config/test_config.py and the
SIGTERM, lock and disk-full tests below), so the process boundary is covered too. Count of
tracebacks: ``python -m pytest -q tests/bad_input/test_bad_input.py -k corpus``, every case asserts none.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, call_main, run_cli, write_idx


def call(argv, *, env=None, monkeypatch=None, capsys=None):
    """Run ``vaeflow ARGV`` in this process (with ``env`` set): (exit code, stdout, stderr)."""
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return call_main(argv, capsys)


def tree(path: Path) -> dict:
    """Every file under ``path`` with its size and content hash (None when it does not exist)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest()) for p in sorted(path.rglob("*")) if p.is_file()
    } | {"": "dir"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits):
    """A trained tiny run (phase 1 and 2), its config, the data, and files of every bad kind."""
    base = tmp_path_factory.mktemp("corpus")
    root = base / "mnist"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", digits[:64], gz=True)
    write_idx(root / "t10k-images-idx3-ubyte", digits[64:80])
    cfg = base / "tiny.toml"
    cfg.write_text(TINY.format(root=root, run=base / "unused").replace("epochs = 2", "epochs = 1"))
    run = base / "run"
    for phase in ("vae", "glow"):
        proc = run_cli(
            f"train-{phase}", "--config" if phase == "vae" else "--run", cfg if phase == "vae" else run, *(("--run", run) if phase == "vae" else ())
        )
        assert proc.returncode == 0
    bad = base / "bad"
    bad.mkdir()
    (bad / "folder.toml").mkdir()
    (bad / "latin1.toml").write_bytes(b"[train]\nseed = 1 # caf\xe9\n")
    (bad / "notatoml.toml").write_text("[train\n")
    (bad / "empty.pt").write_bytes(b"")
    (bad / "text.png").write_text("not an image")
    state = torch.load(run / "checkpoints" / "glow.pt", weights_only=True)
    no_model = {k: v for k, v in state.items() if k != "model"}
    torch.save(no_model, bad / "no-model.pt")
    torch.save({**state, "format": "1"}, bad / "format-str.pt")
    torch.save({**state, "model": {k: (v[..., :1] if v.dim() == 4 else v) for k, v in state["model"].items()}}, bad / "shapes.pt")
    torch.save({**state, "model": {k: (v * float("nan") if v.is_floating_point() else v) for k, v in state["model"].items()}}, bad / "nan.pt")
    torch.save({**state, "model": [1, 2, 3]}, bad / "model-list.pt")
    torch.save({**state, "model": {k: v.long() if v.is_floating_point() else v for k, v in state["model"].items()}}, bad / "int-weights.pt")
    opt = {
        **state["optimizer"],
        "state": {
            i: {n: (t * float("nan") if torch.is_tensor(t) and t.is_floating_point() and t.dim() else t) for n, t in st.items()}
            for i, st in state["optimizer"]["state"].items()
        },
    }
    torch.save({**state, "optimizer": opt}, bad / "nan-optimizer.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(base / "PWNED"),))

    def damaged(name, **edits):
        torch.save({**state, **edits}, bad / name)

    damaged("signature-list.pt", signature="[1]")
    damaged("optimizer-list.pt", optimizer={"state": [1, 2], "param_groups": []}, complete=False)
    k = next(iter(state["optimizer"]["state"]))
    damaged(
        "optimizer-shape.pt",
        optimizer={**state["optimizer"], "state": {**state["optimizer"]["state"], k: {**state["optimizer"]["state"][k], "exp_avg": torch.zeros(1)}}},
    )
    damaged("epoch-negative.pt", epoch=-3, complete=False)
    damaged("step-huge.pt", step=10**6, global_step=10**6, epoch=0, complete=False)
    damaged("rng-ranks.pt", rng_ranks=[1, 2], complete=False)
    (bad / "deep.toml").write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    (bad / "deep-inline.toml").write_text("x = " + "{a = " * 40 + "1" + "}" * 40 + "\n")
    os.mkfifo(bad / "fifo.toml")
    os.mkfifo(bad / "fifo")
    (bad / "in-the-way").mkdir()
    (bad / "in-the-way" / "checkpoints").write_text("not a folder")
    (bad / "odd-names").mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "odd-names" / f"ok{i}.png")
    try:
        (bad / "odd-names" / os.fsdecode(b"\xff\xfe.png")).write_bytes((bad / "odd-names" / "ok0.png").read_bytes())
    except (OSError, UnicodeError):  # a file system that refuses such names has nothing to test
        pass
    (bad / "evil.pt").write_bytes(pickle.dumps({"format": 1, "model": Evil()}))
    return {"base": base, "root": root, "cfg": cfg, "run": run, "bad": bad}


def _set(*items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


# (id, argv builder, exit code, words the one line must hold). {cfg}, {run}, {bad}, {root}, {new} are
# filled from the world fixture; {run} is a trained run whose files must stay unchanged.
CASES = [
    # configs
    ("config-is-a-directory", ["train-vae", "--config", "{bad}/folder.toml", "--run", "{new}"], 2, ["is a directory"]),
    ("config-not-utf8", ["train-vae", "--config", "{bad}/latin1.toml", "--run", "{new}"], 2, ["not UTF-8"]),
    ("config-not-toml", ["config", "show", "--config", "{bad}/notatoml.toml"], 2, ["not valid TOML"]),
    ("config-missing", ["train-vae", "--config", "{bad}/nothere.toml"], 2, ["not found"]),
    ("run-dir-nul-byte", ["train-vae", "--config", "{cfg}", "--set", 'run.dir="/tmp/a\\u0000b"'], 2, ["run.dir", "NUL byte"]),
    ("norm-layer", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.encoder.norm=layer")], 2, ["model.encoder.norm", '"batch"']),
    (
        "mean-activation-relu",
        ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.decoder.mean_activation=relu")],
        2,
        ["model.decoder.mean_activation", '"sigmoid"'],
    ),
    (
        "split-diagonal",
        ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.flow.split=diagonal")],
        2,
        ["model.flow.split", "checkerboard"],
    ),
    ("encoder-depth-0", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.encoder.depth=0")], 2, ["model.encoder.depth", ">= 1"]),
    (
        "flow-depth-huge",
        ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.flow.depth=1000000000")],
        2,
        ["model.flow.depth", "<= 1024"],
    ),
    ("flow-hidden-0", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.flow.hidden_channels=0")], 2, ["model.flow.hidden_channels"]),
    (
        "min-std-negative",
        ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.decoder.min_std=-1.0")],
        2,
        ["model.decoder.min_std", ">= 0"],
    ),
    ("lr-inf", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("train.vae.lr=inf")], 2, ["train.vae.lr", "finite"]),
    ("lr-nan", ["train-glow", "--run", "{run}", *_set("train.glow.lr=nan")], 2, ["train.glow.lr", "finite"]),
    ("grad-clip-negative", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("train.vae.grad_clip=-1.0")], 2, ["train.vae.grad_clip"]),
    ("seed-negative", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("train.seed=-1")], 2, ["train.seed"]),
    ("latent-0", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.latent_dim=0")], 2, ["model.latent_dim"]),
    ("logit-alpha", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.logit_alpha=0.5")], 2, ["model.logit_alpha"]),
    (
        "multiscale-levels-3-on-28x28",
        [
            "train-baseline",
            "--config",
            "{cfg}",
            "--run",
            "{new}",
            *_set("model.flow.type=multiscale-glow", "model.flow.levels=3", "model.flow.steps=1", "model.flow.hidden_channels=4"),
        ],
        2,
        [
            "--set model.flow.type=multiscale-glow, --set model.flow.levels=3",
            "[model.flow]",
            "multiscale-glow",
            "divisible by 8",
            "fix [model.flow] in {cfg} or the --set",
        ],
    ),
    ("unknown-key", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("train.vae.epoch=3")], 2, ["unknown key", "epochs"]),
    ("set-without-equals", ["config", "show", "--set", "train.vae.epochs"], 2, ["KEY=VALUE"]),
    ("data-root-missing", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("data.root={bad}/nowhere")], 2, ["not found", "data.root"]),
    ("phase-2-without-phase-1", ["train-glow", "--config", "{cfg}", "--run", "{new}"], 2, ["train-vae --config", "{cfg}"]),
    (
        "phase-2-without-phase-1-or-data",
        ["train-glow", "--config", "{cfg}", "--run", "{new}", *_set("data.root={bad}/nowhere")],
        2,
        ["train-vae --config", "vaeflow data download mnist --root {bad}/nowhere"],
    ),
    (
        "init-std-below-min-std",
        ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.decoder.init_std=0.001", "model.decoder.min_std=0.01")],
        2,
        [
            "{cfg}, --set model.decoder.init_std=0.001, --set model.decoder.min_std=0.01: [model.decoder]",
            "init_std (0.001) must be above min_std (0.01)",
        ],
    ),
    ("phase-1-again", ["train-vae", "--run", "{run}"], 2, ["already has a phase 1 checkpoint", "--resume"]),
    (
        "other-config-for-run",
        ["train-joint", "--config", "{cfg}", "--run", "{run}", *_set("model.latent_dim=5")],
        2,
        ["different [model]/[data] config", "model.latent_dim: the run has", "this config 5", "leave out --config and any --set"],
    ),
    # checkpoints (copied into the run by the test)
    ("checkpoint-empty", ["sample", "--run", "{run}", "--out", "-"], 2, ["cannot be read"], "empty.pt"),
    ("checkpoint-without-model", ["sample", "--run", "{run}", "--out", "-"], 2, ["no 'model' entry"], "no-model.pt"),
    ("checkpoint-format-str", ["evaluate", "--run", "{run}"], 2, ["'format' is str"], "format-str.pt"),
    ("checkpoint-wrong-shapes", ["sample", "--run", "{run}", "--out", "-"], 2, ["differ in shape", "first:"], "shapes.pt"),
    ("checkpoint-nan-weights", ["sample", "--run", "{run}", "--out", "-"], 2, ["non-finite weights"], "nan.pt"),
    ("checkpoint-model-not-dict", ["sample", "--run", "{run}", "--out", "-"], 2, ["'model' is list"], "model-list.pt"),
    ("checkpoint-malicious-pickle", ["sample", "--run", "{run}", "--out", "-"], 2, ["cannot be read"], "evil.pt"),
    ("resume-from-empty-checkpoint", ["train-glow", "--run", "{run}", "--resume"], 2, ["cannot be read"], "empty.pt"),
    # options
    ("seed-2**32", ["sample", "--run", "{run}", "--seed", "4294967296"], 2, ["--seed", "4294967295"]),
    ("n-0", ["sample", "--run", "{run}", "--n", "0"], 2, ["--n", "greater than or equal to 1"]),
    ("n-negative", ["sample", "--run", "{run}", "--n", "-1"], 2, ["--n"]),
    ("n-huge", ["sample", "--run", "{run}", "--n", "500000000", "--out", "-"], 2, ["--n 500000000", "GiB"]),
    ("temperature-inf", ["sample", "--run", "{run}", "--temperature", "inf"], 2, ["--temperature", "finite"]),
    ("temperature-huge", ["sample", "--run", "{run}", "--temperature", "1e308"], 2, ["--temperature", "is not in [0, 100]"]),
    ("temperature-nan", ["sample", "--run", "{run}", "--temperature", "nan"], 2, ["--temperature", "finite"]),
    ("temperature-negative", ["sample", "--run", "{run}", "--temperature", "-1"], 2, ["--temperature"]),
    ("temperature-text", ["sample", "--run", "{run}", "-t", "abc"], 2, ["--temperature", "'abc' is not a number"]),
    ("temperature-overflow", ["sample", "--run", "{run}", "-t", "1e400"], 2, ["--temperature", "1e400 is not a finite number in [0, 100]"]),
    ("device-set-tpu", ["train-vae", "--run", "{new}", "--set", "train.device=tpu"], 2, ["--set train.device=tpu", "auto, cpu, cuda or cuda:N"]),
    ("steps-0", ["interpolate", "--run", "{run}", "--steps", "0"], 2, ["--steps", "greater than or equal to 2"]),
    ("steps-1", ["interpolate", "--run", "{run}", "--steps", "1"], 2, ["--steps"]),
    ("pairs-huge", ["interpolate", "--run", "{run}", "--pairs", "500000000"], 2, ["--pairs", "GiB"]),
    ("out-is-a-directory", ["sample", "--run", "{run}", "--out", "{bad}"], 2, ["is an existing directory"]),
    ("out-into-proc", ["sample", "--run", "{run}", "--out", "/proc/vaeflow-test/x.png"], 2, ["/proc", "not writable"]),
    ("out-into-proc-evaluate", ["evaluate", "--run", "{run}", "--out", "/proc/vaeflow-test.json"], 2, ["/proc", "not writable"]),
    ("out-into-proc-run", ["train-vae", "--config", "{cfg}", "--run", "/proc/vaeflow-test-run"], 2, ["--run", "/proc", "not writable"]),
    ("out-no-grid-onto-file", ["sample", "--run", "{run}", "--no-grid", "--out", "{cfg}"], 2, ["existing file"]),
    ("interpolate-from-text", ["interpolate", "--run", "{run}", "--from", "{bad}/text.png", "--to", "{bad}/text.png", "--out", "-"], 2, ["text.png"]),
    ("interpolate-from-only", ["interpolate", "--run", "{run}", "--from", "{bad}/text.png"], 2, ["--from and --to"]),
    ("format-gif", ["sample", "--run", "{run}", "--format", "gif"], 2, ["--format"]),
    ("unknown-option", ["sample", "--run", "{run}", "--colour"], 2, ["No such option"]),
    ("unknown-command", ["smaple"], 2, ["smaple"]),
    ("evaluate-unknown-metric", ["evaluate", "--run", "{run}", "--metrics", "bpd,fun"], 2, ["fun"]),
    ("evaluate-n-samples-huge", ["evaluate", "--run", "{run}", "--metrics", "digit_fd", "--n-samples", "500000000"], 2, ["--n-samples", "GiB"]),
    ("evaluate-iwae-k-0", ["evaluate", "--run", "{run}", "--iwae-k", "0"], 2, ["--iwae-k"]),
    ("evaluate-temperature-text", ["evaluate", "--run", "{run}", "--metrics", "fid", "--temperature", "hot"], 2, ["--temperature"]),
    ("evaluate-unknown-split", ["evaluate", "--run", "{run}", "--split", "validation"], 2, ["validation"]),
    (
        "fid-weights-malicious",
        ["evaluate", "--run", "{run}", "--metrics", "fid", "--n-samples", "4", "--fid-weights", "{bad}/evil.pt"],
        2,
        ["evil.pt"],
    ),
    ("fid-weights-empty", ["evaluate", "--run", "{run}", "--metrics", "fid", "--n-samples", "4", "--fid-weights", "{bad}/empty.pt"], 2, ["empty.pt"]),
    ("fid-weights-directory", ["evaluate", "--run", "{run}", "--metrics", "fid", "--n-samples", "4", "--fid-weights", "{bad}"], 2, ["fid"]),
    ("timing-bad-coupling", ["timing", "--config", "{cfg}", "--glow-coupling", "spline"], 2, ["--glow-coupling"]),
    (  # its own Glow's fewer levels on 28x28 images are logged only once every model is built
        "timing-flow-levels-on-28x28",
        ["timing", "--config", "{cfg}", *_set("model.flow.type=multiscale-glow", "model.flow.levels=3")],
        2,
        ["--set model.flow.type=multiscale-glow", "[model.flow]", "divisible by 8", "fix [model.flow] in {cfg} or the --set"],
    ),
    ("device-cuda-without-gpu", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("train.device=cuda:7")], 2, ["train.device"]),
    ("data-info-unknown", ["data", "info", "mnistt"], 2, ["unknown dataset"]),
    ("data-download-unknown", ["data", "download", "imagenet", "--root", "{new}"], 2, ["imagenet"]),
    # found by attacking the first version (kinds: unbounded sizes, log lines before errors, the wrong "where")
    ("timing-threads-huge", ["timing", "--config", "{cfg}", "--threads", "1000000"], 2, ["--threads", "1024"]),
    ("timing-warmup-huge", ["timing", "--config", "{cfg}", "--warmup", "100000000000000000000"], 2, ["--warmup"]),
    ("timing-steps-huge", ["timing", "--config", "{cfg}", "--steps", "100000000000000"], 2, ["--steps"]),
    ("timing-batch-huge", ["timing", "--config", "{cfg}", "--batch-size", "1000000"], 2, ["--batch-size"]),
    ("timing-glow-width-huge", ["timing", "--config", "{cfg}", "--glow-width", "1000000000"], 2, ["--glow-width"]),
    ("evaluate-iwae-k-huge", ["evaluate", "--run", "{run}", "--metrics", "iwae", "--iwae-k", "100000000000"], 2, ["--iwae-k"]),
    ("run-is-a-file", ["train-vae", "--config", "{cfg}", "--run", "{cfg}"], 2, ["--run", "not a directory"]),
    ("temperatures-nan", ["sample", "--run", "{run}", "--temperatures", "0.5,nan"], 2, ["--temperatures", "finite"]),
    ("temperatures-inf", ["sample", "--run", "{run}", "--temperatures", "1e400"], 2, ["--temperatures", "finite"]),
    ("evaluate-temperature-nan", ["evaluate", "--run", "{run}", "--metrics", "digit_fd", "-t", "nan"], 2, ["--temperature", "finite"]),
    ("temperatures-as-npy", ["sample", "--run", "{run}", "--temperatures", "0,1", "--format", "npy"], 2, ["--format npy"]),
    ("set-smuggles-a-key", ["train-vae", "--config", "{cfg}", "--run", "{new}", "--set", "train.seed=1\nx=2"], 2, ["one value per --set"]),
    ("set-range-names-the-set", ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.logit_alpha=0")], 2, ["--set model.logit_alpha=0"]),
    (
        "set-component-range-names-the-set",
        ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("model.flow.depth=0")],
        2,
        ["--set model.flow.depth=0"],
    ),
    ("device-bad-names-the-option", ["sample", "--run", "{run}", "--device", "cuda:-1"], 2, ["--device"]),
    ("compare-per-z-huge", ["sample", "--run", "{run}", "--compare", "--per-z", "4096", "--n", "100000000"], 2, ["--per-z"]),
    ("checkpoint-integer-weights", ["sample", "--run", "{run}", "--out", "-"], 2, ["wrong kind of number"], "int-weights.pt"),
    (
        "checkpoint-nan-optimizer",
        ["train-glow", "--run", "{run}", "--resume", *_set("train.glow.epochs=2")],
        2,
        ["non-finite optimizer state"],
        "nan-optimizer.pt",
    ),
    (
        "interpolate-from-empty-file",
        ["interpolate", "--run", "{run}", "--from", "{bad}/empty.pt", "--to", "{bad}/empty.pt", "--out", "-"],
        2,
        ["empty.pt"],
    ),
    (
        "cache-dir-is-a-file",
        [
            "train-vae",
            "--config",
            "{cfg}",
            "--run",
            "{new}",
            *_set("data.name=imagefolder", "data.root={bad}", "data.size=8", "data.cache_dir={cfg}"),
        ],
        2,
        ["data.cache_dir"],
    ),
    # found by the second attack (kinds: deep input, damaged run files, impossible checkpoint positions, blocking files)
    ("config-nested-too-deep", ["config", "show", "--config", "{bad}/deep.toml"], 2, ["nested"]),
    ("config-inline-tables-too-deep", ["config", "show", "--config", "{bad}/deep-inline.toml"], 2, ["nested"]),
    ("config-is-a-fifo", ["config", "show", "--config", "{bad}/fifo.toml"], 2, ["not a regular file"]),
    ("metrics-not-json-plot", ["plot", "--run", "{run}"], 2, ["metrics.jsonl:", "not a JSON record"], "metrics:not json"),
    ("metrics-wrong-types-train", ["train-prior", "--run", "{run}"], 2, ["metrics.jsonl:", "'epoch'"], 'metrics:{"phase": "prior", "epoch": "x"}'),
    ("metrics-a-list-resume", ["train-glow", "--run", "{run}", "--resume"], 2, ["not a JSON object"], "metrics:[1, 2]"),
    ("checkpoint-signature-not-object", ["sample", "--run", "{run}", "--out", "-"], 2, ["signature"], "signature-list.pt"),
    ("checkpoint-optimizer-state-list", ["train-glow", "--run", "{run}", "--resume"], 2, ["optimizer"], "optimizer-list.pt"),
    (
        "checkpoint-optimizer-wrong-shape",
        ["train-glow", "--run", "{run}", "--resume", *_set("train.glow.epochs=2")],
        2,
        ["shape"],
        "optimizer-shape.pt",
    ),
    ("checkpoint-epoch-negative", ["train-glow", "--run", "{run}", "--resume"], 2, ["'epoch' is negative"], "epoch-negative.pt"),
    ("checkpoint-step-beyond-epoch", ["train-glow", "--run", "{run}", "--resume", *_set("train.glow.epochs=2")], 2, ["step 1000000"], "step-huge.pt"),
    ("checkpoint-rng-not-a-state", ["train-glow", "--run", "{run}", "--resume"], 2, ["RNG"], "rng-ranks.pt"),
    ("checkpoint-is-a-fifo", ["sample", "--run", "{run}", "--out", "-"], 2, ["not a regular file"], "fifo"),
    ("run-entry-in-the-way", ["train-vae", "--config", "{cfg}", "--run", "{bad}/in-the-way"], 2, ["in the way"]),
    # found by a new user's attack (an unset shell variable reads as the current directory)
    ("run-empty", ["train-vae", "--config", "{cfg}", "--run", "", "--max-steps", "1"], 2, ["the argument after --run is empty"]),
    ("run-empty-equals", ["sample", "--run=", "--out", "-"], 2, ["--run is given an empty value"]),
    ("out-empty", ["evaluate", "--run", "{run}", "--out", ""], 2, ["the argument after --out is empty"]),
    ("sample-t-with-temperatures", ["sample", "--run", "{run}", "-t", "0.7", "--temperatures", "0,1"], 2, ["-t/--temperature has no effect"]),
    ("sample-per-z-without-compare", ["sample", "--run", "{run}", "--per-z", "3"], 2, ["--per-z", "add --compare"]),
    ("sample-vae-only-with-compare", ["sample", "--run", "{run}", "--vae-only", "--compare"], 2, ["--vae-only", "give one"]),
    ("sample-vae-only-with-temperatures", ["sample", "--run", "{run}", "--vae-only", "--temperatures", "0,1"], 2, ["--vae-only", "give one"]),
    ("sample-vae-only-with-t", ["sample", "--run", "{run}", "--vae-only", "-t", "0.3"], 2, ["no temperature"]),
    (
        "resume-other-seed",
        ["train-glow", "--run", "{run}", "--resume", *_set("train.seed=12345")],
        2,
        ["--resume continues", "train.seed is", "--restart"],
    ),
    ("resume-other-batch", ["train-vae", "--run", "{run}", "--resume", *_set("train.vae.batch_size=3")], 2, ["train.vae.batch_size is", "not 3"]),
    ("temperatures-empty-item", ["sample", "--run", "{run}", "--temperatures", "0,,1"], 2, ["--temperatures", "empty item"]),
    (
        "evaluate-temperature-trailing-comma",
        ["evaluate", "--run", "{run}", "--metrics", "digit_fd", "-t", "0.5,"],
        2,
        ["--temperature", "empty item"],
    ),
    (
        "baseline-into-a-vae-run",
        ["train-baseline", "--run", "{run}", *_set("model.flow.conditional=false")],
        2,
        ["holds a VAE", "choose a new --run"],
    ),
    ("mirror-not-a-url", ["data", "download", "mnist", "--root", "{new}"], None, ["notaurl"], None, {"VAEFLOW_MIRROR": "notaurl"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_corpus_of_bad_inputs_one_line_no_traceback_run_unchanged(case, world, tmp_path, monkeypatch, capsys):
    name, argv, code, words, *rest = case
    checkpoint = rest[0] if rest else None
    env = rest[1] if len(rest) > 1 else None
    if name.startswith("out-into-proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    run = world["run"]
    if checkpoint:  # a private copy of the run with a bad checkpoint as its newest, or damaged metrics
        run = tmp_path / "run"
        shutil.copytree(world["run"], run)
        if checkpoint.startswith("metrics:"):
            with open(run / "metrics.jsonl", "a") as fh:
                fh.write(checkpoint[len("metrics:") :] + "\n")
        else:
            dest = run / "checkpoints" / "glow.pt"
            dest.unlink()
            if checkpoint == "fifo":
                os.mkfifo(dest)
            else:
                shutil.copy(world["bad"] / checkpoint, dest)
    new = tmp_path / "new-run"
    fill = {"cfg": world["cfg"], "run": run, "bad": world["bad"], "root": world["root"], "new": new}
    args = [a.format(**fill) for a in argv]
    before_run, before_new = tree(run), tree(new)
    rc, out, err = call(args, env=env, monkeypatch=monkeypatch, capsys=capsys)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("vaeflow: error: ") and "internal error" not in lines[0], lines[0]
    assert rc == (code if code is not None else rc) and rc in (1, 2), (rc, err)
    for w in words:
        assert w.format(**fill) in lines[0], (w, lines[0])
    assert tree(run) == before_run, "the run directory changed"
    assert tree(new) == before_new == {}, "a failed start wrote into the new run directory"
    assert not (world["base"] / "PWNED").exists()


def test_a_failed_start_leaves_the_directory_as_it_was_and_the_corrected_command_works(world, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    rc, _, err = call(
        ["train-vae", "--config", world["cfg"], "--run", run, "--set", "model.encoder.norm=layer"], monkeypatch=monkeypatch, capsys=capsys
    )
    assert rc == 2 and not run.exists()
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    before = tree(run)
    rc, _, err = call(
        ["train-vae", "--config", world["cfg"], "--run", run, "--set", "model.flow.type=multiscale-glow", "--set", "model.flow.levels=3"],
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert rc == 2 and tree(run) == before, err
    rc, out, err = call(["train-vae", "--config", world["cfg"], "--run", run], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 0, err
    assert (run / "checkpoints" / "vae.pt").exists() and (run / "notes.txt").read_text() == "mine"


def test_an_unexpected_exception_is_one_line_naming_the_bug_and_its_traceback_file(world, monkeypatch, capsys):
    import vaeflow_cli.evaluation.plots as plots

    def broken(run, out=None):
        return 1 / 0

    monkeypatch.setattr(plots, "training_curves", broken)
    rc, _, err = call(["plot", "--run", world["run"]], monkeypatch=monkeypatch, capsys=capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err
    assert "internal error" in lines[0] and "ZeroDivisionError" in lines[0] and "VAEFLOW_DEBUG=1" in lines[0]
    path = Path(lines[0].split("the traceback is in ")[1].split(";")[0])
    assert "ZeroDivisionError" in path.read_text() and "broken" in path.read_text()
    path.unlink()
    rc, _, err = call(["plot", "--run", world["run"]], env={"VAEFLOW_DEBUG": "1"}, monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 1 and "Traceback" in err and "ZeroDivisionError" in err


def test_out_of_memory_and_os_errors_are_one_line_with_exit_code_1(world, monkeypatch, capsys):
    import vaeflow_cli.evaluation.plots as plots

    for exc, words in (
        (MemoryError(), "out of memory"),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
            "out of memory",
        ),
        (OSError(28, "No space left on device", "/x/y.png"), "the disk is full"),
    ):

        def broken(run, out=None, exc=exc):
            raise exc

        monkeypatch.setattr(plots, "training_curves", broken)
        rc, _, err = call(["plot", "--run", world["run"]], monkeypatch=monkeypatch, capsys=capsys)
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and words in lines[0] and "internal error" not in lines[0], err


def test_a_file_name_that_is_not_utf8_is_decoded_not_a_crash(world, tmp_path, monkeypatch, capsys):
    names = os.listdir(os.fsencode(world["bad"] / "odd-names"))
    if b"\xff\xfe.png" not in names:
        pytest.skip("this file system refuses names that are not UTF-8")
    rc, out, err = call(["data", "info", "imagefolder", "--root", world["bad"] / "odd-names"], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 0, err
    rc, out, err = call(
        [
            "train-baseline",
            "--run",
            tmp_path / "r",
            *_set(
                "data.name=imagefolder",
                f"data.root={world['bad'] / 'odd-names'}",
                "data.size=8",
                "data.test_fraction=0.3",
                "model.flow.type=glow-layer",
                "model.flow.conditional=false",
                "model.flow.depth=1",
                "model.flow.hidden_channels=4",
                "train.baseline.epochs=1",
                "train.baseline.batch_size=1",
                "train.threads=1",
            ),
        ],
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert rc == 0 and "Traceback" not in err, err


LONG = "a" * 100_000  # longer than any file name or path a file system takes


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "show", "--config", LONG],
        ["config", "show", "--config", f"{{bad}}/{'b' * 300}.toml"],
        ["sample", "--run", LONG],
        ["sample", "--run", "{run}", "--out", f"{{bad}}/{LONG}.png"],
        ["data", "info", "imagefolder", "--root", LONG],
        ["train-vae", "--config", "{cfg}", "--run", "{new}", *_set("data.name=imagefolder", f"data.root={LONG}")],
        ["interpolate", "--run", "{run}", "--from", LONG, "--to", LONG],
    ],
    ids=["config", "config-component", "run", "out", "data-root", "train-data-root", "interpolate-from"],
)
def test_an_over_long_path_exits_2_and_its_echo_is_cut(world, tmp_path, argv, monkeypatch, capsys):
    """A path longer than the file system allows is bad input (exit code 2, as documented), and the
    one error line shows its start and end, not 100 KB."""
    fill = {"cfg": world["cfg"], "run": world["run"], "bad": world["bad"], "new": tmp_path / "new"}
    rc, out, err = call([a.format(**fill) for a in argv], monkeypatch=monkeypatch, capsys=capsys)
    lines = err.strip().splitlines()
    assert rc == 2, err[:2000]
    assert len(lines) == 1 and lines[0].startswith("vaeflow: error: ") and "internal error" not in lines[0], err[:2000]
    assert len(lines[0]) < 2_000, lines[0][:2000]
    assert ("characters left out" in lines[0]) == any(LONG in a for a in argv), lines[0]
    assert not (tmp_path / "new").exists()


def test_the_echo_of_a_long_value_is_cut_in_every_error_line(world, monkeypatch, capsys):
    rc, out, err = call(["config", "show", "--set", f"model.encoder.type={LONG}"], monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 2 and len(err) < 5_000 and "characters left out" in err, err[:2000]  # the value is echoed twice, each cut
