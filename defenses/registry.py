"""Defense registry: a decorator for built-ins plus entry-point discovery for plugins.

Third-party packages expose defenses through the entry-point group ``bench.defenses``; each entry
point names a :class:`defenses.base.Defense` subclass (or a module that registers defenses when
imported). A plugin that fails to import is recorded as *broken* with its error and does not stop
the other defenses from working.

A *family* is a prefix whose names are resolved on demand: ``robustbench:<Name>`` builds the
defense for one RobustBench model-zoo entry (:mod:`defenses.robustbench`). A family registers a
resolver ``name -> Defense subclass`` with :func:`register_family`; ``get_defense("prefix:rest")``
calls it. Family members are not listed by :func:`list_defenses` (they need external weights).
"""

from __future__ import annotations

from typing import Callable

from benchcore.errors import BenchUserError
from benchcore.plugins import DuplicateNameError, PluginRegistry

ENTRY_POINT_GROUP = "bench.defenses"

_BUILTIN_MODULES = ("defenses.cnn", "defenses.abs", "defenses.eabs", "defenses.adversarial", "defenses.binarize", "defenses.smoothing", "defenses.robustbench", "defenses.cvae")



class DuplicateDefenseError(DuplicateNameError):
    """Two defenses claim the same registry name."""


_PLUGINS = PluginRegistry("defense", group=ENTRY_POINT_GROUP, builtin_modules=_BUILTIN_MODULES, duplicate_error=DuplicateDefenseError)
_REGISTRY: dict[str, type] = _PLUGINS.entries
_ORIGIN: dict[str, str] = _PLUGINS.origin
_BROKEN: dict[str, str] = _PLUGINS.broken
_FAMILIES: dict[str, tuple[Callable[[str], type], str]] = {}


def register(cls: type | None = None, *, name: str | None = None, origin: str = "built-in"):
    """Class decorator adding a Defense subclass to the registry under ``cls.name`` (or ``name``)."""

    def deco(c: type) -> type:
        from defenses.base import Defense

        if not (isinstance(c, type) and issubclass(c, Defense)):
            raise TypeError(f"{c!r} is not a defenses.base.Defense subclass")
        key = name or c.name
        if not key:
            raise ValueError(f"{c.__name__} has no registry name (set the class attribute `name`)")
        if key != c.name:
            raise ValueError(f"registry name {key!r} differs from {c.__name__}.name={c.name!r}")
        _PLUGINS.add(key, c, c, origin=origin)
        return c

    return deco(cls) if cls is not None else deco


def register_family(prefix: str, resolver: Callable[[str], type], *, description: str = "") -> None:
    """Resolve names ``<prefix>:<rest>`` with ``resolver(rest)`` (a Defense subclass whose ``name`` is the full name)."""
    if not prefix.isidentifier():
        raise ValueError(f"family prefix must be an identifier, got {prefix!r}")
    if prefix in _FAMILIES and _FAMILIES[prefix][0] is not resolver:
        raise DuplicateDefenseError(f"defense family {prefix!r} is registered twice")
    _FAMILIES[prefix] = (resolver, description)


def list_families() -> dict[str, str]:
    """Registered name families (``prefix -> description``)."""
    ensure_loaded()
    return {k: v[1] for k, v in sorted(_FAMILIES.items())}


def _defense_base() -> type:
    from defenses.base import Defense

    return Defense


def ensure_loaded() -> None:
    """Import the built-in defense modules and discover plugins (once)."""
    _PLUGINS.ensure_loaded(register, _defense_base)


def list_defenses() -> dict[str, type]:
    """All registered defenses, sorted by name."""
    ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


def broken_plugins() -> dict[str, str]:
    """Plugins that failed to load, with their error."""
    ensure_loaded()
    return dict(_BROKEN)


def origin_of(name: str) -> str:
    """Where a registered defense came from ("built-in" or the plugin entry point)."""
    ensure_loaded()
    return _ORIGIN[name]


def get_defense(name: str) -> type:
    """Look up a defense class by name; unknown names raise a one-line :class:`BenchUserError`."""
    ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _FAMILIES:
        return _FAMILIES[prefix][0](rest)
    if name in _BROKEN:
        raise BenchUserError(f"defense {name!r} is a plugin that failed to load: {_BROKEN[name]}")
    families = "".join(f", {p}:<Name>" for p in sorted(_FAMILIES))
    raise BenchUserError(f"unknown defense {name!r}; known: {', '.join(sorted(_REGISTRY))}{families} (see `bench list defenses`)")
