"""Every registered component, in every phase that trains it, under torchrun (2 CPU processes,
gloo): the two replicas' weights (parameters AND buffers) are bit-identical after an epoch. Each
case compares its component's part of the model's state_dict (and any tensor of the model outside
the component sections), so a failure names the component that breaks the invariant.

The cases come from the registry (tests/training/ddp_job.py: make_plan), so a third-party component
is covered like a built-in: the job runs with the example plugin of docs/plugins.md installed next
to vaeflow (built into a wheel, on PYTHONPATH, selected by VAEFLOW_PLUGINS), and its components'
cases follow the built-ins' (``test_a_third_party_plugin_is_covered_too``). One torchrun launch
(tests/training/ddp_job.py) trains them all in sequence in one process group, one epoch each on 64
tiny MNIST images, and saves each rank's state_dict per phase; the tests here compare the files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, torchrun, write_idx

from vaeflow_cli.registry.core import get_registry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("vaeflow_ddp_job", HERE / "ddp_job.py")
ddp_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_job)
_spec = importlib.util.spec_from_file_location("vaeflow_demo_plugin", ROOT / "tests" / "plugins" / "demo_plugin.py")
demo_plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_plugin)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TINY_MODEL = tomllib.loads(TINY.format(root="/unused", run="/unused"))["model"]
PLAN = ddp_job.make_plan(get_registry(), TINY_MODEL)  # the built-ins (conftest loads no third-party plugin)
DEMO_COMPONENTS = {
    ("encoder", "demo-mlp"),
    ("decoder", "demo-mlp"),
    ("prior", "demo-affine"),
    ("flow", "demo-pixel-affine"),
    ("flow", "demo-conditioned-affine"),
}
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def job(tmp_path_factory, digits):
    """Run tests/training/ddp_job.py once under torchrun; {"dir", "proc", "seconds", "status": {(run, phase): [rank0, rank1]}}."""
    base = tmp_path_factory.mktemp("ddp-registry")
    root = base / "mnist"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", digits[:64], gz=True)  # 2 steps of 2 x 16 per epoch
    write_idx(root / "t10k-images-idx3-ubyte", digits[64:80])
    config = base / "tiny.toml"
    config.write_text(TINY.format(root=root, run=base / "unused-run"))
    out = base / "out"
    site = demo_plugin.build_site(base / "demo")  # a third-party plugin installed next to vaeflow
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(site), os.environ.get("PYTHONPATH")])),
        "VAEFLOW_PLUGINS": demo_plugin.ENTRY_POINT,
    }
    t0 = time.perf_counter()
    proc = torchrun("--standalone", HERE / "ddp_job.py", "--config", config, "--out", out, env=env, timeout=JOB_TIMEOUT_S)
    status: dict = {}
    for rank in (0, 1):
        path = out / f"status-rank{rank}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            status.setdefault((entry["run"], entry["phase"]), [None, None])[rank] = entry
    return {"dir": out, "proc": proc, "seconds": time.perf_counter() - t0, "status": status}


def _stderr_tail(proc) -> str:
    text = proc.stderr if isinstance(proc.stderr, str) else (proc.stderr or b"").decode(errors="replace")
    return text[-3000:]


def test_the_job_ran_the_plan_of_this_registry(job):
    assert (job["dir"] / "plan.json").exists(), f"torchrun exited {job['proc'].returncode}:\n{_stderr_tail(job['proc'])}"
    ran = json.loads((job["dir"] / "plan.json").read_text())
    assert [c["id"] for c in ran["cases"][: len(PLAN["cases"])]] == [c["id"] for c in PLAN["cases"]]
    assert {(c["kind"], c["name"]) for c in ran["cases"][len(PLAN["cases"]) :]} == DEMO_COMPONENTS
    assert all((job["dir"] / f"done-rank{r}").exists() for r in (0, 1)), (
        f"the job did not finish on every rank (torchrun exited {job['proc'].returncode}):\n{_stderr_tail(job['proc'])}"
    )
    assert job["proc"].returncode == 0, _stderr_tail(job["proc"])


def _case_params():
    params = [pytest.param(case, id=case["id"]) for case in PLAN["cases"]]
    params += [pytest.param(None, id=s["id"], marks=pytest.mark.skip(reason=s["reason"])) for s in PLAN["skipped"]]
    return params


@pytest.mark.parametrize("case", _case_params())
def test_replicas_are_bit_identical_after_an_epoch(job, case):
    check_replicas(job, case)


def test_a_third_party_plugin_is_covered_too(job):
    """Every component of the example plugin, in every phase that trains it, as the built-ins."""
    ran = json.loads((job["dir"] / "plan.json").read_text())["cases"] if (job["dir"] / "plan.json").exists() else []
    extra = [c for c in ran if (c["kind"], c["name"]) in DEMO_COMPONENTS]
    assert {(c["kind"], c["name"]) for c in extra} == DEMO_COMPONENTS, f"torchrun exited {job['proc'].returncode}:\n{_stderr_tail(job['proc'])}"
    assert {c["phase"] for c in extra} == {"vae", "prior", "glow", "joint", "baseline"}
    for case in extra:
        check_replicas(job, case)


def check_replicas(job, case) -> None:
    """The case's phase ran on both ranks, and its component's tensors are bit-identical there."""
    key = (case["run"], case["phase"])
    entries = job["status"].get(key)
    if entries is None or None in entries:
        pytest.fail(
            f"run {case['run']} phase {case['phase']} has no outcome on every rank (torchrun exited "
            f"{job['proc'].returncode}):\n{_stderr_tail(job['proc'])}"
        )
    for rank, entry in enumerate(entries):
        if not entry["ok"]:
            pytest.fail(f"rank {rank}: run {case['run']} phase {case['phase']} failed: {entry['error']}\n{entry.get('traceback', '')}")
    states = [torch.load(ddp_job.weights_path(job["dir"], case["run"], case["phase"], r)) for r in (0, 1)]
    assert list(states[0]) == list(states[1])
    # this component's tensors, and the model's own (outside every component section), if any
    mine = [k for k in states[0] if k.split(".")[0] == case["kind"] or k.split(".")[0] not in ddp_job.KINDS]
    differ = []
    for name in mine:
        a = states[0][name]
        b = states[1][name]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            gap = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else float("nan")
            differ.append(f"{name} (max |rank0 - rank1| = {gap:.3g})")
    assert not differ, (
        f"{len(differ)} of the {len(mine)} tensors of [model.{case['kind']}] ({case['name']}) differ between "
        f"the replicas after {case['phase']}: " + ", ".join(differ[:8])
    )


def test_data_init_actnorm_uses_the_global_batch(job):
    """Shards of 3 and 5 images: both ranks hold what one process computes on all 8 (Glow's
    initialisation: bias = -mean, log_scale = -log std per channel, std as Tensor.std)."""
    paths = [job["dir"] / f"actnorm-rank{r}.pt" for r in (0, 1)]
    assert all(p.exists() for p in paths), _stderr_tail(job["proc"])
    ranks = [torch.load(p) for p in paths]
    x = ddp_job.actnorm_batch()
    want = {"bias": -x.mean(dim=(0, 2, 3), keepdim=True), "log_scale": -torch.log(x.std(dim=(0, 2, 3), keepdim=True))}
    for name, value in want.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], value, rtol=1e-5, atol=1e-6), (name, ranks[0][name], value)
    assert bool(ranks[0]["initialized"]) and bool(ranks[1]["initialized"])
