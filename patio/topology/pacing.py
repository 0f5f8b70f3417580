"""When the next heartbeat comes: jitter, a fresh phase after a registration, failure backoff.

Pure functions of the settings, a failure count and a random fraction (sans-IO, no
clock): the heartbeat thread asks them for a delay and waits it out.

Fleet behaviour (1,000 pods must not beat together): after every registration the next
beat comes at a uniformly random point of the interval, later beats every
``interval * uniform(1 - jitter, 1]``; failures back off exponentially with "equal
jitter" (``uniform(d/2, d)``), ``d`` capped at the interval; a 401/403 waits a whole
(jittered) interval, since a wrong key does not fix itself.  Jitter 0 removes all
randomness (the bench's baseline, and the unit tests' fixed schedule).
"""

import os
from typing import Callable

from patio.topology.settings import TopologySettings

# First retry delay after a failed router call; doubles up to the heartbeat interval.
BACKOFF_START = 1.0
# A beat right after a registration never comes sooner than this fraction of the interval.
MIN_PHASE = 0.05
# The doubling stops here (2**16 steps is far past any interval; the bound keeps it an int).
MAX_DOUBLINGS = 16


def urandom_fraction() -> float:
    """Uniform in [0, 1) from os.urandom: the ``random`` module would load hashlib on 3.8."""
    return int.from_bytes(os.urandom(7), "big") / float(1 << 56)


def beat_delay(settings: TopologySettings, rand: Callable[[], float], posted: bool) -> float:
    """The wait after a beat that succeeded (or found the engine down, or was refused a key)."""
    interval, jitter = settings.heartbeat_interval, settings.heartbeat_jitter
    if jitter <= 0:
        return interval
    if posted:  # a fresh phase, so pods registered together spread over the interval at once
        return interval * max(rand(), MIN_PHASE)
    return interval * (1.0 - jitter * rand())


def backoff(settings: TopologySettings, rand: Callable[[], float], failures: int) -> float:
    """The wait after the ``failures``-th failure in a row: 1, 2, 4 ... s, capped at the interval."""
    ceiling = min(settings.heartbeat_interval, BACKOFF_START * 2 ** min(failures - 1, MAX_DOUBLINGS))
    if settings.heartbeat_jitter <= 0:
        return ceiling
    return ceiling * (0.5 + 0.5 * rand())
