"""The resolved config as typed, frozen objects: what ``config.core.resolve`` returns.

A ``Config`` has the four sections of a config file as attributes: ``data`` (a ``Component``
naming the dataset), ``model`` (``ModelSettings``), ``train`` (``TrainSettings``, whose
``phase(name)`` is the ``PhaseSettings`` of ``[train.NAME]`` with its ``Phase`` object from the
phase table) and ``run`` (``RunSettings``). The code reads attributes (``cfg.train.phase("vae").lr``);
the TOML and ``--set`` surface and the files written into runs stay the nested tables they are:
``Config.to_dict()`` gives them back, and a ``Config`` is also a read-only mapping of those tables
(``cfg["train"]["vae"]["lr"]``, each access a fresh copy), so a notebook, a logger or a plugin that
reads a config as a dict keeps working. Build one with ``resolve`` (which validates it: every
field here has passed the types and constraints of ``config.core.DEFAULTS`` / ``CONSTRAINTS`` and
the component factories' signatures); to change one, resolve again with ``--set``-style overrides
(``resolve(base=cfg.to_dict(), overrides=[...])``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from vaeflow_cli.runtime.phases import MODEL_PARTS, PHASES, Phase


def _frozen(value: Any) -> Any:
    """``value`` (TOML tables, arrays and values) made read-only all the way down: tables become
    read-only mappings, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return copy.deepcopy(value)


@dataclass(frozen=True)
class Origin:
    """Where a component section's values came from, for the error line of a component that
    refuses its options: the config file (None for a config given as a dict, or the embedded
    default), the base files below it, and the ``--set`` items that touched the section.
    ``where`` and ``fix`` word it for the whole section, here only (the component check in
    ``config.core`` words its own line about a single key: the file, or the ``--set`` that gave it)."""

    section: str
    file: str | None = None
    bases: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """The file, then the ``--set`` items: ``"x.toml, --set model.flow.steps=2"``."""
        return ", ".join(([self.file] if self.file else []) + list(self.sets))

    @property
    def fix(self) -> str:
        """Which to fix: ``"fix [model.flow] in x.toml or its base b.toml or the --set"``."""
        if self.file is None:
            return "fix the --set"
        files = f"{self.file} or its base{'s' if len(self.bases) > 1 else ''} {', '.join(self.bases)}" if self.bases else self.file
        return f"fix [{self.section}] in {files}" + (" or the --set" if self.sets else "")

    def with_sets(self, sets: tuple[str, ...]) -> Origin:
        """The same origin after more ``--set`` items touched the section."""
        return replace(self, sets=self.sets + tuple(sets))


def _thawed(value: Any) -> Any:
    """The inverse of ``_frozen``: fresh dicts and lists, as TOML and the factories take them."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return copy.deepcopy(value)


@dataclass(frozen=True)
class Component:
    """A component section: ``[model.encoder|decoder|prior|flow]`` (named by ``type``) or
    ``[data]`` (named by ``name``). ``options``: the factory's keyword arguments, completed with
    its defaults (read-only)."""

    name: str
    options: Mapping[str, Any]

    def kwargs(self) -> dict[str, Any]:
        """The factory's keyword arguments, a fresh dict (arrays as lists)."""
        return _thawed(self.options)


@dataclass(frozen=True)
class PhaseSettings:
    """A ``[train.NAME]`` section: the optimisation of one phase (``phase``, from the phase table)."""

    phase: Phase = field(repr=False)
    epochs: int
    batch_size: int
    lr: float
    lr_halve_every: int
    warmup_steps: int
    lr_cosine_steps: int
    lr_final_fraction: float
    grad_clip: float
    kl_warmup_steps: int
    free_bits: float
    train_prior: bool = False  # [train.glow] only: phase 2 trains the prior too

    @property
    def name(self) -> str:
        return self.phase.name

    def trained_parts(self) -> tuple[str, ...]:
        """The model parts this phase trains (``Phase.trained_parts`` with this section's options)."""
        return self.phase.trained_parts(self.train_prior)


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: the latent size, the pixel transform and the four components."""

    latent_dim: int
    pixel_transform: str
    logit_alpha: float
    encoder: Component
    decoder: Component
    prior: Component
    flow: Component

    def part(self, name: str) -> Component:
        """The component of the model part ``name`` (one of ``MODEL_PARTS``)."""
        if name not in MODEL_PARTS:
            raise KeyError(f"{name!r} is not a model part; the parts are {', '.join(MODEL_PARTS)}")
        return getattr(self, name)


@dataclass(frozen=True)
class TrainSettings:
    """``[train]``: where and how every phase trains, and its ``[train.NAME]`` sections."""

    device: str
    seed: int
    eval_samples: int
    dequantize: str
    precision: str
    tf32: bool
    channels_last: bool
    compile: bool
    threads: int
    checkpoint_every: int
    keep_checkpoints: int
    max_bad_steps: int
    phases: Mapping[str, PhaseSettings]

    def phase(self, name: str | Phase) -> PhaseSettings:
        """The ``[train.NAME]`` settings of a phase (by name or ``Phase``); KeyError naming the
        phases for another name."""
        key = name.name if isinstance(name, Phase) else name
        if key not in self.phases:
            raise KeyError(f"no phase {key!r}; the phases are {', '.join(self.phases)}")
        return self.phases[key]


@dataclass(frozen=True)
class RunSettings:
    """``[run]``: the run directory and what each epoch writes."""

    dir: str
    sample_n: int
    loggers: tuple[str, ...]
    log_every: int


@dataclass(frozen=True, eq=False)
class Config(Mapping):
    """A resolved, validated config (``config.core.resolve``). Attributes: ``data``, ``model``,
    ``train``, ``run``; as a mapping, the config's nested tables (copies)."""

    data: Component
    model: ModelSettings
    train: TrainSettings
    run: RunSettings
    tables: Mapping[str, Any]
    """The config's nested tables, as ``resolve`` validated them, read-only all the way down (a
    copy to edit: ``to_dict()``)."""
    origins: Mapping[str, Origin] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    """For error lines about a component that refuses its options: component section ("data",
    "model.flow", ...) -> its ``Origin`` (the config file and its bases, and the ``--set`` items
    that touched it). A run's config names its config.toml; a
    config resolved from a dict or read back from a pickle names none (a ``Config`` validated
    again keeps its own). Not part of the config's value: equality, pickling and ``to_dict``
    ignore it."""

    def origin(self, section: str) -> tuple[str, str] | None:
        """``(where, fix)`` of ``origins[section]``, as ``Component.build`` takes it, or None where
        the config does not know (``Component.build`` then names the section alone)."""
        found = self.origins.get(section)
        return (found.where, found.fix) if found else None

    @classmethod
    def from_tables(cls, tables: Mapping[str, Any], origins: Mapping[str, Origin] | None = None) -> Config:
        """The typed view of a resolved config's nested tables (``resolve`` calls it; they are
        already validated: this only arranges them), with the component sections' ``origins``."""
        t = copy.deepcopy(dict(tables))
        d, m, tr, r = t["data"], t["model"], t["train"], t["run"]

        def component(section: dict, name_key: str) -> Component:
            return Component(section[name_key], _frozen({k: v for k, v in section.items() if k != name_key}))

        phase_keys = {f for f in PhaseSettings.__dataclass_fields__ if f != "phase"}
        phases = {name: PhaseSettings(PHASES[name], **{k: v for k, v in tr[name].items() if k in phase_keys}) for name in PHASES if name in tr}
        plain = {k: v for k, v in tr.items() if k not in PHASES}
        return cls(
            data=component(d, "name"),
            model=ModelSettings(
                latent_dim=m["latent_dim"],
                pixel_transform=m["pixel_transform"],
                logit_alpha=m["logit_alpha"],
                **{part: component(m[part], "type") for part in MODEL_PARTS},
            ),
            train=TrainSettings(**plain, phases=MappingProxyType(phases)),
            run=RunSettings(dir=r["dir"], sample_n=r["sample_n"], loggers=tuple(r["loggers"]), log_every=r["log_every"]),
            tables=_frozen(t),
            origins=MappingProxyType(dict(origins or {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """The config's nested tables, a fresh dict (what ``RUN/config.toml`` holds)."""
        return _thawed(self.tables)

    def __getitem__(self, key: str) -> Any:
        return _thawed(self.tables[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.to_dict() == (other.to_dict() if isinstance(other, Config) else dict(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __copy__(self) -> Config:
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> Config:
        return self

    validate_tables = None
    """Set by ``config.core``: the function that validates a pickled ``Config``'s tables again when
    it is read back (``core.unpickled_config``), as any config from outside."""

    def __reduce__(self):
        return (type(self).validate_tables, (self.to_dict(),))

    def __repr__(self) -> str:
        return f"Config(data={self.data.name!r}, model=..., train=..., run={self.run.dir!r})"


__all__ = ["Component", "Config", "ModelSettings", "PhaseSettings", "RunSettings", "TrainSettings"]
