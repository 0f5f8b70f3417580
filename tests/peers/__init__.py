"""Real peers the tests start as processes (router generations from PyPI, each in its own venv)."""
