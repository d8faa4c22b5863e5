"""Package namespaces that import their names on first use (PEP 562).

``import satseg.training`` must not load torch, SimpleITK or a module the caller does not use; a package
lists which of its modules defines each public name, and :func:`lazy_exports` gives it the module
``__getattr__`` and ``__all__`` that import that module when the name is first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """The ``(__getattr__, __all__)`` of ``package`` exporting ``names`` from each ``package.<module>``.

    Example: ``__getattr__, __all__ = lazy_exports(__name__, {"io": ["read_image"], "store": ["load_plan"]})``.
    """
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module `{package}` has no attribute `{name}`")
        return getattr(importlib.import_module(f"{package}.{home[name]}"), name)

    return __getattr__, list(home)
