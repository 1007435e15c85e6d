"""Public names served from their home modules on first use (PEP 562), so that importing a facade
(``vaeflow_cli``, ``vaeflow_cli.plugin_api``) loads neither torch nor numpy. Standard library only."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(module: str, homes: Mapping[str, str | tuple[str, str]], missing: str) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for the facade module ``module``: ``homes`` maps each public name
    to its home module (or to ``(module, attribute)`` under another name); a value is imported once
    and kept in the facade's namespace. An unknown name raises AttributeError ending in ``missing``."""

    def __getattr__(name: str) -> Any:
        target = homes.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}; {missing}")
        home, attr = target if isinstance(target, tuple) else (target, name)
        value = getattr(importlib.import_module(home), attr)
        setattr(sys.modules[module], name, value)
        return value

    def __dir__() -> list[str]:  # the public names, not the facade's own imports
        return sorted(set(getattr(sys.modules[module], "__all__", ())) | set(homes))

    return __getattr__, __dir__
