"""Name -> class registries for methods, backbones, data sources and scenarios.

A component becomes available under a name with a decorator, as in timm::

    @register_method("simplecil")
    class SimpleCIL(Learner): ...

Look-ups of unknown names raise a ``KeyError`` that lists the known names and the
closest match, so a typo in a config says what was meant.

Methods outside the package register the same way, from a module the registry imports:
an installed distribution names it in the entry-point group ``retaincl.methods``
(:data:`ENTRY_POINT_GROUP`; the value a module, or a ``Learner`` class registered under
the entry point's name), and ``retaincl --import MODULE`` imports a module or ``.py`` file
for one command (docs/adding_a_method.md shows both).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "retaincl.methods"


class Registry:
    """A named table of components of one kind (``method``, ``backbone``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            if isinstance(obj, type) and self.kind == "method":
                obj.name = name  # a learner knows the name it is registered under
            return obj

        return decorator

    def get(self, name: str) -> Any:
        _import_builtins()
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        _import_builtins()
        return sorted(self._items)

    def items(self) -> list[tuple[str, Any]]:
        _import_builtins()
        return sorted(self._items.items())

    def __contains__(self, name: str) -> bool:
        _import_builtins()
        return name in self._items


METHODS = Registry("method")
BACKBONES = Registry("backbone")
DATA_SOURCES = Registry("data source")
SCENARIOS = Registry("scenario")

register_method = METHODS.register
register_backbone = BACKBONES.register
register_data_source = DATA_SOURCES.register
register_scenario = SCENARIOS.register

_loaded = False


def _import_builtins() -> None:
    """Import the packages whose modules register the built-in components."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from retaincl.registry_imports import import_submodules

    for package in ("retaincl.data", "retaincl.backbones", "retaincl.methods"):
        import_submodules(package)
    load_entry_points()


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load the installed distributions' methods (entry points of ``group``); returns the
    entry points' names. One that fails to import is a warning naming it and its error,
    so a broken plug-in does not stop runs of the other methods (asking for its method
    then says that name is unknown)."""
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as err:  # a plug-in's own bug: name it, keep the rest usable
            log.warning("entry point %s = %s (group %s) failed to load: %s: %s", ep.name, ep.value, group,
                        type(err).__name__, err)
            continue
        if isinstance(obj, type) and obj not in METHODS._items.values():
            METHODS.register(ep.name)(obj)
        names.append(ep.name)
    return names
