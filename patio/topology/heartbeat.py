"""The registration thread: wait for the engine, register, heartbeat, unregister.

Runs in its own thread (blocking urllib calls never touch the event loop).  It
loops on ``stop.wait(...)`` and checks the stop event before every side effect,
so once ``shutdown()`` sets it no POST follows; the DELETE is sent only after
the thread has finished its last call.  Failures back off exponentially, capped
at the heartbeat interval, so calls never pile up.
"""

import logging
import threading
import time
from typing import Callable, Dict, Optional, Protocol

from patio.errors import PatioError
from patio.topology.settings import TopologySettings

log = logging.getLogger("patio.topology")

# Log a "still waiting for the engine" line this often.
WAIT_LOG_EVERY = 30.0
# First retry delay after a failed router call; doubles up to the heartbeat interval.
BACKOFF_START = 1.0


class Router(Protocol):
    def register(self) -> str: ...

    def find(self, url: str, timeout: Optional[float] = None) -> Optional[str]: ...

    def delete(self, worker_id: str, timeout: Optional[float] = None) -> None: ...


class Waiter(Protocol):
    def wait(self, timeout: Optional[float] = None) -> bool: ...

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class Heartbeat:
    def __init__(
        self,
        settings: TopologySettings,
        router: Router,
        engine_healthy: Callable[[], bool],
        *,
        stop: Optional[Waiter] = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_heartbeat: Optional[Callable[[str], None]] = None,
        on_router_restart: Optional[Callable[[], None]] = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.engine_healthy = engine_healthy
        self.stop: Waiter = stop if stop is not None else threading.Event()
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self._on_heartbeat = on_heartbeat or (lambda result: None)
        self._on_router_restart = on_router_restart or (lambda: None)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.worker_id: Optional[str] = None
        self.registered = False
        self.waiting_for_engine = True
        self.last_result: Optional[str] = None
        self.last_error: Optional[str] = None
        self.last_time: Optional[float] = None
        self.unregistered = False

    # -- the thread ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="patio-topology", daemon=True)
        self._thread.start()

    def run(self) -> None:
        if not self._wait_for_engine():
            return
        backoff = BACKOFF_START
        interval = self.settings.heartbeat_interval
        while not self.stop.is_set():
            delay = interval
            if not self.engine_healthy():
                # Never (re-)register a dead engine; the router's own checks mark it unhealthy.
                self._record("engine_unhealthy", "engine /health is not 200")
            elif not self.stop.is_set():  # checked again right before the side effect
                try:
                    self._register_once()
                    backoff = BACKOFF_START
                except PatioError as exc:
                    self._record("error", exc.message)
                    log.warning("router registration failed: %s (retry in %.0fs)", exc.message, min(backoff, interval))
                    delay = min(backoff, interval)
                    backoff *= 2
            if self.stop.wait(delay):
                break

    def _wait_for_engine(self) -> bool:
        started = self.clock()
        next_log = started + WAIT_LOG_EVERY
        while not self.stop.is_set():
            if self.engine_healthy():
                self.waiting_for_engine = False
                log.info(
                    "engine healthy after %.1fs; registering with the router at %s",
                    self.clock() - started,
                    self.settings.router_url,
                )
                return True
            if self.clock() >= next_log:
                log.info("waiting for the engine's /health before registering (%.0fs so far)", self.clock() - started)
                next_log += WAIT_LOG_EVERY
            if self.stop.wait(self.settings.engine_probe_interval):
                return False
        return False

    def _register_once(self) -> None:
        worker_id = self.router.register()
        with self._lock:
            previous = self.worker_id
            self.worker_id = worker_id
            self.registered = True
        if previous is None:
            log.info(
                "registered %s with the router as %s (%s)",
                self.settings.worker_url,
                worker_id,
                self.settings.worker_type,
            )
        elif previous != worker_id:
            log.warning("router restarted: worker id changed %s -> %s; adopted", previous, worker_id)
            self._on_router_restart()
        self._record("success", None)

    def _record(self, result: str, error: Optional[str]) -> None:
        with self._lock:
            self.last_result, self.last_error, self.last_time = result, error, self.wall()
            if result == "error":
                self.registered = False
        self._on_heartbeat(result)

    # -- shutdown -----------------------------------------------------------------------
    def shutdown(self, budget: float) -> bool:
        """Stop heartbeats, then unregister; at most ``budget`` seconds.  True if the router forgot us."""
        deadline = self.clock() + budget
        self.stop.set()
        if self._thread is not None:
            # An in-flight POST ends within the router timeout; DELETE only after it.
            self._thread.join(max(min(self.settings.request_timeout + 0.5, deadline - self.clock()), 0.0))
        return self.unregister(deadline)

    def unregister(self, deadline: float) -> bool:
        worker_id = self.worker_id
        if worker_id is None:
            try:
                left = max(deadline - self.clock(), 0.1)
                worker_id = self.router.find(self.settings.worker_url, timeout=left) if self.registered else None
            except PatioError:
                worker_id = None
            if worker_id is None:
                return True  # never registered: nothing to undo
        delay = 0.2
        while True:
            # Each call gets at most what is left of the budget.
            left = max(deadline - self.clock(), 0.1)
            try:
                self.router.delete(worker_id, timeout=min(self.settings.request_timeout, left))
                # A pending add can land after a DELETE (sglang-router.md): look again once.
                left = max(deadline - self.clock(), 0.1)
                again = self.router.find(self.settings.worker_url, timeout=min(self.settings.request_timeout, left))
                if again is None:
                    with self._lock:
                        self.registered, self.unregistered = False, True
                    log.info("unregistered %s from the router", self.settings.worker_url)
                    return True
                worker_id = again
            except PatioError as exc:
                log.warning("unregister failed: %s", exc.message)
            if self.clock() + delay >= deadline:
                log.error("could not unregister %s within the shutdown budget", self.settings.worker_url)
                return False
            self.sleep(delay)
            delay = min(delay * 2, 2.0)

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            return {
                "router_url": self.settings.router_url,
                "worker_url": self.settings.worker_url,
                "worker_type": self.settings.worker_type,
                "bootstrap_port": self.settings.bootstrap_port,
                "worker_id": self.worker_id,
                "registered": self.registered,
                "waiting_for_engine": self.waiting_for_engine,
                "last_heartbeat_result": self.last_result,
                "last_heartbeat_error": self.last_error,
                "last_heartbeat_time": self.last_time,
                "heartbeat_interval": self.settings.heartbeat_interval,
            }
