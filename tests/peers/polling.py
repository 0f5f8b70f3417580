"""Waiting for a condition in tests against real peers (no imports of Patio: the bench uses it too)."""

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> Any:
    """``predicate()``'s first truthy value within ``timeout`` seconds, else None.  A peer that
    is not up yet (OSError), answers half a body (ValueError) or lacks a key yet (KeyError)
    counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(step)
    return None
