"""Run directories and checkpoints.

A run directory is self-describing; ``sample``/``interpolate``/``evaluate`` rebuild the model from
it alone::

    RUN/config.toml            the resolved config (every component's keyword arguments)
    RUN/checkpoints/vae.pt     phase 1: weights, optimizer, RNG, position (which fixes the LR schedule)
    RUN/checkpoints/glow.pt    phase 2: the same
    RUN/metrics.jsonl          one JSON object per epoch (and one at the start of phase 2)
    RUN/samples/*.png          sample grids written after each epoch

Everything is written to a temporary file in the same folder, flushed to disk and renamed, so a
crash never leaves a half-written file. Checkpoints load with ``torch.load(weights_only=True)``.

This module knows the files and their formats, not what a config means: reading, resolving and
writing ``config.toml``, the components' provenance, a checkpoint's config signature and the model
a checkpoint holds are ``vaeflow_cli.training.runconfig``'s (they need the config schema, the
plugin registry and the model, above the ground floor).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vaeflow_cli.config.limits import check_regular_file
from vaeflow_cli.console import shell_arg
from vaeflow_cli.errors import RuntimeFailure, VaeflowError, describe_os_error
from vaeflow_cli.files import atomic_write, atomic_write_bytes, fsync_dir

CHECKPOINT_FORMAT = 1


def not_a_run(path: str | Path, then: str | None = None) -> str:
    """The one line for a folder that holds no ``config.toml``: "PATH is not a vaeflow run (no
    config.toml); THEN", THEN by default how to make it one."""
    return f"{path} is not a vaeflow run (no config.toml); " + (then or f"train one with: vaeflow train-vae --run {shell_arg(path)}")


def _in_run(name: str) -> property:
    """A read-only property of ``RunDir``: the path ``NAME`` in the run directory."""

    def path(self: RunDir) -> Path:
        return self.path / name

    return property(path, doc=f"RUN/{name}")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = _in_run("config.toml")
    metrics_path = _in_run("metrics.jsonl")
    samples_dir = _in_run("samples")
    components_path = _in_run("components.toml")

    def checkpoint_path(self, phase: str) -> Path:
        return self.path / "checkpoints" / f"{phase}.pt"

    # ---------------------------------------------------------------- metrics

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line; a failed write (disk full) is undone, so no half line is left."""
        line = (json.dumps(record) + "\n").encode()
        size = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("ab") as fh:
                size = fh.tell()
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if size is not None:
                try:
                    os.truncate(self.metrics_path, size)
                except OSError:
                    pass
            raise RuntimeFailure(f"cannot write {describe_os_error(exc, self.metrics_path)}") from None

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files (``.NAME.*.tmp``) that a killed writer left in the run
        directory and its checkpoints folder. Only the holder of ``lock`` may call this."""
        stale = [p for folder in (self.path, self.path / "checkpoints") if folder.is_dir() for p in folder.glob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory for one training process: an exclusive ``flock`` on the
        directory itself (no lock file: the kernel drops the lock when the process ends, even by
        SIGKILL, so it can never go stale). A second process gets one line (RuntimeFailure).
        Creates the directory if needed (a start only locks once its inputs are validated)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover: no flock (Windows): one writer is not enforced
            yield
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise RuntimeFailure(f"cannot use the run directory {describe_os_error(exc, self.path)}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeFailure(
                    f"{self.path} is in use: another vaeflow process is training in it; wait until it ends, or choose another --run"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl, each checked (METRIC_TYPES); a damaged file is one line
        naming the file and line."""
        if not os.path.lexists(self.metrics_path):
            return []
        check_regular_file(self.metrics_path, "metrics file", "restore it or delete it (the checkpoints are what resume reads)")
        fix = f"delete that line (or the file {self.metrics_path}: only plots and the record of epochs read it)"
        try:
            text = self.metrics_path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VaeflowError(f"{self.metrics_path}: not UTF-8 text (byte {exc.start}); {fix}") from None
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise VaeflowError(f"{self.metrics_path}:{n}: not a JSON record; {fix}") from None
            problem = _metric_problem(record)
            if problem:
                raise VaeflowError(f"{self.metrics_path}:{n}: {problem}; {fix}")
            records.append(record)
        return records

    def truncate_metrics(self, phase: str, after_epoch: int) -> None:
        """Drop records of ``phase`` beyond ``after_epoch`` (written after the checkpoint we resume from)."""
        records = self.read_metrics()
        keep = [r for r in records if not (r.get("phase") == phase and r.get("epoch", 0) > after_epoch)]
        if len(keep) < len(records):  # nothing to drop: the file stays untouched
            atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, phase: str, state: dict[str, Any], *, keep: int = 0, tag: str = "", pinned: Iterable[str] = ()) -> Path:
        """Write ``checkpoints/PHASE.pt`` atomically (temporary file, fsync, rename), with the
        digest of its weights (``digest``: ``weights_digest``). With ``keep`` > 0 and a
        ``tag``, the checkpoint is first written as ``PHASE-TAG.pt`` and PHASE.pt becomes a hard
        link to it; only the ``keep`` newest tagged files are kept, besides those named in
        ``pinned`` (a state another phase was trained on)."""
        import torch

        path = self.checkpoint_path(phase)
        payload = {"format": CHECKPOINT_FORMAT, "phase": phase, **state, "digest": weights_digest(state["model"])}
        if keep <= 0 or not tag:
            atomic_write(path, lambda fh: torch.save(payload, fh))
            return path
        tagged = path.with_name(f"{phase}-{tag}.pt")
        atomic_write(tagged, lambda fh: torch.save(payload, fh))
        link = path.with_name(f".{path.name}.link.tmp")
        link.unlink(missing_ok=True)
        os.link(tagged, link)
        os.replace(link, path)
        fsync_dir(path.parent)
        pinned = set(pinned)
        for old in [p for p in self.kept_checkpoints(phase) if p.name not in pinned][:-keep]:
            old.unlink(missing_ok=True)
        return path

    def remove_checkpoints(self, phase: str, *, after_step: int = -1) -> list[Path]:
        """Delete the step-tagged checkpoints of ``phase`` beyond ``after_step`` (all of them, and
        PHASE.pt too, with the default): ``--restart``, and the states a rescue from non-finite
        steps discards. Only the holder of ``lock`` may call this."""
        gone = []
        for p in self.kept_checkpoints(phase):
            step = p.stem.rsplit("-step", 1)[-1]
            if not step.isdigit() or int(step) > after_step:
                p.unlink(missing_ok=True)
                gone.append(p)
        if after_step < 0 and self.checkpoint_path(phase).exists():
            self.checkpoint_path(phase).unlink()
            gone.append(self.checkpoint_path(phase))
        return gone

    def kept_checkpoints(self, phase: str) -> list[Path]:
        """The tagged checkpoints of ``phase``, oldest first."""
        return sorted((self.path / "checkpoints").glob(f"{phase}-*.pt"))

    def load_checkpoint(self, phase: str, *, map_location="cpu") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path(phase), map_location=map_location)


def load_checkpoint(path: Path, *, map_location="cpu") -> dict[str, Any]:
    """A checkpoint dict, loaded without unpickling arbitrary objects; one clear error otherwise."""
    import torch

    if not path.exists():
        raise VaeflowError(
            f"checkpoint {path} not found; train that phase first (vaeflow train-vae / train-glow --run {shell_arg(path.parent.parent)})"
        )
    check_regular_file(path, "checkpoint", "restore the file or retrain that phase")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # empty or truncated zip, wrong file, a disallowed global (a malicious pickle)
        import pickle

        if path.stat().st_size == 0:
            why = "an empty file"
        elif isinstance(exc, pickle.UnpicklingError):
            why = "it holds pickled Python objects, which weights-only loading refuses: a foreign or malicious file"
        else:
            why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:120]}"
        raise VaeflowError(
            f"checkpoint {path} cannot be read ({why}); it is truncated or not a vaeflow checkpoint: retrain that phase or restore the file"
        ) from None
    check_checkpoint(state, path)
    return state


# What a checkpoint holds: key -> accepted types (checked before anything is loaded from it).
CHECKPOINT_SCHEMA: dict[str, tuple] = {
    "format": (int,),
    "phase": (str,),
    "model": (dict,),
    "signature": (str,),
    "epoch": (int,),
    "epochs": (int,),
    "step": (int,),
    "global_step": (int,),
    "complete": (bool,),
    "optimizer": (dict,),
    "rng": (dict,),
    "loss_sum": (int, float),
    "loss_n": (int, float),
    "digest": (str,),  # weights_digest of "model"
}
CHECKPOINT_OPTIONAL: dict[str, tuple] = {
    "scaler": (dict,),
    "rng_ranks": (list,),
    "skipped_steps": (int,),
    "world_size": (int,),
    "lr": (int, float),
    "start": (str, type(None)),
    "components": (dict,),  # plugins.provenance.built_with: who registered each component
    "start_digest": (str, type(None)),  # the digest of the checkpoint this phase started from ...
    "start_step": (int, type(None)),  # ... and its global step (lineage.stale_link)
}


def check_checkpoint(state: Any, path: Path) -> None:
    """Refuse (one line) a loaded checkpoint that is not a vaeflow checkpoint of a known format:
    missing keys, wrong types, weights that are not named tensors, or non-finite weights."""
    import torch

    if not isinstance(state, dict) or "format" not in state:
        raise VaeflowError(f"{path} is not a vaeflow checkpoint (no 'format' entry); retrain that phase or restore the file")
    if not isinstance(state["format"], int) or isinstance(state["format"], bool):
        raise VaeflowError(f"checkpoint {path}: 'format' is {type(state['format']).__name__}, not an integer; the file is not a vaeflow checkpoint")
    if state["format"] > CHECKPOINT_FORMAT:
        raise VaeflowError(
            f"checkpoint {path} has format {state['format']}, newer than this vaeflow understands ({CHECKPOINT_FORMAT}); upgrade vaeflow"
        )
    for key, types in {**CHECKPOINT_SCHEMA, **CHECKPOINT_OPTIONAL}.items():
        if key not in state:
            if key in CHECKPOINT_SCHEMA:
                raise VaeflowError(
                    f"checkpoint {path} has no {key!r} entry; it is damaged or not a vaeflow checkpoint: retrain that phase or restore the file"
                )
            continue
        value = state[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = " or ".join(t.__name__ for t in types)
            raise VaeflowError(f"checkpoint {path}: {key!r} is {type(value).__name__}, not {want}; it is damaged or not a vaeflow checkpoint")
    position = _position_problem(state)
    if position:
        raise VaeflowError(
            f"checkpoint {path}: {position}; it is damaged: use an earlier checkpoint ({path.parent}/{state['phase']}-step*.pt) or retrain that phase"
        )
    bad = [k for k, v in state["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise VaeflowError(
            f"checkpoint {path}: its weights hold {len(bad)} entries that are not named tensors (first: {bad[0]!r}); it is damaged or not a vaeflow checkpoint"
        )
    optim = [
        v
        for s in (state["optimizer"].get("state") or {}).values()
        if isinstance(s, dict)
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    ]
    if not all_finite(optim):
        raise VaeflowError(
            f"checkpoint {path} has a non-finite optimizer state; resuming from it cannot work: use an earlier checkpoint "
            f"({path.parent}/{state.get('phase', 'PHASE')}-step*.pt) or retrain that phase"
        )
    odd = next((k for k, v in state["model"].items() if v.layout != torch.strided or v.device.type == "meta"), None)
    if odd is not None:  # a sparse or meta tensor has no values to load
        raise VaeflowError(
            f"checkpoint {path}: weight {odd!r} is not a dense tensor with values; the file is damaged or not a vaeflow "
            f"checkpoint: use an earlier one ({path.parent}/{state.get('phase', 'PHASE')}-step*.pt) or retrain that phase"
        )
    if not all_finite([v for v in state["model"].values() if v.is_floating_point()]):
        first = next(k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all())
        raise VaeflowError(
            f"checkpoint {path} has non-finite weights (first: {first!r}); use an earlier checkpoint "
            f"({path.parent}/{state.get('phase', 'PHASE')}-step*.pt) or retrain that phase"
        )


def weights_digest(weights: dict) -> str:
    """SHA-256 of a state dict (names, dtypes, shapes and bytes, in name order): equal exactly when
    the weights are. The tensors are read on the CPU."""
    import torch

    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name]
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"")
    return h.hexdigest()


def all_finite(tensors) -> bool:
    """Whether every element of every floating-point tensor is finite: one fused reduction and
    one host sync, however many tensors (weights, buffers, optimizer moments)."""
    import torch

    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return not flags or bool(torch.stack(flags).all())


def _position_problem(state: dict) -> str | None:
    """What is impossible in a checkpoint's position, RNG, optimizer and signature entries."""
    import torch

    for key in ("epoch", "step", "global_step", "loss_n"):
        if state[key] < 0:
            return f"{key!r} is negative ({state[key]})"
    if state["epochs"] < 1 or state["epoch"] > state["epochs"] and not state["complete"]:
        return f"'epoch' {state['epoch']} of 'epochs' {state['epochs']} is impossible"
    if state["global_step"] < state["step"]:
        return f"'global_step' {state['global_step']} is below 'step' {state['step']}"
    if not math.isfinite(state["loss_sum"]):
        return "'loss_sum' is not finite"
    for rng in [state["rng"], *state.get("rng_ranks", [])]:
        if not (isinstance(rng, dict) and isinstance(rng.get("cpu"), torch.Tensor) and rng["cpu"].dtype == torch.uint8):
            return "an RNG state is not a generator state"
    opt = state["optimizer"]
    if not (
        isinstance(opt.get("state"), dict)
        and isinstance(opt.get("param_groups"), list)
        and all(isinstance(s, dict) for s in opt["state"].values())
        and all(isinstance(g, dict) for g in opt["param_groups"])
    ):
        return "its optimizer state is not an optimizer's state_dict"
    try:
        sig = json.loads(state["signature"])
    except (ValueError, RecursionError):
        sig = None
    if not (isinstance(sig, dict) and all(isinstance(sig.get(k, {}), dict) for k in ("data", "model"))):
        return "its config signature is not a [model]/[data] record"
    return None


# metrics.jsonl: what a record holds (key -> accepted types); other keys are free
METRIC_TYPES: dict[str, tuple] = {
    "phase": (str,),
    "epoch": (int,),
    "train_bpd": (int, float, type(None)),
    "test_bpd": (int, float, type(None)),
    "test_latent_bpd": (int, float),
    "test_pixel_bpd": (int, float),
    "lr": (int, float),
    "steps": (int,),
    "seconds": (int, float),
}


def _metric_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "a record is not a JSON object"
    for key in ("phase", "epoch"):
        if key not in record:
            return f"the record has no {key!r}"
    for key, types in METRIC_TYPES.items():
        if key in record and (not isinstance(record[key], types) or isinstance(record[key], bool)):
            return f"{key!r} is {type(record[key]).__name__} {record[key]!r}"
    return None


def load_weights(model, weights: dict, path: Path) -> None:
    """``model.load_state_dict(weights)`` after checking names and shapes: a checkpoint of
    another architecture is one line naming the first difference, not a size-mismatch dump."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shape = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    kind = [
        k
        for k in own
        if k in weights and k not in shape and (own[k].is_floating_point() != weights[k].is_floating_point() or weights[k].is_complex())
    ]
    if kind:
        k = kind[0]
        raise VaeflowError(
            f"checkpoint {path}: {len(kind)} tensors have the wrong kind of number (first: {k!r} is {weights[k].dtype} "
            f"in the checkpoint, {own[k].dtype} in the model); the file is damaged or not a vaeflow checkpoint"
        )
    if missing or extra or shape:
        parts = []
        if shape:
            k = shape[0]
            parts.append(
                f"{len(shape)} tensors differ in shape (first: {k!r} is {tuple(weights[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model)"
            )
        if missing:
            parts.append(f"{len(missing)} are missing (first: {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} are unknown to the model (first: {extra[0]!r})")
        raise VaeflowError(
            f"checkpoint {path} does not fit the model built from the run's config: {'; '.join(parts)}; "
            "it was made with another [model] config or vaeflow version: use that run's own directory, or retrain"
        )
    model.load_state_dict(weights)
