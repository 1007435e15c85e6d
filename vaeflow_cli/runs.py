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
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vaeflow_cli import config as config_mod
from vaeflow_cli.errors import VaeflowError

CHECKPOINT_FORMAT = 1


def atomic_write(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash right after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    def checkpoint_path(self, phase: str) -> Path:
        return self.path / "checkpoints" / f"{phase}.pt"

    # ---------------------------------------------------------------- config

    def read_config(self) -> dict:
        if not self.config_path.exists():
            raise VaeflowError(f"{self.path} is not a vaeflow run (no config.toml); train one with: vaeflow train-vae --run {self.path}")
        return config_mod.load_toml(self.config_path)

    def resolved_config(self, overrides: list[str] = ()) -> dict:
        """The run's stored config, validated against the registry, with ``--set`` overrides."""
        return config_mod.resolve(base=self.read_config(), overrides=overrides, source=str(self.config_path))

    def write_config(self, cfg: dict) -> None:
        atomic_write_bytes(self.config_path, config_mod.dumps(cfg).encode())

    # ---------------------------------------------------------------- metrics

    def append_metrics(self, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, phase: str, after_epoch: int) -> None:
        """Drop records of ``phase`` beyond ``after_epoch`` (written after the checkpoint we resume from)."""
        keep = [r for r in self.read_metrics() if not (r.get("phase") == phase and r.get("epoch", 0) > after_epoch)]
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, phase: str, state: dict[str, Any], *, keep: int = 0, tag: str = "") -> Path:
        """Write ``checkpoints/PHASE.pt`` atomically (temporary file, fsync, rename). With ``keep``
        > 0 and a ``tag``, the checkpoint is first written as ``PHASE-TAG.pt`` and PHASE.pt becomes
        a hard link to it; only the ``keep`` newest tagged files are kept."""
        import torch

        path = self.checkpoint_path(phase)
        payload = {"format": CHECKPOINT_FORMAT, "phase": phase, **state}
        if keep <= 0 or not tag:
            atomic_write(path, lambda fh: torch.save(payload, fh))
            return path
        tagged = path.with_name(f"{phase}-{tag}.pt")
        atomic_write(tagged, lambda fh: torch.save(payload, fh))
        link = path.with_name(f".{path.name}.link.tmp")
        link.unlink(missing_ok=True)
        os.link(tagged, link)
        os.replace(link, path)
        _fsync_dir(path.parent)
        for old in self.kept_checkpoints(phase)[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def kept_checkpoints(self, phase: str) -> list[Path]:
        """The tagged checkpoints of ``phase``, oldest first."""
        return sorted((self.path / "checkpoints").glob(f"{phase}-*.pt"))

    def load_checkpoint(self, phase: str, *, map_location="cpu") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path(phase), map_location=map_location)


def load_checkpoint(path: Path, *, map_location="cpu") -> dict[str, Any]:
    """A checkpoint dict, loaded without unpickling arbitrary objects; one clear error otherwise."""
    import torch

    if not path.exists():
        raise VaeflowError(f"checkpoint {path} not found; train that phase first (vaeflow train-vae / train-glow --run {path.parent.parent})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong file, disallowed global
        raise VaeflowError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); it is truncated or not a vaeflow checkpoint: retrain that phase or restore the file") from None
    if not isinstance(state, dict) or "format" not in state:
        raise VaeflowError(f"{path} is not a vaeflow checkpoint")
    if state["format"] > CHECKPOINT_FORMAT:
        raise VaeflowError(f"checkpoint {path} has format {state['format']}, newer than this vaeflow understands ({CHECKPOINT_FORMAT}); upgrade vaeflow")
    return state


def check_signature(state: dict, cfg: dict, path: Path) -> None:
    """A checkpoint must come from the same model and data config as the run's."""
    want = json.dumps(config_mod.model_signature(cfg), sort_keys=True)
    try:
        got = json.dumps(config_mod.normalize_signature(json.loads(state.get("signature") or "null") or {}), sort_keys=True)
    except (TypeError, ValueError):
        got = None
    if got != want:
        raise VaeflowError(f"checkpoint {path} was trained with a different [model]/[data] config than {path.parent.parent}/config.toml; use the run's own config or a new --run")


def load_run_model(run: str | Path, *, device: str = "cpu", phase: str = "auto"):
    """(model in eval mode, resolved config, phase loaded) from a run directory alone.

    ``phase="auto"`` loads the newest checkpoint of phase 1, phase 2, the prior training or the
    joint fine-tuning (a phase-1 model's Glow layer is still the identity), else the standalone
    baseline (a FlowModel)."""
    rd = RunDir(run)
    cfg = rd.resolved_config()
    if phase == "auto":
        found = [p for p in ("joint", "prior", "glow", "vae") if rd.checkpoint_path(p).exists()]
        if found:  # the newest: phases may run in either order (train-prior before or after train-glow)
            phase = max(found, key=lambda p: rd.checkpoint_path(p).stat().st_mtime_ns)
        else:
            phase = "baseline" if rd.checkpoint_path("baseline").exists() else "vae"
    state = rd.load_checkpoint(phase)
    check_signature(state, cfg, rd.checkpoint_path(phase))
    return model_from_state(cfg, state, device=device), cfg, phase


def model_from_state(cfg: dict, state: dict, *, device: str = "cpu"):
    """The model of a resolved config with a loaded checkpoint's weights, in eval mode on ``device``."""
    from vaeflow_cli.data import build_dataset
    from vaeflow_cli.model import build_model

    model = build_model(cfg, build_dataset(cfg).image_shape, baseline=state["phase"] == "baseline")
    model.load_state_dict(state["model"])
    return model.to(device).eval()
