"""Attack registry: a decorator for built-ins plus entry-point discovery for plugins.

Third-party packages expose attacks through the entry-point group ``bench.attacks``; each entry
point names a :class:`harness.attacks.base.Attack` subclass (or a module that registers attacks
when imported). A plugin that fails to import, or whose declaration is invalid, is recorded as
*broken* with its error and does not stop the other attacks from working. Duplicate names are an
error. ``examples/plugin-attack/`` is a complete plugin.
"""

from __future__ import annotations

from benchcore.plugins import DuplicateNameError, PluginRegistry
from harness.attacks.base import Attack
from harness.errors import BenchUserError

ENTRY_POINT_GROUP = "bench.attacks"

_BUILTIN_MODULES = (
    "harness.attacks.foolbox_attacks", "harness.attacks.deepfool", "harness.attacks.boundary", "harness.attacks.estimation",
    "harness.attacks.square", "harness.attacks.transfer", "harness.attacks.autoattack",
)


class DuplicateAttackError(DuplicateNameError):
    """Two attacks claim the same registry name."""


_PLUGINS = PluginRegistry("attack", group=ENTRY_POINT_GROUP, builtin_modules=_BUILTIN_MODULES, duplicate_error=DuplicateAttackError)
_REGISTRY: dict[str, Attack] = _PLUGINS.entries
_ORIGIN: dict[str, str] = _PLUGINS.origin
_BROKEN: dict[str, str] = _PLUGINS.broken


def register(cls: type | None = None, *, origin: str = "built-in"):
    """Class decorator adding an :class:`Attack` subclass (one instance of it) to the registry under ``cls.name``."""

    def deco(c: type) -> type:
        if not (isinstance(c, type) and issubclass(c, Attack)):
            raise TypeError(f"{c!r} is not a harness.attacks.base.Attack subclass")
        c.check_declaration()
        _PLUGINS.add(c.name, c, _REGISTRY.get(c.name) or c(), origin=origin)  # another class of that name: raises
        return c

    return deco(cls) if cls is not None else deco


def ensure_loaded() -> None:
    """Import the built-in attack modules and discover plugins (once)."""
    _PLUGINS.ensure_loaded(register, lambda: Attack)


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
