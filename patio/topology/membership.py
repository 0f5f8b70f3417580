"""This worker's place in the router: look it up, register it when absent, take it out.

``confirm()`` is one heartbeat's work and ``remove_once()`` one round of a removal.  Each
heartbeat is a membership check, not a blind re-POST: it looks the worker up (by id where
the router has ids, by URL where it does not) and registers only when the router no
longer lists it.  "Already exists" answers count as registered (smg's 409, vLLM's
router's 400).  A router that forgot the worker, or lists it under a new id, restarted:
logged, counted, relearned.  A listing with another worker_type/bootstrap_port is
replaced the way that router can, once per router incarnation (``REPLACE_HOLD_OFF_BEATS``).

Blocking router calls, each bounded by the deadline it is handed; no thread and no
schedule of its own (``patio.topology.heartbeat`` runs it).  Before every call that adds
the worker, ``may_act()`` is asked: once a shutdown or a ``leave()`` began, nothing is
registered again.
"""

import logging
import threading
import time
from typing import Callable, List, Optional, Protocol, Tuple

from patio.topology.answers import Generation, Member, Registered, RouterError
from patio.topology.settings import TopologySettings

log = logging.getLogger("patio.topology")

# A replace repairs a stale registration (a pod that changed role behind a stable name): once
# per router incarnation.  A listing that differs again afterwards means something else sets
# it (a second registrant, a router that keeps answering another type): it is reported, not
# fought, since a replace takes the worker out of rotation for a moment (DELETE then POST on
# sglang-router) and fighting would flap Patio's own worker out of the router at every beat.
# After a router restart Patio may repair again, but never within this many intervals.
REPLACE_HOLD_OFF_BEATS = 10


class Router(Protocol):
    """What the membership needs of a router client (``patio.topology.router_client``)."""

    @property
    def generation(self) -> Generation: ...

    @property
    def generation_name(self) -> str: ...

    @property
    def generation_evidence(self) -> str: ...

    def register(self, deadline: Optional[float] = None) -> Registered: ...

    def lookup(self, worker_id: Optional[str], deadline: Optional[float] = None) -> Optional[Member]: ...

    def find_by_url(self, deadline: Optional[float] = None) -> Optional[Member]: ...

    def remove(self, worker_id: Optional[str], deadline: Optional[float] = None) -> bool: ...

    def replace(
        self, member: Member, deadline: Optional[float] = None, proceed: Callable[[], bool] = ...
    ) -> Tuple[Optional[str], str]: ...


class Membership:
    def __init__(
        self,
        settings: TopologySettings,
        router: Router,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_router_restart: Optional[Callable[[], None]] = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.clock = clock
        self._on_router_restart = on_router_restart or (lambda: None)
        self.lock = threading.Lock()
        self.worker_id: Optional[str] = None
        self.registered = False  # the router accepted or listed the worker at the last beat
        self.ever_registered = False  # at least one registration succeeded (readiness)
        self.known = False  # the router accepted or listed the worker (absence later = it forgot)
        self.posted = False  # a POST was sent at least once: a shutdown must remove the worker
        self.router_restarts = 0
        self.warnings: List[str] = []
        self.replaced_at: Optional[float] = None
        self.replaced = False  # a replace was made since the router last restarted
        self.removal_raced = False  # this removal sent a DELETE while an add job still ran

    # -- one heartbeat ------------------------------------------------------------------
    def confirm(self, deadline: float, may_act: Callable[[], bool]) -> bool:
        """Confirm membership; register only when absent.  True if a POST was sent."""
        member = self.router.lookup(self.worker_id, deadline)
        if member is None:
            self._register_absent(deadline, may_act)
            return True
        if member.leaving:
            # Being removed (our own leave(), or an operator's DELETE): smg keeps it "draining"
            # for --drain-settle-secs and answers a POST with 409 for it, then forgets it.  Not
            # registered, and not registrable until the router let go: a failed beat, retried.
            with self.lock:
                self.registered = False
            raise RouterError(
                f"the router is removing this worker ({member.worker_id or self.settings.worker_url} is draining);"
                " registering again once it let go"
            )
        with self.lock:
            previous = self.worker_id
            if member.worker_id is not None:
                self.worker_id = member.worker_id
            self.known = True
        if previous is not None and member.worker_id is not None and member.worker_id != previous:
            self._restarted(f"the router lists this worker under a new id {member.worker_id} (was {previous})")
        self._check_fields(member, deadline, may_act)
        self._mark_registered()
        return False

    def _register_absent(self, deadline: float, may_act: Callable[[], bool]) -> None:
        with self.lock:
            previous, was_known = self.worker_id, self.known
        if not may_act():
            return
        self.posted = True
        registered = self.router.register(deadline)
        new_id = registered.worker_id
        with self.lock:
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

    def _check_fields(self, member: Member, deadline: float, may_act: Callable[[], bool]) -> None:
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
        hold_off = REPLACE_HOLD_OFF_BEATS * self.settings.heartbeat_interval
        if self.replaced or (self.replaced_at is not None and self.clock() - self.replaced_at < hold_off):
            self._warn(
                f"the router lists this worker as {listed} again after Patio replaced it as {wanted}: something"
                " else changes it; Patio does not replace it again until the router restarts"
            )
            return
        if not may_act():
            return
        self.posted = True  # a replace may POST anew: a shutdown must remove what it made
        self.replaced, self.replaced_at = True, self.clock()
        new_id, how = self.router.replace(member, deadline, may_act)
        log.warning("router listed this worker as %s; replaced it as %s by %s", listed, wanted, how)
        with self.lock:
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
        with self.lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
        log.warning("%s", message)

    def _restarted(self, why: str) -> None:
        self.router_restarts += 1
        self.replaced = False  # a new incarnation: a stale listing there may be repaired once
        log.warning("router restarted or forgot this worker: %s; registered again", why)
        self._on_router_restart()

    def _mark_registered(self) -> None:
        with self.lock:
            self.registered = True
            self.ever_registered = True

    def lost(self) -> None:
        """A heartbeat failed: the router's view of this worker is unknown now."""
        with self.lock:
            self.registered = False

    def forget(self) -> None:
        """The worker left the router on purpose: a later absence is not a restart."""
        with self.lock:
            self.registered, self.known, self.worker_id = False, False, None

    # -- removal --------------------------------------------------------------------------
    @property
    def needs_removal(self) -> bool:
        return self.posted or self.ever_registered

    def start_removal(self) -> None:
        self.removal_raced = False

    def remove_once(self, deadline: float, settle: bool = True) -> bool:
        """One look, one DELETE, one look; True once the router no longer lists the worker.

        The DELETE goes by the id the router gave (smg and sglang-router refuse a URL there
        with 400 "expected UUID": RoleBasedGroup's old sidecar, rbg PR #177).  A router that
        does not know that id may have restarted and listed this URL again under a new id
        (smg's --worker-urls or its service discovery add workers by themselves): the listing
        by URL names the id to remove, so no entry is left behind for a dead pod.

        A registration whose add job still runs is not deleted while ``settle`` (False: the
        caller waits and comes back): smg and sglang-router let such an add land after the
        DELETE and list the worker again (sglang-router.md, "DELETE while the add job is still
        pending can lose the race"; seen on both here).  Once a DELETE went out during an add
        regardless, only absence or smg's "draining" confirms it, never a RemoveWorker job.
        """
        generation = self.router.generation
        worker_id = self.worker_id
        member = self.router.lookup(worker_id, deadline)
        if member is None and worker_id is not None and generation.ids and not generation.remove_by_url:
            member = self.router.find_by_url(deadline)
            if member is not None and member.worker_id not in (None, worker_id):
                log.info("the router lists this worker under a new id %s (was %s)", member.worker_id, worker_id)
                with self.lock:
                    self.worker_id = member.worker_id
        if member is None or member.draining or (member.leaving and not self.removal_raced):
            return True
        if member.pending and (settle or self.removal_raced):
            log.debug("a job of the router's for this worker still runs; removing it once that settled")
            return False
        worker_id = member.worker_id or self.worker_id
        self.removal_raced = self.removal_raced or member.pending
        if not self.router.remove(worker_id, deadline):
            return True  # listed a moment ago, unknown now: gone in between
        # The removal may be queued (smg, sglang-router): done when a look confirms it is gone
        # or leaving (smg drains it: "draining"; sglang-router: its RemoveWorker job).
        after = self.router.lookup(worker_id, deadline)
        return after is None or after.draining or (after.leaving and not self.removal_raced)
