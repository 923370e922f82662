"""The package version, shared by the Python files and checked against the compiled module."""

__version__ = "0.1.0"
