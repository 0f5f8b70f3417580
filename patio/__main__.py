"""Zipapp entry: ``python3 patio.pyz --port 9091``."""

from patio.cli import run

if __name__ == "__main__":
    run()
