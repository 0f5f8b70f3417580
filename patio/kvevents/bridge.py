"""The KV-event bridge: the engine's event stream -> Kthena's Redis layout, kept honest.

Runs in one thread of its own (every socket blocking with a timeout; the event
loop only reads ``snapshot()`` and posts control requests).  Beyond Kthena's runtime:

- **Sequence tracking.**  Each message carries a sequence number.  A hole means a
  lost message: the bridge asks the replay endpoint for what it missed.  When the
  hole cannot be filled it *resyncs*.  A sequence that restarts at 0 is a new engine:
  its cache is empty, so the pod's entries go first.
- **Resync** = clear this pod's entries, then apply the engine's replay buffer from
  seq 0, then whatever arrived meanwhile.  A suffix of the history applied to a
  cleared pod can only claim *fewer* blocks than the pod holds, never more; a history
  with a hole applied on top of old state could claim blocks long gone.  So the
  bridge resyncs at start, after the publisher connection drops, after Redis comes
  back, when the backlog overflowed and when the engine is healthy again.
- **Clearing** the pod when the engine goes away (its publisher connection drops,
  the health watch says down, the sequence restarts) and on shutdown.
- **Bounded everything**: backlog while Redis is down (``backlog`` batches; past it
  the backlog is dropped and a resync follows), frames, payloads, replies, the
  engine-hash memory, reconnect backoff.

Redis never claims a cache the pod does not have for longer than it takes to see
the publisher connection drop or the health watch flip.
"""

import logging
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from patio.kvevents import events as ev
from patio.kvevents import layout as lay
from patio.kvevents import net, resp, zmtp
from patio.kvevents.settings import KvEventsSettings
from patio.metrics.registry import Registry

log = logging.getLogger("patio.kvevents")

# Commands sent in one pipeline at most (a replay of 10 000 batches goes in slices).
PIPELINE_COMMANDS = 2000
# Replayed batches written per slice (the rest of a replay is still on the socket, not in memory).
REPLAY_SLICE = 256
# SCAN's COUNT hint when clearing a pod (bounds the server's work per round).
SCAN_COUNT = 1000
# Lag buckets: a healthy bridge writes within milliseconds of the engine's step.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# First reconnect wait; doubles up to ``retry_max``.
RETRY_MIN = 0.1

EVENT_TYPES = (*ev.KNOWN_TYPES, "other")
MALFORMED_REASONS = ("frames", "seq", "payload", "batch", "event", "oversize")
REPLAY_RESULTS = ("complete", "partial", "error")
CLEAR_REASONS = (
    "start",
    "publisher_lost",
    "engine_down",
    "engine_restart",
    "gap",
    "redis_reconnect",
    "backlog_overflow",
    "all_blocks_cleared",
    "shutdown",
)


class BridgeMetrics:
    """The team's fixed metric names (TEAM.md, issue 14), created on the shared registry."""

    def __init__(self, registry: Registry, backlog: Callable[[], float], connected: Callable[[], float]) -> None:
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
            func=backlog,
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
            "patio_kv_events_connected", "1 while both the engine's publisher and Redis are connected.", func=connected
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


def _label(kind: str) -> str:
    return kind if kind in ev.KNOWN_TYPES else "other"


@dataclass
class _Item:
    seq: int
    batch: ev.Batch
    live: bool


class _RedisDown(Exception):
    pass


class Bridge:
    def __init__(
        self,
        settings: KvEventsSettings,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.layout = lay.Layout(settings.engine, settings.pod, settings.model, settings.mapping_ttl)
        self.cache = lay.HashCache(settings.hash_cache)
        self.clock = clock
        self.backlog: Deque[_Item] = deque()
        self.sub: Optional[net.ZmtpConnection] = None
        self.redis: Optional[net.RedisConnection] = None
        self.metrics = BridgeMetrics(
            registry,
            lambda: float(len(self.backlog)),
            lambda: 1.0 if self.sub is not None and self.redis is not None else 0.0,
        )
        # True right after a clear, until the next write: a second clear would find nothing.
        self._pod_clean = False
        self.last_seq: Optional[int] = None  # last seq taken in order (its write may be in flight)
        self.applied_seq: Optional[int] = None  # last seq Redis acknowledged
        self.need_resync: Optional[str] = "start"
        self.engine_down = False
        self.last_error = ""
        self.last_event_ts: Optional[float] = None
        self.last_applied_at: Optional[float] = None
        self.state = "starting"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._requests: List[Tuple[str, Any]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: Optional[threading.Thread] = None
        self._retry = {"sub": 0.0, "redis": 0.0}
        self._backoff = {"sub": RETRY_MIN, "redis": RETRY_MIN}
        self._parser_limits: Dict[str, int] = {}

    # -- control, from any thread ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="patio-kvevents", daemon=True)
        self._thread.start()

    def engine_health(self, up: bool) -> None:
        """The health watch's callback (event loop): acted on in the bridge thread."""
        self._post("engine_up" if up else "engine_down", None)

    def _post(self, what: str, arg: Any) -> None:
        with self._lock:
            self._requests.append((what, arg))
        try:
            self._wake_w.send(b"\x00")
        except OSError:  # the wake buffer is full: the thread is awake anyway
            pass

    def stop(self, timeout: float) -> bool:
        """Stop the thread (no Redis write after this returns True)."""
        self._stop.set()
        self._post("stop", None)
        if self._thread is not None:
            self._thread.join(max(timeout, 0.0))
            return not self._thread.is_alive()
        return True

    def shutdown(self, budget: float) -> bool:
        """Stop, then clear this pod from Redis on a fresh connection, within ``budget`` seconds."""
        deadline = time.monotonic() + budget
        self.stop(budget / 2)
        settings = self.settings
        try:
            conn = net.RedisConnection(
                settings.redis_host,
                settings.redis_port,
                settings.redis_db,
                settings.redis_username,
                settings.redis_password,
                max(min(settings.timeout, deadline - time.monotonic()), 0.05),
                self._parser_limits,
            )
        except net.PeerDown as exc:
            log.warning("kv events: could not clear pod %s from Redis on shutdown: %s", settings.pod, exc)
            return False
        try:
            self._clear_pod_on(conn, "shutdown", deadline)
            log.info("kv events: pod %s cleared from Redis on shutdown", settings.pod)
            return True
        except (net.PeerDown, _RedisDown) as exc:
            log.warning("kv events: clearing pod %s on shutdown failed: %s", settings.pod, exc)
            return False
        finally:
            conn.close()
            self._wake_r.close()
            self._wake_w.close()

    def snapshot(self) -> Dict[str, Any]:
        settings = self.settings
        return {
            "enabled": True,
            "state": self.state,
            "engine": settings.engine,
            "pod": settings.pod,
            "model": settings.model,
            "endpoint": settings.endpoint,
            "replay_endpoint": settings.replay_endpoint,
            "topic": settings.topic,
            "redis": settings.redis_where,
            "publisher_connected": self.sub is not None,
            "redis_connected": self.redis is not None,
            "engine_down": self.engine_down,
            "last_seq": self.applied_seq,
            "last_event_ts": self.last_event_ts,
            "last_applied_at": self.last_applied_at,
            "pending_resync": self.need_resync,
            "backlog": len(self.backlog),
            "backlog_limit": settings.backlog,
            "hash_cache": len(self.cache),
            "last_error": self.last_error,
        }

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        log.info(
            "kv events: %s stream %s (replay %s, topic %r) -> redis %s as pod %s, model %s",
            self.settings.engine,
            self.settings.endpoint,
            self.settings.replay_endpoint or "none",
            self.settings.topic,
            self.settings.redis_where,
            self.settings.pod,
            self.settings.model,
        )
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # a bug must not kill the bridge: log, back off, go on
                log.exception("kv events: unexpected error")
                self.last_error = f"internal error: {exc!r}"[:300]
                self._stop.wait(1.0)
        for conn in (self.sub, self.redis):
            if conn is not None:
                conn.close()
        self.sub = self.redis = None
        self.state = "stopped"

    def _step(self) -> None:
        self._handle_requests()
        now = time.monotonic()
        if self.redis is None and now >= self._retry["redis"]:
            self._connect_redis()
        if self.sub is None and now >= self._retry["sub"] and not self._stop.is_set():
            self._connect_sub()
        if self.need_resync and self.redis is not None and self.sub is not None and not self.engine_down:
            self._guard_redis(lambda: self._resync(self.need_resync or "start"))
        self._update_state()
        waits = [self._retry[k] - time.monotonic() for k, c in (("sub", self.sub), ("redis", self.redis)) if c is None]
        timeout = min([self.settings.timeout, *waits]) if waits else self.settings.timeout
        readers: List[Any] = [self._wake_r]
        if self.sub is not None:
            readers.append(self.sub)
        try:
            ready, _, _ = select.select(readers, [], [], max(timeout, 0.01))
        except (OSError, ValueError):
            ready = []
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass
        if self.sub is not None and self.sub in ready:
            self._read_sub()

    def _update_state(self) -> None:
        if self.engine_down:
            self.state = "engine_down"
        elif self.sub is None:
            self.state = "connecting_publisher"
        elif self.redis is None:
            self.state = "redis_down"
        elif self.need_resync:
            self.state = "resyncing"
        else:
            self.state = "live"

    def _handle_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for what, _ in requests:
            if what == "engine_down" and not self.engine_down:
                self.engine_down = True
                log.warning("kv events: engine down: clearing pod %s from Redis", self.settings.pod)
                self.need_resync = "engine_down"
                self._guard_redis(lambda: self._clear_pod("engine_down"))
            elif what == "engine_up" and self.engine_down:
                self.engine_down = False
                self.need_resync = "engine_down"  # its cache may be new: rebuild from the replay buffer

    # -- connections -----------------------------------------------------------------------
    def _backoff_after(self, which: str) -> None:
        wait = self._backoff[which]
        self._retry[which] = time.monotonic() + wait
        self._backoff[which] = min(wait * 2, self.settings.retry_max)

    def _connect_redis(self) -> None:
        settings = self.settings
        try:
            self.redis = net.RedisConnection(
                settings.redis_host,
                settings.redis_port,
                settings.redis_db,
                settings.redis_username,
                settings.redis_password,
                settings.timeout,
                self._parser_limits,
            )
        except net.PeerDown as exc:
            self._note_error(str(exc))
            self.metrics.redis_errors.inc()
            self._backoff_after("redis")
            return
        self._backoff["redis"] = RETRY_MIN
        log.info("kv events: connected to redis %s", settings.redis_where)
        if self.need_resync is None:
            self.need_resync = "redis_reconnect"

    def _connect_sub(self) -> None:
        settings = self.settings
        try:
            conn = net.ZmtpConnection(settings.endpoint, "SUB", settings.timeout, settings.max_frame_bytes)
            conn.send(conn.proto.subscribe(settings.topic.encode("utf-8")))
        except net.PeerDown as exc:
            self._note_error(str(exc))
            self._backoff_after("sub")
            return
        self.sub = conn
        self._backoff["sub"] = RETRY_MIN
        log.info("kv events: subscribed to %s (ZMTP %d.%d)", settings.endpoint, *(conn.proto.version or (3, 0)))
        # Whatever happened while we were away is unknown: rebuild from the replay buffer.
        self.need_resync = self.need_resync or "publisher_lost"

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("kv events: %s", message)
        self.last_error = message

    def _drop_sub(self, why: str) -> None:
        if self.sub is not None:
            self.sub.close()
        self.sub = None
        self._note_error(why)
        self._backoff_after("sub")
        # The publisher lives in the engine: its connection dropping means the engine (and its cache) went away,
        # and what the backlog holds is that engine's history.
        self.backlog.clear()
        self.need_resync = self.need_resync or "publisher_lost"
        self._guard_redis(lambda: self._clear_pod("publisher_lost"))

    def _guard_redis(self, action: Callable[[], None]) -> bool:
        """Run ``action``; a Redis failure drops the connection and schedules a resync (False)."""
        if self.redis is None:
            return False
        try:
            action()
            return True
        except (net.PeerDown, _RedisDown) as exc:
            self.metrics.redis_errors.inc()
            if self.redis is not None:
                self.redis.close()
            self.redis = None
            self.need_resync = "redis_reconnect"
            self._note_error(str(exc))
            self._backoff_after("redis")
            return False

    # -- the stream --------------------------------------------------------------------------
    def _read_sub(self) -> None:
        assert self.sub is not None
        try:
            self.sub.read(0)
            messages = self.sub.take()
        except net.PeerDown as exc:
            self._drop_sub(str(exc))
            return
        items: List[_Item] = []
        for message in messages:
            item = self._decode(message)
            if item is not None:
                items.append(item)
        if items:
            self._on_live(items)

    def _decode(self, message: zmtp.Event) -> Optional[_Item]:
        metrics = self.metrics
        if isinstance(message, zmtp.Dropped):
            metrics.malformed.inc("oversize")
            return None
        if not isinstance(message, zmtp.Message):
            return None
        frames = message.frames
        if len(frames) != 3:
            metrics.malformed.inc("frames")
            return None
        topic, seq_raw, payload = frames
        if not topic.startswith(self.settings.topic.encode("utf-8")):
            return None  # another topic sharing the publisher: not ours
        if len(seq_raw) != 8:
            metrics.malformed.inc("seq")
            return None
        return self._decode_payload(int.from_bytes(seq_raw, "big"), payload, live=True)

    def _decode_payload(self, seq: int, payload: bytes, live: bool) -> Optional[_Item]:
        try:
            batch = ev.decode_batch(payload)
        except ev.EventError as exc:
            self.metrics.malformed.inc(exc.reason)
            self._note_error(f"message {seq}: {exc.message}")
            return None
        # Replayed events count too: received = decoded from the engine, by either path.
        for event in batch.events:
            self.metrics.received.inc(_label(event.type))
        return _Item(seq, batch, live)

    def _on_live(self, items: List[_Item]) -> None:
        if self.engine_down:
            for item in items:
                for event in item.batch.events:
                    self.metrics.skipped.inc(_label(event.type))
            return
        if self.need_resync or self.redis is None:
            self._to_backlog(items)
            if self.redis is not None and not self._stop.is_set():
                self._guard_redis(lambda: self._resync(self.need_resync or "start"))
            return
        if not self._guard_redis(lambda: self._apply_in_order(items, replay_gaps=True)):
            self._to_backlog(items)  # the resync that follows skips what Redis already has

    def _to_backlog(self, items: Iterable[_Item]) -> None:
        for item in items:
            if len(self.backlog) >= self.settings.backlog:
                log.warning("kv events: backlog full (%d batches): dropped, resync follows", len(self.backlog))
                self.backlog.clear()
                self.need_resync = "backlog_overflow"
            self.backlog.append(item)

    def _apply_in_order(self, items: Sequence[_Item], replay_gaps: bool) -> None:
        """Apply items in sequence order: duplicates skipped, restarts and holes handled."""
        run: List[_Item] = []
        for position, item in enumerate(items):
            last = self.last_seq
            if last is None or item.seq == last + 1:
                run.append(item)
                self.last_seq = item.seq
                continue
            if item.seq <= last:
                if item.seq == 0:
                    # A new engine publishes from 0 again; its cache starts empty.
                    self._flush_run(run)
                    run = []
                    self._clear_pod("engine_restart")
                    run.append(item)
                    self.last_seq = item.seq
                else:
                    for event in item.batch.events:
                        self.metrics.skipped.inc(_label(event.type))
                continue
            # A hole: messages last+1 .. item.seq-1 were lost.
            self.metrics.gaps.inc()
            self._flush_run(run)
            run = []
            log.warning("kv events: lost messages %d..%d", last + 1, item.seq - 1)
            if replay_gaps and self._fill_gap(last + 1, item.seq):
                run.append(item)
                self.last_seq = item.seq
                continue
            # Cannot fill it: rebuild from what the engine still has.
            self._to_backlog(items[position:])
            self._resync("gap")
            return
        self._flush_run(run)

    def _fill_gap(self, first: int, upto: int) -> bool:
        """Replay ``first``..``upto-1`` and apply it; False when the replay cannot cover the hole."""
        if not self.settings.replay_endpoint:
            return False
        replayed = [item for item in self._replay(first) if item.seq < upto]
        if [item.seq for item in replayed] != list(range(first, upto)):
            return False
        self._flush_run(replayed)
        self.last_seq = upto - 1
        return True

    def _replay(self, start: int) -> Iterator[_Item]:
        """Decoded batches from the replay endpoint, one at a time (a full buffer is 10 000 batches)."""
        settings = self.settings
        assert settings.replay_endpoint
        first: Optional[int] = None
        try:
            for seq, payload in net.replay(settings.replay_endpoint, start, settings.timeout, settings.max_frame_bytes):
                if self._stop.is_set():
                    return
                first = seq if first is None else first
                item = self._decode_payload(seq, payload, live=False)
                if item is not None:
                    yield item
        except net.PeerDown as exc:
            self.metrics.replays.inc("error")
            self._note_error(f"replay from {start}: {exc}")
            return
        # Partial: the publisher's buffer no longer reaches back to ``start``.
        self.metrics.replays.inc("complete" if first is None or first == start else "partial")

    def _resync(self, reason: str) -> None:
        """Clear the pod, apply the engine's replay buffer, then the backlog: never a partial history."""
        log.info("kv events: resync (%s)", reason)
        if not self._pod_clean:
            self._clear_pod(reason)
        self.last_seq = self.applied_seq = None
        last = self._apply_stream(self._replay(0) if self.settings.replay_endpoint else iter(()), None)
        backlog = list(self.backlog)
        self.backlog.clear()
        # The backlog holds what arrived from this same engine meanwhile: what the replay had is a duplicate.
        self.last_seq = self._apply_stream((item for item in backlog if last is None or item.seq > last), last)
        self.need_resync = None
        self._update_state()

    def _apply_stream(self, items: Iterator[_Item], last: Optional[int]) -> Optional[int]:
        """Apply consecutive batches in slices; after a hole, history before it is dropped (cleared)."""
        chunk: List[_Item] = []
        for item in items:
            if last is not None and item.seq != last + 1:
                if item.seq <= last and item.seq != 0:
                    for event in item.batch.events:
                        self.metrics.skipped.inc(_label(event.type))
                    continue
                # A hole, or a new engine: what was applied may miss removals; start over from here.
                self._flush_run(chunk)
                chunk = []
                self._clear_pod("gap" if item.seq > last else "engine_restart")
            chunk.append(item)
            last = item.seq
            if len(chunk) >= REPLAY_SLICE:
                self._flush_run(chunk)
                chunk = []
        self._flush_run(chunk)
        return last

    # -- Redis writes ------------------------------------------------------------------------
    def _pipeline(self, commands: List[lay.Command]) -> List[object]:
        if self._stop.is_set():
            raise _RedisDown("stopping: no more writes")
        if self.redis is None:
            raise _RedisDown("redis not connected")
        replies = self.redis.pipeline(commands)
        errors = [r for r in replies if isinstance(r, resp.ReplyError)]
        if errors:
            self.metrics.redis_errors.inc(amount=float(len(errors)))
            self._note_error(f"redis error reply: {errors[0].message}"[:300])
        return replies

    def _flush_run(self, run: Sequence[_Item]) -> None:
        """Write ``run`` (consecutive batches) in pipelines; metrics count after Redis answered."""
        if not run:
            return
        commands: List[lay.Command] = []
        done: List[_Item] = []
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
                        self._note_error(f"message {item.seq}: BlockStored: {exc}")
                elif isinstance(event, ev.BlockRemoved):
                    commands.extend(lay.remove_commands(self.layout, event, self.cache, resolved))
                elif isinstance(event, ev.AllBlocksCleared):
                    self._send(commands, done)
                    commands, done = [], []
                    self._clear_pod("all_blocks_cleared")
                elif isinstance(event, ev.Malformed):
                    self.metrics.malformed.inc("event")
            done.append(item)
            if len(commands) >= PIPELINE_COMMANDS:
                self._send(commands, done)
                commands, done = [], []
        self._send(commands, done)

    def _send(self, commands: List[lay.Command], done: List[_Item]) -> None:
        if commands:
            self._pod_clean = False
        self._pipeline(commands)
        wrote = self.clock()
        for item in done:
            for event in item.batch.events:
                kind = _label(event.type)
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
        replies = self._pipeline([("GET", self.layout.mapping_key(h)) for h in engine_hashes])
        found: Dict[int, int] = {}
        for engine_hash, reply in zip(engine_hashes, replies):
            if isinstance(reply, bytes) and reply.isdigit():
                found[engine_hash] = int(reply)
        return found

    def _clear_pod(self, reason: str) -> None:
        if self.redis is None:
            raise _RedisDown("redis not connected")
        if self._stop.is_set():
            raise _RedisDown("stopping")
        self._clear_pod_on(self.redis, reason, None)

    def _clear_pod_on(self, conn: net.RedisConnection, reason: str, deadline: Optional[float]) -> None:
        """HDEL the pod from every matrix key of the model, DEL its mapping keys (SCAN, never KEYS)."""
        layout = self.layout
        started = time.monotonic()
        fields = keys = 0

        def check() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise _RedisDown("shutdown budget spent while clearing the pod")

        for page in conn.scan(layout.matrix_pattern(), SCAN_COUNT):
            check()
            replies = conn.pipeline([("HDEL", key, layout.pod) for key in page])
            fields += sum(1 for r in replies if r == 1)
        for page in conn.scan(layout.mapping_pattern(), SCAN_COUNT):
            check()
            replies = conn.pipeline([("DEL", *page)])
            keys += replies[0] if isinstance(replies[0], int) else 0
        self.cache.clear()
        self._pod_clean = True
        self.metrics.clears.inc(reason)
        log.info(
            "kv events: pod %s cleared (%s): %d matrix fields, %d mapping keys in %.3fs",
            layout.pod,
            reason,
            fields,
            keys,
            time.monotonic() - started,
        )
