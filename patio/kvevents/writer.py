"""The bridge's Redis side: reduced batches -> pipelined commands in Kthena's layout; clears; refresh.

Runs in the bridge thread on its one Redis connection.  Events are counted as applied
only after Redis answered.  A dead connection raises ``PeerDown`` / ``RedisDown``; a
server that answers but refuses writes (a replica's ``-READONLY``, ``-OOM``,
``-NOPERM``...) raises ``RedisRejected``: the connection is fine, the writes are not,
and the bridge shows ``redis_rejecting`` until a write goes through.  A per-key error
(``-WRONGTYPE`` on a key someone else owns) is counted and reported, not a state.
Checks ``stopping()`` before every write: after shutdown began, nothing more is written.

Work is bounded per round trip: at most ``PIPELINE_COMMANDS`` commands go in one
pipeline, so a 200k-block batch is 200 pipelines, each answered within the timeout, and
the GIL is free while Redis answers.
"""

import logging
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from patio.kvevents import layout as lay
from patio.kvevents import resp
from patio.kvevents.compact import OP_CLEAR, OP_REMOVE, OP_STORE, Compact
from patio.kvevents.metrics import BridgeMetrics
from patio.kvevents.redis_client import RedisConnection

log = logging.getLogger("patio.kvevents")

# Commands sent in one pipeline at most (a replay of 10 000 batches, or one huge batch, goes in slices).
PIPELINE_COMMANDS = 2000
# SCAN's COUNT hint when clearing or refreshing (bounds the server's work per round).
SCAN_COUNT = 1000
# Error codes that mean "this server takes no writes now", not "this key is wrong".
REJECTING_CODES = frozenset(
    {"READONLY", "OOM", "NOPERM", "MISCONF", "NOAUTH", "LOADING", "MASTERDOWN", "BUSY", "CLUSTERDOWN", "NOREPLICAS"}
)
_TYPES = ("BlockStored", "BlockRemoved", "AllBlocksCleared", "other")


class RedisDown(Exception):
    pass


class RedisRejected(Exception):
    """Redis answered, but refused the writes: ``message`` is its error reply."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RedisWriter:
    def __init__(
        self,
        layout: lay.Layout,
        cache: lay.HashCache,
        metrics: BridgeMetrics,
        clock: Callable[[], float],
        stopping: Callable[[], bool],
        note_error: Callable[..., None],
    ) -> None:
        self.layout = layout
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self.stopping = stopping
        self.note_error = note_error
        self.conn: Optional[RedisConnection] = None
        # True right after a clear, until the next write: a second clear would find nothing.
        self.pod_clean = False
        self.applied_seq: Optional[int] = None  # last seq Redis acknowledged
        self.last_event_ts: Optional[float] = None
        self.last_applied_at: Optional[float] = None
        self._unlink = "UNLINK"  # DEL on a server older than 4.0

    # -- one round trip ----------------------------------------------------------------------------
    def _connection(self) -> RedisConnection:
        if self.stopping():
            raise RedisDown("stopping: no more writes")
        if self.conn is None:
            raise RedisDown("redis not connected")
        return self.conn

    def pipeline(self, commands: Sequence[Sequence[resp.Arg]]) -> List[object]:
        conn = self._connection()
        return self._checked(conn.pipeline(commands), conn)

    def _send(self, commands: resp.Commands, conn: Optional[RedisConnection] = None) -> List[object]:
        if not commands.count:
            return []
        conn = conn or self._connection()
        self.pod_clean = False
        return self._checked(conn.send(commands.data(), commands.count), conn)

    def _checked(self, replies: List[object], conn: RedisConnection) -> List[object]:
        errors = [r for r in replies if isinstance(r, resp.ReplyError)]
        if not errors:
            return replies
        self.metrics.redis_errors.inc(amount=float(len(errors)))
        if self._unlink == "UNLINK" and any("unknown command" in e.message.lower() for e in errors):
            self._unlink = "DEL"  # a server before 4.0; the mapping keys left behind expire on their own
            errors = [e for e in errors if "unknown command" not in e.message.lower()]
            if not errors:
                return replies
        first = errors[0]
        if first.code in REJECTING_CODES or len(errors) == len(replies):
            raise RedisRejected(first.message[:300])
        self.note_error("redis_reply", f"redis error reply: {first.message}"[:300])
        return replies

    # -- applying batches ------------------------------------------------------------------------------
    def flush(self, run: Sequence[Compact]) -> None:
        """Write ``run`` (consecutive batches) in pipelines; metrics count after Redis answered."""
        if not run:
            return
        layout, cache = self.layout, self.cache
        commands = resp.Commands()
        done: List[Compact] = []
        stamp = lay.bulk(str(int(self.clock())))
        for item in run:
            resolved = self._resolve(item, commands, done)
            if resolved is not None:
                commands, done = resp.Commands(), []
            else:
                resolved = {}
            words = item.words
            models = item.models
            i, end = 0, len(words)
            while i < end:
                op = words[i]
                if op == OP_STORE:
                    model = models[words[i + 1]]
                    n = words[i + 2]
                    i += 3
                    for _ in range(n):
                        engine_hash, std = item.engine_hash(words[i]), words[i + 1]
                        i += 2
                        cache.put(engine_hash, std, model)
                        commands.add_encoded(layout.store(engine_hash, std, model, stamp), 2)
                        if commands.count >= PIPELINE_COMMANDS:
                            self._deliver(commands, done)
                            commands, done = resp.Commands(), []
                elif op == OP_REMOVE:
                    n = words[i + 1]
                    i += 2
                    keys: List[resp.Arg] = []
                    for _ in range(n):
                        engine_hash = item.engine_hash(words[i])
                        i += 1
                        entry = cache.get(engine_hash) or resolved.get(engine_hash)
                        if entry is None:
                            continue  # never stored by this pod as far as Redis knows (as Kthena: nothing to delete)
                        commands.add_encoded(layout.unclaim(*entry), 1)
                        keys.append(layout.mapping_key(engine_hash))
                        cache.pop(engine_hash)
                    if keys:
                        commands.add(self._unlink, *keys)
                    if commands.count >= PIPELINE_COMMANDS:
                        self._deliver(commands, done)
                        commands, done = resp.Commands(), []
                elif op == OP_CLEAR:
                    i += 1
                    self._deliver(commands, done)
                    commands, done = resp.Commands(), []
                    self.clear_pod("all_blocks_cleared")
                else:  # pragma: no cover - words are built by compact.reduce only
                    raise ValueError(f"bad operation {op} in batch {item.seq}")
            done.append(item)
            if commands.count >= PIPELINE_COMMANDS:
                self._deliver(commands, done)
                commands, done = resp.Commands(), []
        self._deliver(commands, done)

    def _resolve(
        self, item: Compact, commands: resp.Commands, done: List[Compact]
    ) -> Optional[Dict[int, Tuple[int, Optional[str]]]]:
        """Std hashes of removed blocks this process forgot (read back from their mapping keys);
        None when every removal is known (nothing was sent)."""
        missing = unresolved_removals(item, self.cache)
        if not missing:
            return None
        self._deliver(commands, done)
        found: Dict[int, Tuple[int, Optional[str]]] = {}
        for start in range(0, len(missing), SCAN_COUNT):
            part = missing[start : start + SCAN_COUNT]
            (values,) = self.pipeline([("MGET", *[self.layout.mapping_key(h) for h in part])])
            if isinstance(values, list):
                for engine_hash, raw in zip(part, values):
                    parsed = lay.parse_mapping_value(raw)
                    if parsed is not None:
                        found[engine_hash] = parsed
        return found

    def _deliver(self, commands: resp.Commands, done: List[Compact]) -> None:
        self._send(commands)
        if not done:
            return
        wrote = self.clock()
        metrics = self.metrics
        for item in done:
            for kind, count in zip(_TYPES, item.applied):
                if count:
                    metrics.applied.inc(kind, amount=float(count))
            for kind, count in zip(_TYPES, item.skipped):
                if count:
                    metrics.skipped.inc(kind, amount=float(count))
            if item.live and item.ts is not None:
                metrics.lag.observe(max(wrote - item.ts, 0.0))
            if item.ts is not None:
                self.last_event_ts = item.ts
            self.applied_seq = item.seq
        self.last_applied_at = wrote

    # -- clearing the pod --------------------------------------------------------------------------------
    def clear_pod(self, reason: str) -> None:
        self.clear_pod_on(self._connection(), reason, None)

    def clear_pod_on(self, conn: RedisConnection, reason: str, deadline: Optional[float]) -> None:
        """Remove this pod from every matrix key its mapping keys name, then the mapping keys
        (SCAN, MGET, HDEL, UNLINK: about one command per block of this pod, whatever the model's size)."""
        layout = self.layout
        started = time.monotonic()
        fields = keys = 0
        for page in conn.scan(layout.mapping_pattern(), SCAN_COUNT):
            if deadline is not None and time.monotonic() > deadline:
                raise RedisDown("shutdown budget spent while clearing the pod")
            (values,) = self._checked(conn.pipeline([("MGET", *page)]), conn)
            commands = resp.Commands()
            if isinstance(values, list):
                for raw in values:
                    parsed = lay.parse_mapping_value(raw)
                    if parsed is not None:
                        commands.add_encoded(layout.unclaim(*parsed), 1)
            commands.add(self._unlink, *page)
            replies = self._checked(conn.send(commands.data(), commands.count), conn)
            fields += sum(1 for r in replies[:-1] if r == 1)
            keys += replies[-1] if isinstance(replies[-1], int) else 0
        self.cache.clear()
        self.pod_clean = True
        self.metrics.clears.inc(reason)
        self.note_error(
            "clear",
            f"pod {layout.pod} cleared ({reason}): {fields} matrix fields, {keys} mapping keys"
            f" in {time.monotonic() - started:.3f}s",
            level=logging.INFO,
        )

    # -- keeping long-cached blocks fresh ------------------------------------------------------------------
    def refresh_page(self, cursor: bytes, older_than: float) -> bytes:
        """One SCAN page of this pod's mapping keys: blocks written more than ``older_than``
        seconds ago get a new timestamp in their matrix field and a new expiry.  Kthena's router
        deletes fields older than 24 h (``kvcache_aware.go`` ``gcStaleFields``) and the mapping
        keys expire after ``mapping_ttl``: a block the engine keeps for days must be rewritten.
        Returns the next cursor (``b"0"``: the walk is over)."""
        conn = self._connection()
        layout = self.layout
        keys, cursor = conn.scan_page(layout.mapping_pattern(), SCAN_COUNT, cursor)
        if not keys:
            return cursor
        replies = self._checked(conn.pipeline([("MGET", *keys), *[("PTTL", k) for k in keys]]), conn)
        values, ttls = replies[0], replies[1:]
        if not isinstance(values, list):
            return cursor
        limit_ms = (layout.mapping_ttl - older_than) * 1000
        stamp = lay.bulk(str(int(self.clock())))
        commands = resp.Commands()
        refreshed = 0
        for key, raw, ttl in zip(keys, values, ttls):
            parsed = lay.parse_mapping_value(raw)
            if parsed is None or not isinstance(ttl, int) or ttl == -2 or (ttl >= 0 and ttl > limit_ms):
                continue  # gone, or written recently enough
            std, model = parsed
            commands.add_encoded(layout.claim(std, model, stamp), 1)
            commands.add("EXPIRE", key, str(layout.mapping_ttl))
            refreshed += 1
        self._send(commands, conn)
        if refreshed:
            self.metrics.refreshed.inc(amount=float(refreshed))
        return cursor


def unresolved_removals(item: Compact, cache: lay.HashCache) -> List[int]:
    """Engine hashes ``item`` removes whose std hash is neither cached nor stored earlier in it."""
    words = item.words
    stored: set = set()
    missing: List[int] = []
    i, end = 0, len(words)
    while i < end:
        op = words[i]
        if op == OP_STORE:
            n = words[i + 2]
            stored.update(item.engine_hash(words[j]) for j in range(i + 3, i + 3 + 2 * n, 2))
            i += 3 + 2 * n
        elif op == OP_REMOVE:
            n = words[i + 1]
            for j in range(i + 2, i + 2 + n):
                engine_hash = item.engine_hash(words[j])
                if engine_hash not in stored and cache.get(engine_hash) is None:
                    missing.append(engine_hash)
            i += 2 + n
        else:
            stored.clear()
            i += 1
    return list(dict.fromkeys(missing))
