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
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from patio.kvevents import events as ev
from patio.kvevents import layout as lay
from patio.kvevents import net, zmtp
from patio.kvevents.metrics import BridgeMetrics, label
from patio.kvevents.settings import KvEventsSettings
from patio.kvevents.writer import Item, RedisDown, RedisWriter
from patio.metrics.registry import Registry

log = logging.getLogger("patio.kvevents")

# First reconnect wait; doubles up to ``retry_max``.
RETRY_MIN = 0.1
# Replayed batches written per slice (the rest of a replay is still on the socket, not in memory).
REPLAY_SLICE = 256


class Bridge:
    def __init__(
        self,
        settings: KvEventsSettings,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self.backlog: Deque[Item] = deque()
        self.sub: Optional[net.ZmtpConnection] = None
        self.metrics = BridgeMetrics(
            registry,
            lambda: float(len(self.backlog)),
            lambda: 1.0 if self.sub is not None and self.redis is not None else 0.0,
        )
        self.writer = RedisWriter(
            lay.Layout(settings.engine, settings.pod, settings.model, settings.mapping_ttl),
            lay.HashCache(settings.hash_cache),
            self.metrics,
            clock,
            self._stop.is_set,
            self._note_error,
        )
        self.last_seq: Optional[int] = None  # last seq taken in order (its write may be in flight)
        self.need_resync: Optional[str] = "start"
        self.engine_down = False
        self.last_error = ""
        self.state = "starting"
        self._lock = threading.Lock()
        self._requests: List[Tuple[str, Any]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: Optional[threading.Thread] = None
        self._retry = {"sub": 0.0, "redis": 0.0}
        self._backoff = {"sub": RETRY_MIN, "redis": RETRY_MIN}
        self._parser_limits: Dict[str, int] = {}

    @property
    def redis(self) -> Optional[net.RedisConnection]:
        return self.writer.conn

    @redis.setter
    def redis(self, conn: Optional[net.RedisConnection]) -> None:
        self.writer.conn = conn

    @property
    def applied_seq(self) -> Optional[int]:
        return self.writer.applied_seq

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
        try:
            self.stop(budget / 2)
            return self._clear_on_shutdown(deadline)
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _clear_on_shutdown(self, deadline: float) -> bool:
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
            self.writer.clear_pod_on(conn, "shutdown", deadline)
            log.info("kv events: pod %s cleared from Redis on shutdown", settings.pod)
            return True
        except (net.PeerDown, RedisDown) as exc:
            log.warning("kv events: clearing pod %s on shutdown failed: %s", settings.pod, exc)
            return False
        finally:
            conn.close()

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
            "last_event_ts": self.writer.last_event_ts,
            "last_applied_at": self.writer.last_applied_at,
            "pending_resync": self.need_resync,
            "backlog": len(self.backlog),
            "backlog_limit": settings.backlog,
            "hash_cache": len(self.writer.cache),
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
        limits = [self.settings.timeout, *waits]
        if self.settings.heartbeat > 0:
            limits.append(self.settings.heartbeat / 2)
        timeout = min(limits)
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
        if self.sub is not None:
            try:
                self.sub.heartbeat(self.settings.heartbeat)
            except net.PeerDown as exc:  # a half-open connection: the engine is gone
                self._drop_sub(str(exc))

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
                self._guard_redis(lambda: self.writer.clear_pod("engine_down"))
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
        self._guard_redis(lambda: self.writer.clear_pod("publisher_lost"))

    def _guard_redis(self, action: Callable[[], None]) -> bool:
        """Run ``action``; a Redis failure drops the connection and schedules a resync (False)."""
        if self.redis is None:
            return False
        try:
            action()
            return True
        except (net.PeerDown, RedisDown) as exc:
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
        items: List[Item] = []
        for message in messages:
            item = self._decode(message)
            if item is not None:
                items.append(item)
        if items:
            self._on_live(items)

    def _decode(self, message: zmtp.Event) -> Optional[Item]:
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

    def _decode_payload(self, seq: int, payload: bytes, live: bool) -> Optional[Item]:
        try:
            batch = ev.decode_batch(payload)
        except ev.EventError as exc:
            self.metrics.malformed.inc(exc.reason)
            self._note_error(f"message {seq}: {exc.message}")
            return None
        # Replayed events count too: received = decoded from the engine, by either path.
        for event in batch.events:
            self.metrics.received.inc(label(event.type))
        return Item(seq, batch, live)

    def _on_live(self, items: List[Item]) -> None:
        if self.engine_down:
            for item in items:
                for event in item.batch.events:
                    self.metrics.skipped.inc(label(event.type))
            return
        if self.need_resync or self.redis is None:
            self._to_backlog(items)
            if self.redis is not None and not self._stop.is_set():
                self._guard_redis(lambda: self._resync(self.need_resync or "start"))
            return
        if not self._guard_redis(lambda: self._apply_in_order(items, replay_gaps=True)):
            self._to_backlog(items)  # the resync that follows skips what Redis already has

    def _to_backlog(self, items: Iterable[Item]) -> None:
        for item in items:
            if len(self.backlog) >= self.settings.backlog:
                log.warning("kv events: backlog full (%d batches): dropped, resync follows", len(self.backlog))
                self.backlog.clear()
                self.need_resync = "backlog_overflow"
            self.backlog.append(item)

    def _apply_in_order(self, items: Sequence[Item], replay_gaps: bool) -> None:
        """Apply items in sequence order: duplicates skipped, restarts and holes handled."""
        run: List[Item] = []
        for position, item in enumerate(items):
            last = self.last_seq
            if last is None or item.seq == last + 1:
                run.append(item)
                self.last_seq = item.seq
                continue
            if item.seq <= last:
                if item.seq == 0:
                    # A new engine publishes from 0 again; its cache starts empty.
                    self.writer.flush(run)
                    run = []
                    self.writer.clear_pod("engine_restart")
                    run.append(item)
                    self.last_seq = item.seq
                else:
                    for event in item.batch.events:
                        self.metrics.skipped.inc(label(event.type))
                continue
            # A hole: messages last+1 .. item.seq-1 were lost.
            self.metrics.gaps.inc()
            self.writer.flush(run)
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
        self.writer.flush(run)

    def _fill_gap(self, first: int, upto: int) -> bool:
        """Replay ``first``..``upto-1`` and apply it; False when the replay cannot cover the hole."""
        if not self.settings.replay_endpoint:
            return False
        replayed = [item for item in self._replay(first) if item.seq < upto]
        if [item.seq for item in replayed] != list(range(first, upto)):
            return False
        self.writer.flush(replayed)
        self.last_seq = upto - 1
        return True

    def _replay(self, start: int) -> Iterator[Item]:
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
        if not self.writer.pod_clean:
            self.writer.clear_pod(reason)
        self.last_seq = self.writer.applied_seq = None
        last = self._apply_stream(self._replay(0) if self.settings.replay_endpoint else iter(()), None)
        backlog = list(self.backlog)
        self.backlog.clear()
        # The backlog holds what arrived from this same engine meanwhile: what the replay had is a duplicate.
        self.last_seq = self._apply_stream((item for item in backlog if last is None or item.seq > last), last)
        self.need_resync = None
        self._update_state()

    def _apply_stream(self, items: Iterator[Item], last: Optional[int]) -> Optional[int]:
        """Apply consecutive batches in slices; after a hole, history before it is dropped (cleared)."""
        chunk: List[Item] = []
        for item in items:
            if last is not None and item.seq != last + 1:
                if item.seq <= last and item.seq != 0:
                    for event in item.batch.events:
                        self.metrics.skipped.inc(label(event.type))
                    continue
                # A hole, or a new engine: what was applied may miss removals; start over from here.
                self.writer.flush(chunk)
                chunk = []
                self.writer.clear_pod("gap" if item.seq > last else "engine_restart")
            chunk.append(item)
            last = item.seq
            if len(chunk) >= REPLAY_SLICE:
                self.writer.flush(chunk)
                chunk = []
        self.writer.flush(chunk)
        return last
