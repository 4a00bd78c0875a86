"""Attack registry: a decorator for built-ins plus entry-point discovery for plugins.

Third-party packages expose attacks through the entry-point group ``bench.attacks``; each entry
point names a :class:`harness.attacks.base.Attack` subclass (or a module that registers attacks
when imported). A plugin that fails to import, or whose declaration is invalid, is recorded as
*broken* with its error and does not stop the other attacks from working. Duplicate names are an
error. ``examples/plugin-attack/`` is a complete plugin.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from harness.attacks.base import Attack
from harness.errors import BenchUserError

ENTRY_POINT_GROUP = "bench.attacks"

_BUILTIN_MODULES = (
    "harness.attacks.foolbox_attacks", "harness.attacks.deepfool", "harness.attacks.boundary", "harness.attacks.estimation",
    "harness.attacks.square", "harness.attacks.transfer", "harness.attacks.autoattack",
)

_REGISTRY: dict[str, Attack] = {}
_ORIGIN: dict[str, str] = {}
_BROKEN: dict[str, str] = {}
_loaded = False


class DuplicateAttackError(RuntimeError):
    """Two attacks claim the same registry name."""


def register(cls: type | None = None, *, origin: str = "built-in"):
    """Class decorator adding an :class:`Attack` subclass (one instance of it) to the registry under ``cls.name``."""

    def deco(c: type) -> type:
        if not (isinstance(c, type) and issubclass(c, Attack)):
            raise TypeError(f"{c!r} is not a harness.attacks.base.Attack subclass")
        c.check_declaration()
        key = c.name
        if key in _REGISTRY and type(_REGISTRY[key]) is not c:
            raise DuplicateAttackError(f"attack name {key!r} is registered twice: {_ORIGIN[key]} and {origin} ({c.__module__}.{c.__qualname__})")
        if key not in _REGISTRY:
            _REGISTRY[key] = c()
            _ORIGIN[key] = origin
        return c

    return deco(cls) if cls is not None else deco


def _load_plugins() -> None:
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        origin = f"plugin {ep.name} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            _BROKEN[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(obj, type) and issubclass(obj, Attack):
            try:
                register(obj, origin=origin)
            except (DuplicateAttackError, ValueError, TypeError) as exc:
                _BROKEN[ep.name] = str(exc)
        # a module entry point registers its attacks itself on import


def ensure_loaded() -> None:
    """Import the built-in attack modules and discover plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    _load_plugins()


def list_attacks() -> dict[str, Attack]:
    """All registered attacks (built-ins first, in the order of their modules; then plugins by name)."""
    ensure_loaded()
    return dict(_REGISTRY)


def broken_plugins() -> dict[str, str]:
    """Attack plugins that failed to load, with their error."""
    ensure_loaded()
    return dict(_BROKEN)


def origin_of(name: str) -> str:
    """Where a registered attack came from ("built-in" or the plugin entry point)."""
    ensure_loaded()
    return _ORIGIN[name]


def find_attack(name: str) -> Attack | None:
    """The registered attack called ``name``, or None (result files may hold attacks of plugins not installed here)."""
    if name not in _REGISTRY:
        ensure_loaded()
    return _REGISTRY.get(name)


def get_attack(name: str) -> Attack:
    """Look up an attack by name; unknown names raise a one-line :class:`BenchUserError`."""
    attack = find_attack(name)
    if attack is not None:
        return attack
    if name in _BROKEN:
        raise BenchUserError(f"attack {name!r} is a plugin that failed to load: {_BROKEN[name]}")
    raise BenchUserError(f"unknown attack {name!r}; known: {', '.join(sorted(_REGISTRY))} (see `bench list attacks`)")
