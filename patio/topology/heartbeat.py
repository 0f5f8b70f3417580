"""The registration thread: wait for the engine, register, check membership, unregister.

Each heartbeat is a membership check, not a blind re-POST: it looks the worker
up (by id where the router has ids, by URL where it does not) and registers
only when the router no longer lists it.  "Already exists" answers count as
registered (smg's 409, vLLM's router's 400).  A router that forgot the worker,
or lists it under a new id, restarted: logged, counted, relearned.  A listing
with another worker_type/bootstrap_port is replaced the way that router can.

Runs in its own thread (blocking calls never touch the event loop).  It loops
on ``stop.wait(...)`` and checks the stop event before every side effect, so
once ``shutdown()`` sets it no POST follows; the DELETE is sent only after the
thread has finished its last call.

Fleet behaviour (1,000 pods must not beat together): after every registration
the next beat comes at a uniformly random point of the interval, later beats
every ``interval * uniform(1 - jitter, 1]``; failures back off exponentially
with "equal jitter" (``uniform(d/2, d)``), ``d`` capped at the interval; a
401/403 waits a whole (jittered) interval, since a wrong key does not fix itself.
"""

import logging
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Protocol, Tuple

from patio.errors import PatioError
from patio.topology.answers import Generation, Member, Registered, RouterAuthError
from patio.topology.settings import TopologySettings

log = logging.getLogger("patio.topology")

# Log a "still waiting for the engine" line this often.
WAIT_LOG_EVERY = 30.0
# First retry delay after a failed router call; doubles up to the heartbeat interval.
BACKOFF_START = 1.0
# A beat right after a registration never comes sooner than this fraction of the interval.
MIN_PHASE = 0.05


class Router(Protocol):
    @property
    def generation(self) -> Generation: ...

    @property
    def generation_name(self) -> str: ...

    @property
    def generation_evidence(self) -> str: ...

    def register(self) -> Registered: ...

    def lookup(self, worker_id: Optional[str], timeout: Optional[float] = None) -> Optional[Member]: ...

    def find_by_url(self, timeout: Optional[float] = None) -> Optional[Member]: ...

    def remove(self, worker_id: Optional[str], timeout: Optional[float] = None) -> None: ...

    def replace(self, member: Member) -> Tuple[Optional[str], str]: ...


class Waiter(Protocol):
    def wait(self, timeout: Optional[float] = None) -> bool: ...

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


def urandom_fraction() -> float:
    """Uniform in [0, 1) from os.urandom: the ``random`` module would load hashlib on 3.8."""
    return int.from_bytes(os.urandom(7), "big") / float(1 << 56)


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
        rand: Callable[[], float] = urandom_fraction,
        on_heartbeat: Optional[Callable[[str], None]] = None,
        on_router_restart: Optional[Callable[[], None]] = None,
        on_auth_failure: Optional[Callable[[], None]] = None,
    ) -> None:
        self.settings = settings
        self.base = settings.router_url
        self.router = router
        self.engine_healthy = engine_healthy
        self.stop: Waiter = stop if stop is not None else threading.Event()
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.rand = rand
        self._on_heartbeat = on_heartbeat or (lambda result: None)
        self._on_router_restart = on_router_restart or (lambda: None)
        self._on_auth_failure = on_auth_failure or (lambda: None)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.worker_id: Optional[str] = None
        self.registered = False  # the router accepted or listed the worker at the last beat
        self.ever_registered = False  # at least one registration succeeded (readiness)
        self.known = False  # the router accepted or listed the worker (absence later = it forgot)
        self.posted = False  # a POST was sent at least once: shutdown must remove the worker
        self.waiting_for_engine = True
        self.stopping = False  # shutdown began: readiness is 503 from here on
        self.unregistered = False
        self.last_result: Optional[str] = None
        self.last_error: Optional[str] = None
        self.last_time: Optional[float] = None
        self.last_success_time: Optional[float] = None
        self.consecutive_failures = 0
        self.auth_failures = 0
        self.router_restarts = 0
        self.next_delay: Optional[float] = None
        self.warnings: List[str] = []

    # -- the thread ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="patio-topology", daemon=True)
        self._thread.start()

    def run(self) -> None:
        if not self._wait_for_engine():
            return
        while not self.stop.is_set():
            if not self.engine_healthy():
                # Never (re-)register a dead engine; the router's own checks mark it unhealthy.
                self._record("engine_unhealthy", "engine /health is not 200")
                delay = self._beat_delay(posted=False)
            elif self.stop.is_set():  # checked again right before the side effect
                break
            else:
                delay = self._one_beat()
            with self._lock:
                self.next_delay = delay
            if self.stop.wait(delay):
                break

    def _one_beat(self) -> float:
        try:
            posted = self.beat()
        except RouterAuthError as exc:
            self._fail(exc.message)
            self.auth_failures += 1
            self._on_auth_failure()
            delay = self._beat_delay(posted=False)
            log.error("%s (retry in %.1fs)", exc.message, delay)
            return delay
        except PatioError as exc:
            self._fail(exc.message)
            delay = self._backoff(self.consecutive_failures)
            log.warning("router heartbeat failed: %s (retry in %.1fs)", exc.message, delay)
            return delay
        self._record("success", None)
        return self._beat_delay(posted=posted)

    def _beat_delay(self, posted: bool) -> float:
        interval, jitter = self.settings.heartbeat_interval, self.settings.heartbeat_jitter
        if jitter <= 0:
            return interval
        if posted:  # a fresh phase, so pods registered together spread over the interval at once
            return interval * max(self.rand(), MIN_PHASE)
        return interval * (1.0 - jitter * self.rand())

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.settings.heartbeat_interval, BACKOFF_START * 2 ** min(failures - 1, 16))
        if self.settings.heartbeat_jitter <= 0:
            return ceiling
        return ceiling * (0.5 + 0.5 * self.rand())

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

    # -- one heartbeat ------------------------------------------------------------------
    def beat(self) -> bool:
        """Confirm membership; register only when absent.  True if a POST was sent."""
        member = self.router.lookup(self.worker_id)
        if member is None:
            self._register_absent()
            return True
        with self._lock:
            previous = self.worker_id
            if member.worker_id is not None:
                self.worker_id = member.worker_id
            self.known = True
        if previous is not None and member.worker_id is not None and member.worker_id != previous:
            self._restarted(f"the router lists this worker under a new id {member.worker_id} (was {previous})")
        self._check_fields(member)
        self._mark_registered()
        return False

    def _register_absent(self) -> None:
        with self._lock:
            previous, was_known = self.worker_id, self.known
        if self.stop.is_set():
            return
        self.posted = True
        registered = self.router.register()
        new_id = registered.worker_id
        with self._lock:
            if new_id is not None or not self.router.generation.ids:
                self.worker_id = new_id
            self.known = True
        if previous is None and not was_known:
            if not self.ever_registered:
                log.info(
                    "registered %s with the %s router at %s as %s (%s%s)",
                    self.settings.worker_url,
                    self.router.generation_name,
                    self.settings.router_url,
                    new_id or "its URL",
                    self.settings.worker_type,
                    ", already known" if registered.already else "",
                )
        elif previous is not None and new_id is not None and new_id != previous:
            self._restarted(f"worker id changed {previous} -> {new_id}")
        elif previous is None and was_known and not self.router.generation.ids:
            self._restarted("the router no longer lists this worker")
        self._mark_registered()
        self._warn_unsupported_type()

    def _check_fields(self, member: Member) -> None:
        if member.pending:  # an add or update job still runs: its fields are not final yet
            return
        want_type, want_port = self.settings.worker_type, self.settings.bootstrap_port
        differs = member.worker_type is not None and member.worker_type != want_type
        if want_type == "prefill" and member.bootstrap_port is not None and member.bootstrap_port != want_port:
            differs = True
        if not differs:
            return
        generation = self.router.generation
        listed = f"{member.worker_type} (bootstrap_port {member.bootstrap_port})"
        wanted = f"{want_type} (bootstrap_port {want_port})"
        if not generation.replace:
            self._warn(f"the router lists this worker as {listed}, not {wanted}; {generation.name} cannot change it")
            return
        if self.stop.is_set():
            return
        self.posted = True  # a replace may POST anew: shutdown must remove what it made
        new_id, how = self.router.replace(member)
        log.warning("router listed this worker as %s; replaced it as %s by %s", listed, wanted, how)
        with self._lock:
            if new_id is not None:
                self.worker_id = new_id  # our own replace: a new id here is not a restart

    def _warn_unsupported_type(self) -> None:
        generation = self.router.generation
        if generation.name == "vllm-router" and self.settings.worker_type != "regular":
            self._warn(
                f"vllm-router in single-router mode ignores worker_type: this {self.settings.worker_type} worker"
                " serves as regular; start the router with --enable-igw for prefill/decode registration"
            )

    def _warn(self, message: str) -> None:
        with self._lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
        log.warning("%s", message)

    def _restarted(self, why: str) -> None:
        self.router_restarts += 1
        log.warning("router restarted or forgot this worker: %s; registered again", why)
        self._on_router_restart()

    def _mark_registered(self) -> None:
        with self._lock:
            self.registered = True
            self.ever_registered = True

    def _fail(self, error: str) -> None:
        with self._lock:
            self.consecutive_failures += 1
        self._record("error", error)

    def _record(self, result: str, error: Optional[str]) -> None:
        with self._lock:
            self.last_result, self.last_error, self.last_time = result, error, self.wall()
            if result == "error":
                self.registered = False
            elif result == "success":
                self.consecutive_failures = 0
                self.last_success_time = self.last_time
        self._on_heartbeat(result)

    # -- shutdown -----------------------------------------------------------------------
    def shutdown(self, budget: float) -> bool:
        """Stop heartbeats, then remove the worker; at most ``budget`` seconds.  True if the router forgot us."""
        deadline = self.clock() + budget
        self.stopping = True
        self.stop.set()
        if self._thread is not None:
            # An in-flight call ends within the router timeout; the removal only after it.
            self._thread.join(max(min(self.settings.request_timeout + 0.5, deadline - self.clock()), 0.0))
        return self.unregister(deadline)

    def unregister(self, deadline: float) -> bool:
        if not self.posted and not self.ever_registered:
            return True  # never registered: nothing to undo
        delay = 0.2
        while True:
            try:
                if self._remove_once(deadline):
                    with self._lock:
                        self.registered, self.unregistered = False, True
                    log.info("unregistered %s from the router at %s", self.settings.worker_url, self.base)
                    return True
            except PatioError as exc:
                log.warning("unregister failed: %s", exc.message)
            if self.clock() + delay >= deadline:
                log.error("could not unregister %s within the shutdown budget", self.settings.worker_url)
                return False
            self.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _remove_once(self, deadline: float) -> bool:
        """One DELETE and one look; True once the router no longer lists the worker."""

        def left() -> float:
            # Each call gets at most what is left of the budget.
            return max(min(self.settings.request_timeout, deadline - self.clock()), 0.1)

        worker_id = self.worker_id
        if worker_id is None and self.router.generation.ids:
            member = self.router.find_by_url(timeout=left())
            if member is None:
                return True
            worker_id = member.worker_id
        self.router.remove(worker_id, timeout=left())
        # The removal may be queued (smg, sglang-router) and a pending add can land after a
        # DELETE: done only when a look confirms it is gone or draining.
        member = self.router.lookup(worker_id, timeout=left())
        return member is None or member.leaving

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            return {
                "topo_type": self.settings.topo_type,
                "router_url": self.settings.router_url,
                "router_generation": self.router.generation_name,
                "router_generation_evidence": self.router.generation_evidence,
                "worker_url": self.settings.worker_url,
                "worker_type": self.settings.worker_type,
                "bootstrap_port": self.settings.bootstrap_port,
                "worker_id": self.worker_id,
                "registered": self.registered,
                "ever_registered": self.ever_registered,
                "readiness_mode": self.settings.readiness,
                "waiting_for_engine": self.waiting_for_engine,
                "shutting_down": self.stopping,
                "unregistered": self.unregistered,
                "last_heartbeat_result": self.last_result,
                "last_heartbeat_error": self.last_error,
                "last_heartbeat_time": self.last_time,
                "last_success_time": self.last_success_time,
                "consecutive_failures": self.consecutive_failures,
                "auth_failures": self.auth_failures,
                "router_restarts": self.router_restarts,
                "next_heartbeat_in": None if self.next_delay is None else round(self.next_delay, 3),
                "heartbeat_interval": self.settings.heartbeat_interval,
                "heartbeat_jitter": self.settings.heartbeat_jitter,
                "router_api_key": "set" if self.settings.api_key else "unset",
                "warnings": list(self.warnings),
            }
