"""What the bridge shows: its state (one name, decided by a table of conditions) and its page.

The state is the first row whose condition holds, so the order is the precedence: an
engine known down says so whatever else is wrong; a connected pair of peers that Redis
refuses writes to is ``redis_rejecting``, not ``live``.  No IO.
"""

import time
from typing import Any, Callable, Dict, NamedTuple, Tuple


class Conditions(NamedTuple):
    engine_down: bool
    publisher_connected: bool
    redis_connected: bool
    rejecting: bool
    resync_pending: bool


# (state, condition), in precedence order; the last row always holds.
STATE_TABLE: Tuple[Tuple[str, Callable[[Conditions], bool]], ...] = (
    ("engine_down", lambda c: c.engine_down),
    ("connecting_publisher", lambda c: not c.publisher_connected),
    ("redis_down", lambda c: not c.redis_connected),
    ("redis_rejecting", lambda c: c.rejecting),
    ("resyncing", lambda c: c.resync_pending),
    ("live", lambda c: True),
)


def state_of(conditions: Conditions) -> str:
    return next(state for state, holds in STATE_TABLE if holds(conditions))


def snapshot(bridge: Any) -> Dict[str, Any]:
    """``GET /v1/kv-events`` for one stream (the password is never part of it)."""
    settings = bridge.settings
    source = bridge.source
    backlog = bridge.sync.backlog
    writer = bridge.writer
    return {
        "enabled": True,
        "state": bridge.state,
        "engine": settings.engine,
        "pod": settings.pod,
        "model": settings.model,
        "data_parallel_rank": bridge.rank,
        "endpoint": source.endpoint,
        "replay_endpoint": source.replay_endpoint,
        "endpoint_source": source.origin,
        "topic": source.topic,
        "redis": settings.redis_where,
        "publisher_connected": bridge.sub is not None,
        "redis_connected": bridge.redis is not None,
        "redis_rejecting": bridge.rejecting or None,
        "engine_down": bridge.engine_down,
        "last_seq": writer.applied_seq,
        "last_event_ts": writer.last_event_ts,
        "last_applied_at": writer.last_applied_at,
        "pending_resync": bridge.sync.need_resync,
        "publisher_lost_for": None if bridge.lost_at is None else round(time.monotonic() - bridge.lost_at, 3),
        "backlog": len(backlog),
        "backlog_limit": settings.backlog,
        "backlog_bytes": backlog.nbytes,
        "backlog_bytes_limit": settings.backlog_bytes,
        "hash_cache": len(writer.cache),
        "last_error": bridge.last_error,
    }
