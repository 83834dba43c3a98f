"""The package version, in a module of its own so that every layer may record it without importing the API."""

__version__ = "0.1.0"
