"""convattn's version, importable from any layer of the package."""

__version__ = "0.1.0"
