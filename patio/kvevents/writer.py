"""The bridge's Redis side: batches -> pipelined commands in Kthena's layout, and pod clears.

Runs in the bridge thread on its one Redis connection.  Events are counted as applied
only after Redis answered; an error reply is counted and reported, a dead connection
raises ``net.PeerDown`` / ``RedisDown`` for the bridge to resync.  Checks ``stopping()``
before every write: after shutdown began, nothing more is written.
"""

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from patio.kvevents import events as ev
from patio.kvevents import layout as lay
from patio.kvevents import net, resp
from patio.kvevents.metrics import BridgeMetrics, label

log = logging.getLogger("patio.kvevents")

# Commands sent in one pipeline at most (a replay of 10 000 batches goes in slices).
PIPELINE_COMMANDS = 2000
# SCAN's COUNT hint when clearing a pod (bounds the server's work per round).
SCAN_COUNT = 1000


@dataclass
class Item:
    """One batch with its sequence number; ``live`` when it came on the stream (not a replay)."""

    seq: int
    batch: ev.Batch
    live: bool


class RedisDown(Exception):
    pass


class RedisWriter:
    def __init__(
        self,
        layout: lay.Layout,
        cache: lay.HashCache,
        metrics: BridgeMetrics,
        clock: Callable[[], float],
        stopping: Callable[[], bool],
        note_error: Callable[[str], None],
    ) -> None:
        self.layout = layout
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self.stopping = stopping
        self.note_error = note_error
        self.conn: Optional[net.RedisConnection] = None
        # True right after a clear, until the next write: a second clear would find nothing.
        self.pod_clean = False
        self.applied_seq: Optional[int] = None  # last seq Redis acknowledged
        self.last_event_ts: Optional[float] = None
        self.last_applied_at: Optional[float] = None

    def pipeline(self, commands: List[lay.Command]) -> List[object]:
        if self.stopping():
            raise RedisDown("stopping: no more writes")
        if self.conn is None:
            raise RedisDown("redis not connected")
        replies = self.conn.pipeline(commands)
        errors = [r for r in replies if isinstance(r, resp.ReplyError)]
        if errors:
            self.metrics.redis_errors.inc(amount=float(len(errors)))
            self.note_error(f"redis error reply: {errors[0].message}"[:300])
        return replies

    def flush(self, run: Sequence[Item]) -> None:
        """Write ``run`` (consecutive batches) in pipelines; metrics count after Redis answered."""
        if not run:
            return
        commands: List[lay.Command] = []
        done: List[Item] = []
        now = int(self.clock())
        for item in run:
            events = item.batch.events
            misses = lay.unresolved_removals(events, self.cache)
            resolved: Dict[int, int] = {}
            if misses:
                self._send(commands, done)
                commands, done = [], []
                resolved = self._lookup(misses)
            for event in events:
                if isinstance(event, ev.BlockStored):
                    try:
                        commands.extend(lay.store_commands(self.layout, event, self.cache, now))
                    except ValueError as exc:
                        self.metrics.malformed.inc("event")
                        self.note_error(f"message {item.seq}: BlockStored: {exc}")
                elif isinstance(event, ev.BlockRemoved):
                    commands.extend(lay.remove_commands(self.layout, event, self.cache, resolved))
                elif isinstance(event, ev.AllBlocksCleared):
                    self._send(commands, done)
                    commands, done = [], []
                    self.clear_pod("all_blocks_cleared")
                elif isinstance(event, ev.Malformed):
                    self.metrics.malformed.inc("event")
            done.append(item)
            if len(commands) >= PIPELINE_COMMANDS:
                self._send(commands, done)
                commands, done = [], []
        self._send(commands, done)

    def _send(self, commands: List[lay.Command], done: List[Item]) -> None:
        if commands:
            self.pod_clean = False
        self.pipeline(commands)
        wrote = self.clock()
        for item in done:
            for event in item.batch.events:
                kind = label(event.type)
                if isinstance(event, (ev.Unknown, ev.Malformed)):
                    self.metrics.skipped.inc(kind)
                else:
                    self.metrics.applied.inc(kind)
            if item.live:
                self.metrics.lag.observe(max(wrote - item.batch.ts, 0.0))
            self.last_event_ts = item.batch.ts
            self.applied_seq = item.seq
        if done:
            self.last_applied_at = wrote

    def _lookup(self, engine_hashes: List[int]) -> Dict[int, int]:
        replies = self.pipeline([("GET", self.layout.mapping_key(h)) for h in engine_hashes])
        found: Dict[int, int] = {}
        for engine_hash, reply in zip(engine_hashes, replies):
            if isinstance(reply, bytes) and reply.isdigit():
                found[engine_hash] = int(reply)
        return found

    def clear_pod(self, reason: str) -> None:
        if self.conn is None:
            raise RedisDown("redis not connected")
        if self.stopping():
            raise RedisDown("stopping")
        self.clear_pod_on(self.conn, reason, None)

    def clear_pod_on(self, conn: net.RedisConnection, reason: str, deadline: Optional[float]) -> None:
        """HDEL the pod from every matrix key of the model, DEL its mapping keys (SCAN, never KEYS)."""
        layout = self.layout
        started = time.monotonic()
        fields = keys = 0

        def check() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise RedisDown("shutdown budget spent while clearing the pod")

        for page in conn.scan(layout.matrix_pattern(), SCAN_COUNT):
            check()
            replies = conn.pipeline([("HDEL", key, layout.pod) for key in page])
            fields += sum(1 for r in replies if r == 1)
        for page in conn.scan(layout.mapping_pattern(), SCAN_COUNT):
            check()
            replies = conn.pipeline([("DEL", *page)])
            keys += replies[0] if isinstance(replies[0], int) else 0
        self.cache.clear()
        self.pod_clean = True
        self.metrics.clears.inc(reason)
        log.info(
            "kv events: pod %s cleared (%s): %d matrix fields, %d mapping keys in %.3fs",
            layout.pod,
            reason,
            fields,
            keys,
            time.monotonic() - started,
        )
