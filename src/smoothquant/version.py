"""The package version, in a module of its own: the checkpoint writer and the layer-by-layer
driver record it without importing the package root (which sits above them)."""

__version__ = "0.1.0"  # = pyproject.toml's version
