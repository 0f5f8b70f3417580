#!/usr/bin/env python3
"""Run Patio from a source checkout: ``python3 patio.py --port 9091``."""

from patio.cli import run

if __name__ == "__main__":
    run()
