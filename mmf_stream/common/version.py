"""The library version (one place, imported by the package and the writers)."""

__version__ = "0.7.0"
