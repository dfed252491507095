"""The package version (read by the export metadata without importing the package)."""

__version__ = "0.1.0"
