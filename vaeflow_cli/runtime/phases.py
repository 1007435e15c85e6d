"""The training phases, in one table: what each trains, what it starts from, whether its model runs
the Glow layer, its checkpoint, its command and its help text.

The ``train-*`` commands, the trainer (``vaeflow_cli.training.loop``), ``evaluate``, ``load_run`` and the
config schema read this table instead of repeating its rules. No torch here (the CLI imports it to
build its commands).

- ``vae`` (phase 1, paper section 3.3): encoder, decoder and prior on the ELBO, the Glow layer
  left at the identity.
- ``glow`` (phase 2): the Glow layer alone on the frozen VAE.
- ``prior``: the prior alone on z ~ q(z|y) of the frozen encoder (a two-stage VAE's second stage).
- ``joint``: every part together after phase 2 (paper, section 3.4).
- ``baseline``: ``[model.flow]`` alone as a density with a N(0, I) base (the standalone Glow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODEL_PARTS = ("encoder", "decoder", "prior", "flow")


@dataclass(frozen=True)
class Phase:
    name: str
    """Its ``[train.NAME]`` section, ``checkpoints/NAME.pt`` and ``vaeflow train-NAME``."""
    title: str
    """How messages name it ("phase 1")."""
    label: str
    """Its key in ``evaluate``'s results (``bpd_elbo_LABEL``)."""
    trains: tuple[str, ...]
    """The model parts it trains (the others are frozen and in eval mode)."""
    starts_from: tuple[str, ...]
    """The finished phases it may start from, in order of preference (see ``previous``)."""
    summary: str
    """The one line ``vaeflow --help`` shows for ``train-NAME``."""
    help: str
    """The ``train-NAME`` command's help text."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Its ``[train.NAME]`` defaults that differ from every phase's (``config.DEFAULTS``)."""
    prior_alone: bool = False
    """The phase trains the prior on its own: the prior's optional ``start_own_training()`` is
    called when it starts (``vaeflow_cli.hookspecs.Prior``)."""
    flow_at_init: bool = False
    """The phase starts with the Glow layer at its initialisation, where it must be the identity
    (checked when the phase starts): phase 1, which never trains it, and phase 2, which starts it."""
    standalone: bool = False
    """The model is ``[model.flow]`` alone (a FlowModel), not the VAE."""
    start_note: str = ""
    """The note of its epoch-0 record, the held-out bound it starts at (a phase that continues
    another); ``{start}`` stands for the title of the phase it started from."""

    @property
    def command(self) -> str:
        return f"train-{self.name}"

    def trained_parts(self, train_prior: bool = False) -> tuple[str, ...]:
        """The model parts this phase trains: ``trains``, and the prior too where the phase's
        section sets ``train_prior`` (phase 2's option, ``PhaseSettings.train_prior``)."""
        extra = ("prior",) if train_prior and "prior" not in self.trains else ()
        return self.trains + extra

    def use_flow(self, start: str | None) -> bool:
        """Whether this phase's model runs the Glow layer, given the phase it started from: when
        it trains the layer, or starts from a phase that does (so not phase 1, where the layer is
        the identity, nor a prior trained on phase 1). An unknown start (None) is the phase's
        preferred one, the first of ``starts_from``."""
        start = start if start is not None else (self.starts_from[0] if self.starts_from else None)
        return "flow" in self.trains or (start is not None and PHASES[start].use_flow(None))


PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase(
            name="vae",
            title="phase 1",
            label="vae",
            trains=("encoder", "decoder", "prior"),
            starts_from=(),
            summary="Phase 1: train encoder, decoder and prior on the ELBO.",
            help="Phase 1: train encoder, decoder and prior on the ELBO. Prints the run directory.",
            flow_at_init=True,
        ),
        Phase(
            name="glow",
            title="phase 2",
            label="full",
            trains=("flow",),
            starts_from=("vae", "prior"),
            summary="Phase 2: train the Glow layer on the frozen VAE.",
            help="Phase 2: freeze the VAE and train the Glow layer on top of it. Prints the run directory.",
            flow_at_init=True,
            start_note="start of phase 2 (Glow layer = identity)",
            defaults={"train_prior": False},
        ),
        Phase(
            name="baseline",
            title="the baseline",
            label="baseline",
            trains=("flow",),
            starts_from=(),
            summary="Train the flow alone: the standalone Glow baseline.",
            help="Train the config's [model.flow] alone as a density model with a N(0, I) base (the paper's "
            "standalone Glow baseline: configs/glow-cifar10.toml). Prints the run directory.",
            standalone=True,
        ),
        Phase(
            name="joint",
            title="the joint fine-tuning",
            label="joint",
            trains=MODEL_PARTS,
            starts_from=("glow",),
            summary="Fine-tune all parts together after both phases.",
            help="After both phases: fine-tune encoder, decoder, prior and Glow layer together on the full "
            "model's ELBO ([train.joint]; the paper's section 3.4). Prints the run directory.",
            defaults={"epochs": 5, "lr": 1e-5},
            start_note="start of joint fine-tuning (the two-phase model)",
        ),
        Phase(
            name="prior",
            title="the prior training",
            label="prior",
            trains=("prior",),
            starts_from=("glow", "vae"),
            summary="Train the prior alone on the frozen encoder's z.",
            help="Train the prior alone on z ~ q(z|x) of the frozen encoder ([train.prior]), starting from "
            "phase 2 (or phase 1): the second stage of a two-stage VAE prior (model.prior.type = "
            '"two-stage-vae"; Dai & Wipf, the paper\'s Table 1), or more steps for any other prior. '
            "Prints the run directory.",
            defaults={"epochs": 20, "lr": 1e-3},
            prior_alone=True,
            start_note="start of prior training (from {start})",
        ),
    )
}
"""The phases in ``[train.*]`` order; the order also seeds each phase's RNG (``train_phase``)."""

LOAD_ORDER = ("joint", "prior", "glow", "vae")
"""The VAE phases ``load_run`` may pick (``latest``), in the order that breaks ties; the baseline
only when none of these exists."""


def no_latent_space(path, what: str) -> str:
    """The one line for a run of a standalone flow (the ``standalone`` phase: ``train-baseline``)
    asked for ``what``, which needs a VAE's latent space."""
    standalone = next(p for p in PHASES.values() if p.standalone)
    return f"{path} is a standalone flow ({standalone.command}): it has no latent space for {what}"


def latest(found: list[str], start_of: Callable[[str], str | None], stale: Callable[[str], bool] = lambda p: False) -> str:
    """The phase of the last training step among the checkpoints ``found`` (names in LOAD_ORDER):
    the one no other found checkpoint started from (``start_of(name)``: what the phase's training
    started from), by the phase table, never by file times (a copy or a restore touches files).
    phase 2 supersedes phase 1; train-prior supersedes what it started from (phase 2 or phase 1),
    and phase 2 started from a trained prior supersedes that prior; joint supersedes phase 2.
    Ties (two phases from the same start) go to the first in LOAD_ORDER. A ``stale`` phase (the
    phase it was trained on has trained since: ``lineage.stale_link``) supersedes nothing: that
    phase was trained after it."""
    later = [p for p in found if p != "vae"] if len(found) > 1 else []
    outdated = {p for p in later if stale(p)}
    starts = {p: start_of(p) for p in later if p not in outdated}
    superseded = outdated | {s for p, s in starts.items() if s in found and s != p}  # a damaged "start" names nothing
    return next((p for p in LOAD_ORDER if p in found and p not in superseded), next(p for p in LOAD_ORDER if p in found))


def previous(phase: str, has: Callable[[str], bool], start_of: Callable[[str], str | None]) -> str | None:
    """The finished phase whose checkpoint ``phase`` starts from, given which checkpoints exist
    (``has(name)``) and what each started from (``start_of(name)``): phase 2 from phase 1, or from
    a prior trained on phase 1 (before phase 2 exists); joint from phase 2; the prior from phase 2,
    else phase 1. None for phases that start from scratch."""
    if phase == "glow":
        return "prior" if has("prior") and not has("glow") and start_of("prior") == "vae" else "vae"
    if phase == "prior":
        return "glow" if has("glow") else "vae"
    return PHASES[phase].starts_from[0] if PHASES[phase].starts_from else None
