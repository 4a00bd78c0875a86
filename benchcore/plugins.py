"""Registries of named classes with built-in modules and entry-point plugins (defenses, attacks).

A :class:`PluginRegistry` imports its built-in modules (which register themselves with a decorator)
and discovers third-party plugins through one entry-point group, once. An entry point names a
class (registered through the registry's own ``register`` function, which checks it) or a module
that registers its classes when imported. A plugin that fails to import, or that the checks
reject (a duplicate name, a bad declaration), is recorded as *broken* with its error and does not
stop the others from working.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable


class DuplicateNameError(RuntimeError):
    """Two classes claim the same registry name."""


class PluginRegistry:
    """Name -> entry (a class, or an instance of it), with where each came from and the broken plugins."""

    def __init__(self, what: str, *, group: str, builtin_modules: tuple[str, ...], duplicate_error: type[Exception] = DuplicateNameError):
        self.what = what
        self.group = group
        self.builtin_modules = builtin_modules
        self.duplicate_error = duplicate_error
        self.entries: dict[str, Any] = {}
        self.classes: dict[str, type] = {}
        self.origin: dict[str, str] = {}
        self.broken: dict[str, str] = {}
        self.loaded = False

    def add(self, key: str, cls: type, entry: Any, *, origin: str) -> None:
        """Register ``entry`` (``cls`` or an instance of it) under ``key``; the same class again is a no-op."""
        if key in self.entries and self.classes.get(key, self.entries[key]) is not cls:
            raise self.duplicate_error(f"{self.what} name {key!r} is registered twice: {self.origin[key]} and {origin} ({cls.__module__}.{cls.__qualname__})")
        if key not in self.entries:
            self.entries[key], self.classes[key], self.origin[key] = entry, cls, origin

    def ensure_loaded(self, register: Callable[..., Any], base: Callable[[], type]) -> None:
        """Import the built-in modules and discover plugins (once). ``register(cls, origin=...)`` checks
        and adds a plugin class; ``base()`` is the class plugins must derive from."""
        if self.loaded:
            return
        self.loaded = True
        for mod in self.builtin_modules:
            importlib.import_module(mod)
        base_cls = base()
        for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                self.broken[ep.name] = f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(obj, type) and issubclass(obj, base_cls):
                try:
                    register(obj, origin=f"plugin {ep.name} ({ep.value})")
                except (self.duplicate_error, ValueError, TypeError) as exc:
                    self.broken[ep.name] = str(exc)
            # a module entry point registers its classes itself on import
