"""The benchmark engine: datasets -> defense -> attack -> verify -> results -> stats -> tables."""

__version__ = "0.1.0"
