"""Valid values of config keys, declared where the keys are defined.

A component factory's keyword-only arguments are its config keys. Their valid values are declared
in the signature with ``typing.Annotated`` (or ``typing.Literal`` for a fixed set of strings), and
the config validator reads them, so a third-party component gets the same checks, and the same
one-line errors, as the built-ins::

    from typing import Annotated, Literal
    from vaeflow_cli.config.constraints import Range

    def __init__(self, *, image_shape, depth: Annotated[int, Range(1, 1024)] = 32,
                 norm: Literal["batch", "group", "none"] = "batch", ...): ...

Every float key must be finite and no string key may hold a NUL byte (checked for all keys,
declared or not). This module imports
nothing heavy (no torch), so ``vaeflow config show`` stays fast.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Bounds of an int or float key: ``Range(1)`` is >= 1, ``Range(1, 1024)`` is in [1, 1024],
    ``Range(gt=0, lt=0.5)`` is in the open interval (0, 0.5)."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None

    def check(self, value: Any) -> str | None:
        """None when ``value`` is inside, else what it must be (``"must be >= 1"``)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # the type check reports it
        parts = [f"{op} {_num(bound)}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if bound is not None]
        ok = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        return None if ok else "must be " + " and ".join(parts)


@dataclass(frozen=True)
class OneOf:
    """A key whose value is one of ``values`` (``typing.Literal[...]`` declares the same)."""

    values: tuple

    def check(self, value: Any) -> str | None:
        if value in self.values:
            return None
        return "must be one of " + ", ".join(_show(v) for v in self.values)


@dataclass(frozen=True)
class Check:
    """Any other rule: ``predicate(value)`` true means valid; ``must`` says what it must be
    (``Check(lambda v: v % 2 == 0, "must be even")``)."""

    predicate: Callable[[Any], bool]
    must: str

    def check(self, value: Any) -> str | None:
        try:
            return None if self.predicate(value) else self.must
        except Exception:  # noqa: BLE001 -- a value the predicate cannot handle is not valid
            return self.must


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _show(v: Any) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def finite_problem(value: Any) -> str | None:
    """Every float key (and every float in a list) must be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, (list, tuple)):
        for v in value:
            problem = finite_problem(v)
            if problem:
                return problem
    return None


def constraints_from_annotation(annotation: Any) -> list:
    """The constraint objects an annotation declares: ``Annotated`` metadata that have a
    ``check`` method, and ``Literal[...]`` as OneOf (also inside ``Annotated`` and ``Optional``)."""
    out: list = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        out += constraints_from_annotation(base)
        out += [m for m in meta if callable(getattr(m, "check", None))]
    elif origin is typing.Literal:
        out.append(OneOf(tuple(typing.get_args(annotation))))
    return out


def declared_constraints(factory: Callable[..., Any]) -> dict[str, list]:
    """{keyword: [constraints]} read from ``factory``'s parameter annotations (its ``__init__`` for
    a class). Each annotation is evaluated on its own in the factory's module (string annotations
    under ``from __future__ import annotations`` included), so a return type imported only under
    ``TYPE_CHECKING`` does not hide the parameters' constraints; an annotation that cannot be
    evaluated declares nothing."""
    target = factory.__init__ if isinstance(factory, type) else factory
    target = inspect.unwrap(target)
    raw = getattr(target, "__annotations__", None) or {}
    namespace = dict(getattr(target, "__globals__", {}))
    out: dict[str, list] = {}
    for name, annotation in raw.items():
        if name == "return":
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 -- the factory's own annotation, in its own module
            except Exception:  # noqa: BLE001 -- a name imported only for type checkers
                continue
        found = constraints_from_annotation(annotation)
        if found:
            out[name] = found
    return out


def problem(value: Any, constraints: list) -> str | None:
    """The first rule ``value`` breaks (finiteness, no NUL byte in a string, then the declared
    constraints), or None."""
    found = finite_problem(value)
    if found:
        return found
    if isinstance(value, str) and "\x00" in value:
        return "must not contain a NUL byte (no path or name can hold one)"
    for c in constraints:
        found = c.check(value)
        if found:
            return found
    return None
