"""Patio: a standard-library-only sidecar for LLM inference engines."""

__version__ = "0.1.0"
