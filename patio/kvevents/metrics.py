"""The KV-event bridge's metrics, one place: the alert rules and dashboard under deploy/ query these names.

Every label set is created at zero so dashboards and alerts see the families before
the first event.  One ``BridgeMetrics`` serves every stream of the pod (one per
data-parallel rank): counters add up, gauges sum over the streams, ``…_state`` counts
the streams in each state (one-hot with one stream).
"""

from typing import Any, List

from patio.kvevents import events as ev
from patio.metrics.registry import Registry

# Lag buckets: a healthy bridge writes within milliseconds of the engine's step.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EVENT_TYPES = (*ev.KNOWN_TYPES, "other")
MALFORMED_REASONS = ("frames", "seq", "payload", "batch", "event", "oversize", "ts")
REPLAY_RESULTS = ("complete", "partial", "error")
# Why a stream was taken for a new one: its sequence went back on the live connection, or
# the replay no longer holds the last batch applied as it was (a restart the connection hid).
RESTART_REASONS = ("backwards", "replay_mismatch")
STATES = (
    "starting",
    "connecting_publisher",
    "redis_down",
    "redis_rejecting",
    "resyncing",
    "engine_down",
    "live",
    "stopped",
)
CLEAR_REASONS = (
    "start",
    "publisher_lost",
    "engine_down",
    "engine_restart",
    "gap",
    "redis_reconnect",
    "backlog_overflow",
    "redis_rejecting",
    "all_blocks_cleared",
    "shutdown",
)


class BridgeMetrics:
    """The bridge's metric names (deploy/ queries them: renaming one breaks an alert), on the shared registry."""

    def __init__(self, registry: Registry) -> None:
        # The bridges (streams) these metrics describe; each adds itself.
        self.streams: List[Any] = []
        self.received = registry.counter(
            "patio_kv_events_received_total", "KV-cache events received from the engine, by type.", ("type",)
        )
        self.applied = registry.counter(
            "patio_kv_events_applied_total", "KV-cache events written to Redis, by type.", ("type",)
        )
        self.skipped = registry.counter(
            "patio_kv_events_skipped_total",
            "KV-cache events not applied (unknown type, duplicate, engine down), by type.",
            ("type",),
        )
        self.malformed = registry.counter(
            "patio_kv_events_malformed_total", "Messages or events that could not be decoded, by reason.", ("reason",)
        )
        self.gaps = registry.counter(
            "patio_kv_events_sequence_gaps_total", "Holes in the engine's sequence numbers (lost messages)."
        )
        self.replays = registry.counter(
            "patio_kv_events_replays_total", "Replay requests to the engine, by result.", ("result",)
        )
        self.redis_errors = registry.counter(
            "patio_kv_events_redis_errors_total", "Redis connection failures and error replies."
        )
        registry.gauge(
            "patio_kv_events_backlog",
            "Event batches waiting for Redis (bounded; overflow means resync).",
            func=lambda: float(sum(len(s.backlog) for s in self.streams)),
        )
        registry.gauge(
            "patio_kv_events_backlog_bytes",
            "Bytes held by the batches waiting for Redis (bounded by PATIO_KV_EVENTS_BACKLOG_BYTES).",
            func=lambda: float(sum(s.backlog.nbytes for s in self.streams)),
        )
        self.backlog_dropped = registry.counter(
            "patio_kv_events_backlog_dropped_total",
            "Batches dropped because the backlog was full (a resync follows).",
        )
        self.restarts = registry.counter(
            "patio_kv_events_stream_restarts_total",
            "Times the engine's stream was taken for a new one (its cache empty), by reason.",
            ("reason",),
        )
        self.rejections = registry.counter(
            "patio_kv_events_redis_rejections_total",
            "Pipelines Redis answered but refused (READONLY, OOM, NOPERM...): state redis_rejecting.",
        )
        self.connects = registry.counter(
            "patio_kv_events_connects_total",
            "Connections made, by peer (the engine's publisher, Redis): a fast rise is a flapping peer.",
            ("peer",),
        )
        self.refreshed = registry.counter(
            "patio_kv_events_refreshed_total",
            "Matrix fields of long-cached blocks rewritten with a new timestamp (and their mapping key's expiry).",
        )
        self.state = registry.gauge(
            "patio_kv_events_state",
            "KV-event streams in each state (1 for the current state of a single stream).",
            ("state",),
        )
        self.lag = registry.histogram(
            "patio_kv_events_lag_seconds",
            "Seconds from an event batch's engine timestamp to its Redis write (live batches).",
            buckets=LAG_BUCKETS,
        )
        self.clears = registry.counter(
            "patio_kv_events_pod_clears_total",
            "Times this pod was cleared from Redis, by reason.",
            ("reason",),
        )
        registry.gauge(
            "patio_kv_events_connected",
            "1 while both the engine's publisher and Redis are connected (every stream).",
            func=lambda: 1.0 if self.streams and all(s.connected for s in self.streams) else 0.0,
        )
        for kind in EVENT_TYPES:
            for counter in (self.received, self.applied, self.skipped):
                counter.inc(kind, amount=0.0)
        for reason in MALFORMED_REASONS:
            self.malformed.inc(reason, amount=0.0)
        for result in REPLAY_RESULTS:
            self.replays.inc(result, amount=0.0)
        for reason in CLEAR_REASONS:
            self.clears.inc(reason, amount=0.0)
        for reason in RESTART_REASONS:
            self.restarts.inc(reason, amount=0.0)
        for peer in ("publisher", "redis"):
            self.connects.inc(peer, amount=0.0)
        for state in STATES:
            self.state.set(0.0, state)

    def moved(self, old: str, new: str) -> None:
        """A stream went from state ``old`` to ``new``."""
        if old != new:
            self.state.dec(old)
            self.state.inc(new)


def label(kind: str) -> str:
    """The ``type`` label: a known event type, else ``other`` (an engine's name never becomes a label)."""
    return kind if kind in ev.KNOWN_TYPES else "other"
