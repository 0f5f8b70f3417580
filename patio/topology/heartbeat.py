"""The registration thread: wait for the engine, beat, leave and rejoin on request, unregister.

Runs in its own thread (blocking calls never touch the event loop).  Each beat is one
``Membership.confirm()`` with one deadline for all its router calls (the router timeout),
so a hostile or overloaded router can stretch no beat past that, however it answers.
When the beat is due comes from ``patio.topology.pacing``.

The thread loops on ``stop.wait(...)`` and checks the stop event before every side
effect, so once ``shutdown()`` sets it no POST follows; the DELETE is sent only after
the thread has finished its last call.  ``leave()`` (an engine about to sleep) takes the
worker out of the router and keeps it out: the thread makes no beat until ``rejoin()``.
Beats, the leave's removal and the shutdown's removal hold one lock, so a removal never
races a registration still in flight.
"""

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Protocol

from patio.errors import PatioError
from patio.topology import pacing
from patio.topology.answers import RouterAuthError
from patio.topology.membership import Membership, Router
from patio.topology.settings import TopologySettings

log = logging.getLogger("patio.topology")

# Log a "still waiting for the engine" line this often.
WAIT_LOG_EVERY = 30.0
# First wait after a failed removal attempt (the router unreachable, an error answer);
# doubles up to REMOVE_RETRY_MAX.
REMOVE_RETRY_START = 0.2
REMOVE_RETRY_MAX = 2.0
# Wait between removal rounds the router answered without confirming (its add or remove job
# still runs): such a job ends within a second or two, and the budget is a few seconds.
REMOVE_POLL = 0.2
# The default budget of leave(), in router timeouts: the wait for a beat in flight (one
# timeout, its deadline) and a DELETE with its confirming look (one or two more).
LEAVE_TIMEOUTS = 3.0
# The default budget of rejoin(), in router timeouts: its beat comes at once, but a router
# still draining the worker's previous registration (smg: --drain-settle-secs, 5 s by
# default) takes a few beats on the failure backoff (1, 2, 4 s) before it accepts a POST.
REJOIN_TIMEOUTS = 3.0


class Waiter(Protocol):
    def wait(self, timeout: Optional[float] = None) -> bool: ...

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def wake(self) -> None: ...


class StopOrWake:
    """The thread's stop event, which can also cut one wait short: ``rejoin()`` asks for a
    beat now rather than at the end of a wait of up to a whole interval."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._stopped = False
        self._woken = False

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Until stopped, woken or ``timeout``; True if stopped."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self._woken, timeout)
            self._woken = False
            return self._stopped

    def is_set(self) -> bool:
        return self._stopped

    def set(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()


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
        rand: Callable[[], float] = pacing.urandom_fraction,
        on_heartbeat: Optional[Callable[[str], None]] = None,
        on_router_restart: Optional[Callable[[], None]] = None,
        on_auth_failure: Optional[Callable[[], None]] = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.membership = Membership(settings, router, clock=clock, on_router_restart=on_router_restart)
        self.engine_healthy = engine_healthy
        self.stop: Waiter = stop if stop is not None else StopOrWake()
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.rand = rand
        self._on_heartbeat = on_heartbeat or (lambda result: None)
        self._on_auth_failure = on_auth_failure or (lambda: None)
        self._lock = threading.Lock()
        self._beat_done = threading.Condition(self._lock)
        # Held for a beat's router calls and for a removal: one of them at a time.
        self._beat_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.waiting_for_engine = True
        self.stopping = False  # shutdown began: readiness is 503 from here on
        self.left = False  # leave() took the worker out of the router; no beat until rejoin()
        self.unregistered = False
        self.last_result: Optional[str] = None
        self.last_error: Optional[str] = None
        self.last_time: Optional[float] = None
        self.last_success_time: Optional[float] = None
        self.consecutive_failures = 0
        self.auth_failures = 0
        self.next_delay: Optional[float] = None

    # -- what the membership knows, for readiness and /v1/topology ------------------------
    @property
    def worker_id(self) -> Optional[str]:
        return self.membership.worker_id

    @property
    def registered(self) -> bool:
        return self.membership.registered

    @property
    def ever_registered(self) -> bool:
        return self.membership.ever_registered

    @property
    def router_restarts(self) -> int:
        return self.membership.router_restarts

    @property
    def warnings(self) -> List[str]:
        return self.membership.warnings

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="patio-topology", daemon=True)
        self._thread.start()

    def run(self) -> None:
        if not self._wait_for_engine():
            return
        while not self.stop.is_set():
            if self.left:
                # Out of the router on request (engine asleep): no beat until rejoin() wakes us.
                if self.stop.wait(self.settings.heartbeat_interval):
                    break
                continue
            if not self.engine_healthy():
                # Never (re-)register a dead engine; the router's own checks mark it unhealthy.
                self._record("engine_unhealthy", "engine /health is not 200")
                delay = pacing.beat_delay(self.settings, self.rand, posted=False)
            else:
                with self._beat_lock:
                    if self.stop.is_set():  # checked again right before the side effects
                        break
                    if self.left:
                        continue
                    delay = self._one_beat()
            with self._lock:
                self.next_delay = delay
            if self.stop.wait(delay):
                break

    def _may_act(self) -> bool:
        return not self.stop.is_set() and not self.left

    def _one_beat(self) -> float:
        deadline = self.clock() + self.settings.request_timeout
        try:
            posted = self.membership.confirm(deadline, self._may_act)
        except RouterAuthError as exc:
            self._fail(exc.message)
            self.auth_failures += 1
            self._on_auth_failure()
            delay = pacing.beat_delay(self.settings, self.rand, posted=False)
            log.error("%s (retry in %.1fs)", exc.message, delay)
            return delay
        except PatioError as exc:
            self._fail(exc.message)
            delay = pacing.backoff(self.settings, self.rand, self.consecutive_failures)
            log.warning("router heartbeat failed: %s (retry in %.1fs)", exc.message, delay)
            return delay
        self._record("success", None)
        return pacing.beat_delay(self.settings, self.rand, posted=posted)

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

    def _fail(self, error: str) -> None:
        with self._lock:
            self.consecutive_failures += 1
        self._record("error", error)

    def _record(self, result: str, error: Optional[str]) -> None:
        if result == "error":
            self.membership.lost()
        with self._lock:
            self.last_result, self.last_error, self.last_time = result, error, self.wall()
            if result == "success":
                self.consecutive_failures = 0
                self.last_success_time = self.last_time
            self._beat_done.notify_all()  # rejoin() waits for a beat that registered
        self._on_heartbeat(result)

    # -- leave and rejoin (an engine that sleeps and wakes) -------------------------------
    def leave(self, budget: Optional[float] = None) -> bool:
        """Take the worker out of the router and keep it out until ``rejoin()``.

        Waits for a beat in flight (its deadline bounds that), then removes the worker as a
        shutdown does; at most ``budget`` seconds (default ``LEAVE_TIMEOUTS`` router
        timeouts).  True once the router let go (or never had the worker)."""
        if budget is None:
            budget = LEAVE_TIMEOUTS * self.settings.request_timeout
        deadline = self.clock() + budget
        with self._lock:
            if self.stopping:
                return self.unregistered
            self.left = True
        if not self._beat_lock.acquire(timeout=max(deadline - self.clock(), 0.0)):
            log.error("could not leave the router within %.1fs: a heartbeat is still running", budget)
            return False
        try:
            gone = self._remove(deadline, "leave the router")
            self.membership.forget()
        finally:
            self._beat_lock.release()
        if gone:
            log.info("left the router at %s: %s is out of rotation until rejoin", self.settings.router_url, self.url)
        else:
            log.error("could not leave the router within %.1fs: it may still route to %s", budget, self.url)
        return gone

    def rejoin(self, budget: Optional[float] = None) -> bool:
        """Resume heartbeats after ``leave()``, beat at once, and wait until the router accepted
        or lists the worker again: True then; False if ``budget`` (default ``REJOIN_TIMEOUTS``
        router timeouts) ran out first (heartbeats go on registering it on the usual backoff),
        or Patio is shutting down.  The router routes to it once its own add job has checked
        the worker's health (sglang-router, smg: a moment after the 202)."""
        if budget is None:
            budget = REJOIN_TIMEOUTS * self.settings.request_timeout
        with self._lock:
            if self.stopping:
                return False
            if self.left:
                self.left = False
                self.stop.wake()  # the thread beats now rather than at the end of its wait
            self._beat_done.wait_for(lambda: self.membership.registered or self.stopping, timeout=budget)
        if self.registered:
            log.info("rejoined the router at %s as %s", self.settings.router_url, self.worker_id or self.url)
        return self.registered and not self.stopping

    @property
    def url(self) -> str:
        return self.settings.worker_url

    # -- shutdown -------------------------------------------------------------------------
    def shutdown(self, budget: float) -> bool:
        """Stop heartbeats, then remove the worker; at most ``budget`` seconds.  True if the router forgot us."""
        deadline = self.clock() + budget
        with self._lock:
            self.stopping = True
            self._beat_done.notify_all()
        self.stop.set()
        if self._thread is not None:
            # A beat in flight ends by its deadline (one router timeout); the removal only after it.
            self._thread.join(max(min(self.settings.request_timeout + 0.5, deadline - self.clock()), 0.0))
        return self.unregister(deadline)

    def unregister(self, deadline: float) -> bool:
        if not self.membership.needs_removal:
            return True  # never registered: nothing to undo
        if not self._beat_lock.acquire(timeout=max(deadline - self.clock(), 0.0)):
            log.error("could not unregister %s within the shutdown budget", self.url)
            return False
        try:
            gone = self._remove(deadline, "unregister")
        finally:
            self._beat_lock.release()
        if gone:
            with self._lock:
                self.unregistered = True
            log.info("unregistered %s from the router at %s", self.url, self.settings.router_url)
        else:
            log.error("could not unregister %s within the shutdown budget", self.url)
        return gone

    def _remove(self, deadline: float, what: str) -> bool:
        """Removal rounds until the router let go or ``deadline`` passed: a round the router
        answered but did not confirm (a job of its still runs) comes back after REMOVE_POLL, a
        failed one after a growing pause."""
        if not self.membership.needs_removal:
            return True  # never registered: nothing to undo
        delay = REMOVE_RETRY_START
        # Half the budget waits for an add job still running; then the DELETE goes regardless.
        settle_by = self.clock() + (deadline - self.clock()) / 2
        self.membership.start_removal()
        while True:
            pause = REMOVE_POLL
            try:
                if self.membership.remove_once(deadline, settle=self.clock() < settle_by):
                    self.membership.lost()
                    return True
            except PatioError as exc:
                log.warning("%s failed: %s", what, exc.message)
                pause, delay = delay, min(delay * 2, REMOVE_RETRY_MAX)
            if self.clock() + pause >= deadline:
                return False
            self.sleep(pause)

    def snapshot(self) -> Dict[str, object]:
        membership = self.membership
        with self._lock, membership.lock:
            return {
                "topo_type": self.settings.topo_type,
                "router_url": self.settings.router_url,
                "router_generation": self.router.generation_name,
                "router_generation_evidence": self.router.generation_evidence,
                "worker_url": self.settings.worker_url,
                "worker_type": self.settings.worker_type,
                "bootstrap_port": self.settings.bootstrap_port,
                "worker_id": membership.worker_id,
                "registered": membership.registered,
                "ever_registered": membership.ever_registered,
                "readiness_mode": self.settings.readiness,
                "waiting_for_engine": self.waiting_for_engine,
                "left_router": self.left,
                "shutting_down": self.stopping,
                "unregistered": self.unregistered,
                "last_heartbeat_result": self.last_result,
                "last_heartbeat_error": self.last_error,
                "last_heartbeat_time": self.last_time,
                "last_success_time": self.last_success_time,
                "consecutive_failures": self.consecutive_failures,
                "auth_failures": self.auth_failures,
                "router_restarts": membership.router_restarts,
                "next_heartbeat_in": None if self.next_delay is None else round(self.next_delay, 3),
                "heartbeat_interval": self.settings.heartbeat_interval,
                "heartbeat_jitter": self.settings.heartbeat_jitter,
                "router_api_key": "set" if self.settings.api_key else "unset",
                "warnings": list(membership.warnings),
            }
