"""Train every registered component in every phase that trains it under torchrun, and save each
rank's weights: the job behind tests/training/test_ddp_registry.py.

    torchrun --nproc_per_node=2 tests/training/ddp_job.py --config TINY.toml --out DIR

One process group runs all the runs of ``make_plan`` in sequence (each in its own run directory
under DIR/runs). After each phase every rank saves its model's state_dict (parameters and
buffers) to DIR/RUN-PHASE-rankR.pt, and appends the phase's outcome to DIR/status-rankR.jsonl
(written as it goes, so a job killed by a timeout still says how far it got). Rank 0 writes the
plan to DIR/plan.json.

The plan is made from the plugin registry, so a third-party component is covered like a built-in
(the built-ins planned first, among themselves; the test installs the example plugin of
docs/plugins.md next to vaeflow):

* every encoder, decoder and prior is trained in phase ``vae`` and, after ``glow``, in ``joint``;
* every prior with parameters also in phase ``prior`` (after phase 1), then ``glow`` and
  ``joint`` run on the trained prior; and a copy of the run made after phase 1 runs ``glow`` and
  ``joint`` with the prior still untrained (the two-stage VAE's untrained second stage gets no
  gradient there), then ``prior`` after phase 2;
* every flow with parameters in phase ``glow`` (after phase 1), ``joint`` and ``baseline`` (alone).

Components are zipped into as few VAE runs as the longest kind needs (see ``make_plan``). Each component gets tiny
keyword arguments: the test config's own section for its kind, restricted to the arguments the
factory takes, overlaid with the factory's ``test_kwargs`` (the component suite's settings).
A flow without parameters is trained by no phase, and has no case.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import inspect
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

IMAGE_SHAPE = (1, 28, 28)  # the MNIST IDX files the test writes
LATENT_DIM = 4  # TINY's model.latent_dim
KINDS = ("encoder", "decoder", "prior", "flow")
PHASE_TRAINS = {
    "vae": ("encoder", "decoder", "prior"),
    "glow": ("flow",),
    "baseline": ("flow",),
    "prior": ("prior",),
    "joint": ("encoder", "decoder", "prior", "flow"),
}


def tiny_kwargs(factory, tiny_section: dict) -> dict:
    """The test config's options for this kind that ``factory`` accepts, then its ``test_kwargs``."""
    try:
        accepted = {n for n, p in inspect.signature(factory).parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    except (TypeError, ValueError):
        accepted = set()
    kwargs = {k: v for k, v in tiny_section.items() if k != "type" and k in accepted}
    return {**kwargs, **dict(getattr(factory, "test_kwargs", {}) or {})}


def _context(kind: str) -> dict:
    return {
        "encoder": {"image_shape": IMAGE_SHAPE, "latent_dim": LATENT_DIM},
        "decoder": {"image_shape": IMAGE_SHAPE, "latent_dim": LATENT_DIM},
        "prior": {"latent_dim": LATENT_DIM},
        "flow": {"image_shape": IMAGE_SHAPE},
    }[kind]


def is_identity_at_init(factory, kwargs: dict) -> bool:
    """Whether the flow may be a VAE's pixel flow (vaeflow refuses the others when training starts)."""
    from vaeflow_cli.testing import check_identity_at_init

    try:
        check_identity_at_init(factory, IMAGE_SHAPE, **kwargs)
    except Exception:  # noqa: BLE001 -- not the identity, or not buildable at this shape
        return False
    return True


def is_conditional_flow(factory, kwargs: dict) -> bool:
    """Whether the flow, built tiny, reads the decoder's output (the ConditionalFlow protocol)."""
    from vaeflow_cli.model.flows import is_conditional

    try:
        return is_conditional(factory(**_context("flow"), **kwargs))
    except Exception:  # noqa: BLE001 -- not buildable at this shape: the training run reports why
        return False


def has_parameters(factory, kind: str, kwargs: dict) -> bool:
    """Whether the component, built tiny, has trainable parameters (True when it cannot be built:
    the training run then reports why)."""
    try:
        module = factory(**_context(kind), **kwargs)
    except Exception:  # noqa: BLE001
        return True
    return any(p.requires_grad for p in getattr(module, "parameters", lambda: [])())


def make_plan(registry, tiny_model: dict) -> dict:
    """{"runs": [...], "cases": [...], "skipped": [...]}. A run: name, model sections, phases in
    order, and optionally ``fork``: [parent run, phase after which its directory is copied]. A
    case: id, kind, name, phase, run (whose ``RUN-PHASE-rankR.pt`` files hold its weights).

    The built-in components come first, planned among themselves (runs ``vae0``, ...), so their
    cases do not change with what else is installed; then the third-party ones, planned the same
    way (runs ``plugin0``, ...), a kind that no third-party plugin provides taking the first
    built-in component of that kind."""
    from vaeflow_cli.config.files import embedded_default, overlay

    default = embedded_default()
    comps: dict[str, list[dict]] = {}
    for kind in KINDS:
        comps[kind] = []
        for name in registry.names(kind):
            component = registry.get(kind, name)
            kwargs = tiny_kwargs(component.factory, tiny_model.get(kind, {}))
            # the section as a run resolves it (the one rule for defaults: a section of the embedded default's type takes its other options)
            section = overlay(default, {"model": {kind: {"type": name, **kwargs}}})["model"][kind]
            kwargs = {k: v for k, v in section.items() if k != "type"}
            comps[kind].append(
                {
                    "name": name,
                    "section": {"type": name, **kwargs},
                    "trainable": has_parameters(component.factory, kind, kwargs),
                    # a VAE's pixel flow: the identity at initialisation, or a conditional flow decoder (which may declare its own start)
                    "pixel": kind == "flow" and (is_identity_at_init(component.factory, kwargs) or is_conditional_flow(component.factory, kwargs)),
                    "conditional": kind == "flow" and is_conditional_flow(component.factory, kwargs),
                    "builtin": registry.plugins[component.plugin].builtin,
                }
            )
    builtin = {k: [c for c in comps[k] if c["builtin"]] for k in KINDS}
    external = {k: [c for c in comps[k] if not c["builtin"]] for k in KINDS}
    runs, cases = [], []
    _plan(builtin, builtin, "vae", runs, cases)
    _plan(external, builtin, "plugin", runs, cases)
    skipped = [{"id": f"flow:{c['name']}", "reason": "it has no parameters: no phase trains it"} for c in comps["flow"] if not c["trainable"]]
    skipped += [
        {"id": f"flow:{c['name']}:baseline", "reason": "a conditional flow needs a VAE's decoder: it trains as a VAE's flow only"}
        for c in comps["flow"]
        if c["trainable"] and c["conditional"]
    ]
    return {"runs": runs, "cases": cases, "skipped": skipped}


def _plan(mine: dict, fill: dict, prefix: str, runs: list, cases: list) -> None:
    """Append the runs and cases that train every component of ``mine`` ({kind: [component]}):
    components are zipped into as few VAE runs (PREFIX0, ...) as the longest kind needs; a kind
    ``mine`` lacks takes ``fill``'s first component, which then has no case here."""

    def case(kind, comp, phase, run, note=""):
        cid = f"{kind}:{comp['name']}:{phase}" + (f"({note})" if note else "")
        cases.append({"id": cid, "kind": kind, "name": comp["name"], "phase": phase, "run": run})

    def pixel_flows(flows):  # a VAE's flow (the Flow protocol), trained by phase glow
        return [c for c in flows if c["trainable"] and c["pixel"]]

    flows = pixel_flows(mine["flow"])
    vae_flows = flows or pixel_flows(fill["flow"])
    pools = {k: mine[k] or fill[k][:1] for k in ("encoder", "decoder", "prior")}
    n = max(len(mine["encoder"]), len(mine["decoder"]), len(mine["prior"]), len(flows))
    for i in range(n):
        pick = {k: pool[i % len(pool)] for k, pool in pools.items() if pool}
        pick["flow"] = vae_flows[i % len(vae_flows)] if vae_flows else next((c for c in mine["flow"] + fill["flow"] if c["pixel"]), None)
        if pick["flow"] is None:
            del pick["flow"]
        if len(pick) < 4:
            continue  # a kind with no component at all: no model can be built
        model = {k: dict(c["section"]) for k, c in pick.items()}
        name = f"{prefix}{i}"
        phases = ["vae"]
        prior_trains = pick["prior"]["trainable"]
        if prior_trains:
            phases.append("prior")
        if vae_flows:
            phases += ["glow", "joint"]
        runs.append({"name": name, "model": model, "phases": phases})
        for kind in ("encoder", "decoder", "prior"):
            if i < len(mine[kind]):
                case(kind, pick[kind], "vae", name)
                if vae_flows:
                    case(kind, pick[kind], "joint", name, "trained" if kind == "prior" and prior_trains else "")
        if prior_trains and i < len(mine["prior"]):
            case("prior", pick["prior"], "prior", name, "after vae")
        if flows and i < len(flows):
            case("flow", pick["flow"], "glow", name, "after prior" if prior_trains else "")
            case("flow", pick["flow"], "joint", name)
        if prior_trains and vae_flows and i < len(mine["prior"]):
            # the same run with the prior still untrained in phases 2 and joint, then trained
            fork = f"{name}-untrained-prior"
            runs.append({"name": fork, "model": model, "phases": ["glow", "joint", "prior"], "fork": [name, "vae"]})
            case("prior", pick["prior"], "joint", fork, "untrained")
            case("prior", pick["prior"], "prior", fork, "after glow")
            if i < len(flows):
                case("flow", pick["flow"], "glow", fork, "after vae")
    for f in (c for c in mine["flow"] if c["trainable"] and not c["conditional"]):  # every unconditional trainable flow trains as a baseline
        name = f"baseline-{f['name']}"
        runs.append({"name": name, "model": {"flow": dict(f["section"])}, "phases": ["baseline"]})
        case("flow", f, "baseline", name)


ACTNORM_SHARDS = (3, 5)  # images of the ActNorm check's global batch on rank 0 and rank 1 (unequal on purpose)


def actnorm_batch() -> torch.Tensor:
    """The ActNorm check's global batch: 8 images of 4 channels with different means and scales."""
    g = torch.Generator().manual_seed(7)
    return torch.randn(sum(ACTNORM_SHARDS), 4, 6, 6, generator=g) * torch.tensor([0.5, 1.0, 2.0, 3.0]).reshape(1, 4, 1, 1) + torch.tensor(
        [-1.0, 0.0, 0.5, 2.0]
    ).reshape(1, 4, 1, 1)


def actnorm_check(out: Path, rank: int) -> None:
    """Every data-dependent ActNorm of the registry's flows, initialised on this rank's shard of
    ``actnorm_batch``: saved to DIR/actnorm-rankR.pt for comparison with one process on the whole."""
    from vaeflow_plugins.glow import DataInitActNorm

    x = actnorm_batch()
    start = sum(ACTNORM_SHARDS[:rank])
    layer = DataInitActNorm(4).train()
    with torch.no_grad():
        layer(x[start : start + ACTNORM_SHARDS[rank]])
    torch.save(layer.state_dict(), out / f"actnorm-rank{rank}.pt")


def weights_path(out: Path, run: str, phase: str, rank: int) -> Path:
    return Path(out) / f"{run}-{phase}-rank{rank}.pt"


OVERRIDES = ["train.device='cpu'", "train.threads=1", "train.eval_samples=8", "train.keep_checkpoints=0", "run.sample_n=4"] + [
    f"train.{p}.{k}" for p in PHASE_TRAINS for k in ("epochs=1", "batch_size=32")
]


def run_config(base: dict, model: dict) -> dict:
    from vaeflow_cli.config import core as config_mod

    raw = copy.deepcopy(base)
    for kind, section in model.items():
        raw["model"][kind] = dict(section)
    return config_mod.resolve(base=raw, overrides=OVERRIDES, source="ddp job config")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--collective-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import torch.distributed as dist

    # Joined before train_phase does (it keeps an initialised group), with a timeout: a rank left
    # waiting in a collective fails after it instead of hanging the test until its own timeout.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.collective_timeout))
    rank = dist.get_rank()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import vaeflow_cli.training.loop as train_mod
    import vaeflow_cli.training.setup as setup_mod
    from vaeflow_cli.config import files
    from vaeflow_cli.registry.core import get_registry

    base = files.load_toml(args.config)
    plan = make_plan(get_registry(), base["model"])
    if rank == 0:
        (out / "plan.json").write_text(json.dumps(plan, indent=1))

    built = {}
    original_build = setup_mod.build_model

    def capturing_build(*a, **k):
        built["model"] = original_build(*a, **k)
        return built["model"]

    setup_mod.build_model = capturing_build  # data_and_model builds each phase's model
    if dist.get_world_size() == len(ACTNORM_SHARDS):
        actnorm_check(out, rank)
    status_path = out / f"status-rank{rank}.jsonl"
    only = {s for s in args.only.split(",") if s}

    def record(**entry) -> None:
        with status_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    failed_runs: dict[str, str] = {}  # run -> what failed
    broken = False
    for run in plan["runs"]:
        if only and run["name"] not in only and not (run.get("fork") and run["fork"][0] in only):
            continue
        run_dir = out / "runs" / run["name"]
        if run.get("fork") and not broken:
            parent, _after = run["fork"]
            if not (out / "forks" / parent).is_dir():  # copied after the parent's phase, if that succeeded
                failed_runs[run["name"]] = f"its parent run {parent}: {failed_runs.get(parent, 'no copy')}"
            elif rank == 0:
                shutil.copytree(out / "forks" / parent, run_dir)
            dist.barrier()
        for phase in run["phases"]:
            if broken or run["name"] in failed_runs:
                record(
                    run=run["name"],
                    phase=phase,
                    ok=False,
                    error="not run: the process group broke earlier" if broken else f"not run: an earlier phase failed ({failed_runs[run['name']]})",
                )
                continue
            t0 = time.perf_counter()
            built.clear()
            try:
                cfg = run_config(base, run["model"])
                train_mod.train_phase(cfg, run_dir, phase, progress=False)
                torch.save(built["model"].state_dict(), weights_path(out, run["name"], phase, rank))
                record(run=run["name"], phase=phase, ok=True, seconds=round(time.perf_counter() - t0, 2))
            except BaseException as exc:  # noqa: BLE001 -- every outcome is recorded; the test reports it
                failed_runs[run["name"]] = f"phase {phase}: {type(exc).__name__}: {str(exc)[:300]}"
                record(
                    run=run["name"],
                    phase=phase,
                    ok=False,
                    seconds=round(time.perf_counter() - t0, 2),
                    error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc()[-4000:],
                )
                if isinstance(exc, KeyboardInterrupt):
                    raise
                try:  # both ranks are here unless the failure left one in a collective
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=min(30.0, args.collective_timeout)))
                except Exception as bexc:  # noqa: BLE001
                    record(run=run["name"], phase=phase, ok=False, error=f"process group broken after the failure: {bexc}")
                    broken = True
            if phase == "vae" and any(r.get("fork") == [run["name"], "vae"] for r in plan["runs"]):
                if rank == 0 and run["name"] not in failed_runs:
                    shutil.copytree(run_dir, out / "forks" / run["name"])
                dist.barrier()
    if not broken:
        dist.barrier()
        (out / f"done-rank{rank}").write_text("ok\n")
        built.clear()
        gc.collect()  # the DDP wrappers of the phases, before the group goes
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: gloo's worker threads occasionally abort it ("terminate
    # called without an active exception", SIGABRT) after everything was recorded.
    os._exit(code)
