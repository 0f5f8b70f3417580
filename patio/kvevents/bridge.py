"""The KV-event bridge's thread: connections to the engine's publisher and to Redis, kept honest.

One thread per stream (one stream per data-parallel rank; every socket blocking with
a timeout; the event loop only reads ``snapshot()`` and posts control requests).  What
each part does:

- ``source``: where the publisher is (configured or discovered), the SUB, the replay;
- ``intake``: messages -> reduced batches, counted;
- ``sync``: order, holes, replays, resyncs, restarts (``StreamSync``);
- ``writer``: Kthena's layout in Redis, clears, the refresh of long-cached blocks;
- ``backoff``: when to try a peer again; ``status``: the state and the page;
- here: the thread and its loop, the engine's health, the grace a lost publisher gets
  before the pod is cleared, Redis refusing writes, the shutdown clear.

Redis never claims a cache the pod does not have for longer than it takes to see the
publisher connection drop (plus the reconnect grace) or the health watch flip.
"""

import logging
import select
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from patio.kvevents import discovery, status
from patio.kvevents import layout as lay
from patio.kvevents.backoff import Backoff
from patio.kvevents.compact import Compact
from patio.kvevents.metrics import BridgeMetrics
from patio.kvevents.publisher_client import ZmtpConnection
from patio.kvevents.redis_client import RedisConnection
from patio.kvevents.settings import KvEventsSettings
from patio.kvevents.sockets import PeerDown
from patio.kvevents.source import PublisherSource
from patio.kvevents.sync import StreamSync
from patio.kvevents.writer import RedisDown, RedisRejected, RedisWriter
from patio.metrics.registry import Registry
from patio.ratelog import RateLimitedLog

log = logging.getLogger("patio.kvevents")


class Bridge:
    def __init__(
        self,
        settings: KvEventsSettings,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Optional[BridgeMetrics] = None,
        rank: int = 0,
        on_sources: Optional[Callable[[List[discovery.Source]], None]] = None,
    ) -> None:
        self.settings = settings
        self.rank = rank
        self._stop = threading.Event()
        self.ratelog = RateLimitedLog(log)
        self.sub: Optional[ZmtpConnection] = None
        self.metrics = metrics if metrics is not None else BridgeMetrics(registry)
        self.writer = RedisWriter(
            lay.Layout(settings.engine, settings.pod, settings.model, settings.mapping_ttl, rank),
            lay.HashCache(settings.hash_cache),
            self.metrics,
            clock,
            self._stop.is_set,
            self._note,
        )
        # Where the publisher is: configured, or asked of the engine (``discovery``) at each connect.
        self.source = PublisherSource(settings, rank, self.metrics, self._note, self._stop.is_set, on_sources)
        self.intake = self.source.intake
        self.sync = StreamSync(
            settings, self.writer, self.metrics, self.source.replay, self.source.has_replay, self._note
        )
        self.engine_down = False
        self.last_error = ""
        self.rejecting = ""  # Redis's refusal while it takes no writes
        self.state = "starting"
        self.metrics.state.inc("starting")
        self.metrics.streams.append(self)
        self._lock = threading.Lock()
        self._requests: List[Tuple[str, Any]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: Optional[threading.Thread] = None
        self._backoff = {name: Backoff(settings.retry_max) for name in ("sub", "redis", "write")}
        self._parser_limits: Dict[str, int] = {}
        self.lost_at: Optional[float] = None  # when the publisher connection dropped (grace running)
        self._refresh_due = time.monotonic() + settings.refresh if settings.refresh > 0 else None
        self._refresh_cursor: Optional[bytes] = None

    # -- what the rest of Patio reads ------------------------------------------------------------
    @property
    def redis(self) -> Optional[RedisConnection]:
        return self.writer.conn

    @redis.setter
    def redis(self, conn: Optional[RedisConnection]) -> None:
        self.writer.conn = conn

    @property
    def applied_seq(self) -> Optional[int]:
        return self.writer.applied_seq

    @property
    def backlog(self) -> Any:
        return self.sync.backlog

    @property
    def need_resync(self) -> Optional[str]:
        return self.sync.need_resync

    @property
    def connected(self) -> bool:
        return self.sub is not None and self.redis is not None

    # -- control, from any thread ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"patio-kvevents-{self.rank}", daemon=True)
        self._thread.start()

    def engine_health(self, up: bool) -> None:
        """The health watch's callback (event loop): acted on in the bridge thread."""
        self._post("engine_up" if up else "engine_down", None)

    def _post(self, what: str, arg: Any) -> None:
        with self._lock:
            self._requests.append((what, arg))
        try:
            self._wake_w.send(b"\x00")
        except OSError:  # the wake buffer is full (the thread is awake anyway), or closed
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
            return self.clear_on_shutdown(deadline)
        finally:
            self.release()

    def release(self) -> None:
        """Close the wake-up pair (after the thread stopped)."""
        self._wake_r.close()
        self._wake_w.close()

    def clear_on_shutdown(self, deadline: float) -> bool:
        settings = self.settings
        pod = f"{settings.pod}" + (f" (rank {self.rank})" if self.rank else "")
        try:
            conn = self._redis_connection(max(min(settings.timeout, deadline - time.monotonic()), 0.05))
        except PeerDown as exc:
            log.warning("kv events: could not clear pod %s from Redis on shutdown: %s", pod, exc)
            return False
        try:
            self.writer.clear_pod_on(conn, "shutdown", deadline)
            log.info("kv events: pod %s cleared from Redis on shutdown", pod)
            return True
        except (PeerDown, RedisDown, RedisRejected) as exc:
            log.warning("kv events: clearing pod %s on shutdown failed: %s", pod, exc)
            return False
        finally:
            conn.close()

    def snapshot(self) -> Dict[str, Any]:
        return status.snapshot(self)

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        settings = self.settings
        log.info(
            "kv events: %s stream %s (replay %s, topic %r, rank %d) -> redis %s as pod %s, model %s",
            settings.engine,
            self.source.endpoint if self.source.origin == "configured" else "to be discovered",
            self.source.replay_endpoint or "none",
            self.source.topic,
            self.rank,
            settings.redis_where,
            settings.pod,
            settings.model,
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
        self._set_state("stopped")

    def _step(self) -> None:
        self._handle_requests()
        backoff = self._backoff
        if self.redis is None and backoff["redis"].due():
            self._connect_redis()
        if self.sub is None and backoff["sub"].due() and not self._stop.is_set():
            self._connect_sub()
        self._grace_check()
        if self.sync.need_resync and self.connected and not self.engine_down:
            if backoff["write"].due():
                self._write(self.sync.resync)
        elif self._refresh_due is not None and time.monotonic() >= self._refresh_due and self.state == "live":
            self._refresh_step()
        self._update_state()
        self.ratelog.flush()
        waits = [backoff[k].remaining() for k, c in (("sub", self.sub), ("redis", self.redis)) if c is None]
        if self.sync.need_resync and self.connected:
            waits.append(backoff["write"].remaining())
        if self.lost_at is not None:
            waits.append(self.lost_at + self.settings.reconnect_grace - time.monotonic())
        limits = [self.settings.timeout, *waits]
        if self.settings.heartbeat > 0:
            limits.append(self.settings.heartbeat / 2)
        if self._refresh_cursor is not None:
            limits.append(0.0)  # a refresh walk in progress: the next page after a look at the stream
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
            except PeerDown as exc:  # a half-open connection: the engine is gone
                self._drop_sub(str(exc))

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.metrics.moved(self.state, state)
            self.state = state

    def _update_state(self) -> None:
        self._set_state(
            status.state_of(
                status.Conditions(
                    self.engine_down,
                    self.sub is not None,
                    self.redis is not None,
                    bool(self.rejecting),
                    bool(self.sync.need_resync),
                )
            )
        )

    def _handle_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for what, _ in requests:
            if what == "engine_down" and not self.engine_down:
                self.engine_down = True
                self._note("engine", f"engine down: clearing pod {self.settings.pod} from Redis")
                self.sync.need_resync = "engine_down"
                self.sync.forget()
                self._write(lambda: self.writer.clear_pod("engine_down"))
            elif what == "engine_up" and self.engine_down:
                self.engine_down = False
                self.sync.need_resync = "engine_down"  # its cache may be new: rebuild from the replay buffer

    def _note(self, cause: str, message: str, level: int = logging.WARNING) -> None:
        """Report ``message`` (rate-limited per cause); warnings are also the state's last error."""
        if level >= logging.WARNING:
            self.last_error = message[:300]
        self.ratelog.log(cause, f"kv events: {message}", level)

    # -- connections -----------------------------------------------------------------------------
    def _redis_connection(self, timeout: float) -> RedisConnection:
        settings = self.settings
        return RedisConnection(
            settings.redis_host,
            settings.redis_port,
            settings.redis_db,
            settings.redis_username,
            settings.redis_password,
            timeout,
            self._parser_limits,
        )

    def _connect_redis(self) -> None:
        try:
            self.redis = self._redis_connection(self.settings.timeout)
        except PeerDown as exc:
            self._note("redis", str(exc))
            self.metrics.redis_errors.inc()
            self._backoff["redis"].lost()
            return
        self._backoff["redis"].connected()
        self.metrics.connects.inc("redis")
        self._note("redis_up", f"connected to redis {self.settings.redis_where}", logging.INFO)
        if self.sync.need_resync is None:
            self.sync.need_resync = "redis_reconnect"
            self.sync.forget()

    def _connect_sub(self) -> None:
        source = self.source
        if not source.locate():
            self._backoff["sub"].lost()
            return
        try:
            conn = source.subscribe()
        except PeerDown as exc:
            self._note("publisher", str(exc))
            self._backoff["sub"].lost()
            return
        self.sub = conn
        self._backoff["sub"].connected()
        self.metrics.connects.inc("publisher")
        self.sync.new_connection()
        version = ".".join(map(str, conn.proto.version or (3, 0)))
        self._note("publisher_up", f"subscribed to {source.endpoint} (ZMTP {version})", logging.INFO)
        # Whatever happened while we were away is unknown: resume (the replay vouching) or rebuild.
        self.sync.need_resync = self.sync.need_resync or "publisher_lost"

    def _drop_sub(self, why: str) -> None:
        if self.sub is not None:
            self.sub.close()
        self.sub = None
        self._note("publisher", why)
        self._backoff["sub"].lost()
        # The publisher lives in the engine: its connection dropping may mean the engine (and its
        # cache) went away.  It gets ``reconnect_grace`` to come back as the same engine.
        self.sync.lost_publisher()
        if self.lost_at is None:
            self.lost_at = time.monotonic()
        self._grace_check()

    def _grace_check(self) -> None:
        """Clear the pod once a lost publisher stayed away too long (or cannot be resumed)."""
        if self.lost_at is None:
            return
        if self.sub is not None and not self.sync.need_resync:
            self.lost_at = None  # back, and resumed (or rebuilt)
            return
        if self.sync.resume and time.monotonic() - self.lost_at < self.settings.reconnect_grace:
            return  # it may still come back as the same engine
        if self.redis is None:
            return  # the resync after Redis is back clears it
        if self._write(lambda: self.writer.clear_pod("publisher_lost")):
            self.sync.forget()
            self.lost_at = None

    def _write(self, action: Callable[[], None]) -> bool:
        """Run ``action`` (it writes to Redis).  A dead connection is dropped and a resync
        scheduled; a refusal keeps the connection, shows ``redis_rejecting`` and backs off."""
        if self.redis is None:
            return False
        try:
            action()
        except (PeerDown, RedisDown) as exc:
            self.metrics.redis_errors.inc()
            if self.redis is not None:
                self.redis.close()
            self.redis = None
            self.sync.need_resync = "redis_reconnect"
            self.sync.forget()
            self._note("redis", str(exc))
            self._backoff["redis"].lost()
            return False
        except RedisRejected as exc:
            self.metrics.rejections.inc()
            self.rejecting = exc.message
            self.sync.need_resync = "redis_rejecting"
            self.sync.forget()
            self._note("redis_rejecting", f"redis refuses writes: {exc.message}")
            self._backoff["write"].failed()
            return False
        if self.rejecting and not self.sync.need_resync:
            self._note("redis_rejecting", "redis takes writes again", logging.INFO)
            self.rejecting = ""
        self._backoff["write"].succeeded()
        return True

    # -- the stream ------------------------------------------------------------------------------
    def _read_sub(self) -> None:
        assert self.sub is not None
        try:
            self.sub.read(0)
            messages = self.sub.take()
        except PeerDown as exc:
            self._drop_sub(str(exc))
            return
        items: List[Compact] = []
        for message in messages:  # one at a time: each is reduced before the next is decoded
            item = self.intake.live(message)
            if item is not None:
                items.append(item)
        del messages
        if items:
            self._on_live(items)

    def _on_live(self, items: List[Compact]) -> None:
        if self.engine_down:
            for item in items:
                self.sync.skip(item)
            return
        writable = self.redis is not None and not self.rejecting and self._backoff["write"].due()
        if not writable:
            self.sync.on_live(items, False)
            return
        self._write(lambda: self.sync.on_live(items, True))

    def _refresh_step(self) -> None:
        """One page of the refresh walk (the stream is read between pages)."""
        cursor = self._refresh_cursor or b"0"
        result: List[bytes] = []

        def page() -> None:
            result.append(self.writer.refresh_page(cursor, self.settings.refresh))

        if not self._write(page):
            return
        self._refresh_cursor = result[0] if result[0] != b"0" else None
        if self._refresh_cursor is None:
            self._refresh_due = time.monotonic() + self.settings.refresh
