"""Fake package for Patio's runtime tests (see tests/runtime_engines/fake_server.py)."""
