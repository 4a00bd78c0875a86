"""Defenses behind one ``predict`` contract (see :mod:`defenses.base`) and their registry."""

from defenses.base import Defense
from defenses.registry import get_defense, list_defenses, register

__all__ = ["Defense", "get_defense", "list_defenses", "register"]
