"""Blocking client of a router's worker API, for every router generation in use.

Run only in the topology thread or a worker thread, never on the event loop.
Every call has a timeout and a size limit, and takes the caller's deadline: a
heartbeat's calls together end within one router timeout, so a router that answers
each call just in time cannot stretch a heartbeat past the next one (or past the
shutdown's wait for it).  The meaning of each answer lives in
``patio.topology.answers`` (sans-IO).  The client keeps the generation it last
detected and the evidence for it, so ``/v1/topology`` can show both.
"""

import json
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import quote

from patio.http.client import HttpResult, bearer, http_request
from patio.topology import answers
from patio.topology.answers import (
    GENERATIONS,
    Detected,
    Generation,
    Member,
    Registered,
    RouterError,
    RouterTimeout,
)
from patio.topology.settings import TopologySettings

log = logging.getLogger("patio.topology")

# Router answers are small JSON; a larger answer is refused.  GET /workers on a
# 1,000-worker smg is about 0.5 MB, so the limit leaves room for big fleets.
MAX_ROUTER_ANSWER = 4 * 1024 * 1024
# After a DELETE that is part of a replace, how often to look whether the router let go.
GONE_POLL = 0.1
# A call is not started with less time than this left before the caller's deadline: it
# could not finish, and a request sent only to be abandoned may still land (a late POST).
MIN_CALL_TIME = 0.05


class RouterClient:
    def __init__(
        self,
        settings: TopologySettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.family = settings.topo_type
        self.base = settings.router_url
        self.sleep = sleep
        self.clock = clock
        self.detected: Optional[Detected] = None

    # -- generation ---------------------------------------------------------------------
    @property
    def generation(self) -> Generation:
        name = self.detected.generation if self.detected else answers.DEFAULT_GENERATION[self.family]
        return GENERATIONS[name]

    @property
    def generation_name(self) -> str:
        return self.detected.generation if self.detected else "unknown"

    @property
    def generation_evidence(self) -> str:
        return self.detected.evidence if self.detected else "no answer from the router yet"

    def _learn(self, detected: Optional[Detected]) -> None:
        if detected is None:
            return
        previous = self.detected
        if previous is None or previous.generation != detected.generation:
            if previous is None:
                log.info("router at %s is %s (%s)", self.base, detected.generation, detected.evidence)
            else:
                log.warning(
                    "router at %s changed generation: %s -> %s (%s)",
                    self.base,
                    previous.generation,
                    detected.generation,
                    detected.evidence,
                )
            self.detected = detected

    # -- wire ---------------------------------------------------------------------------
    def _timeout(self, method: str, path: str, deadline: Optional[float]) -> float:
        """One call's timeout: the router timeout, or less when the caller's deadline is nearer."""
        if deadline is None:
            return self.settings.request_timeout
        left = deadline - self.clock()
        if left < MIN_CALL_TIME:
            raise RouterTimeout(f"no time left for {method} {path} (the heartbeat's deadline passed)")
        return min(self.settings.request_timeout, round(left, 3))

    def _call(
        self, method: str, path: str, body: Optional[Dict[str, Any]] = None, deadline: Optional[float] = None
    ) -> HttpResult:
        timeout = self._timeout(method, path, deadline)
        # The control-plane key goes on every call: smg and sglang-router guard all of /workers.
        headers: Dict[str, str] = dict(bearer(self.settings.api_key))
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        return http_request(
            method,
            self.base + path,
            body=data,
            headers=headers,
            timeout=timeout,
            max_bytes=MAX_ROUTER_ANSWER,
            peer="router",
        )

    def payload(self) -> Dict[str, Any]:
        payload: Dict[str, Any] = dict(self.settings.extra)
        payload.update({"url": self.settings.worker_url, "worker_type": self.settings.worker_type})
        if self.settings.bootstrap_port is not None:
            payload["bootstrap_port"] = self.settings.bootstrap_port
        return payload

    def _url_path(self) -> str:
        # The vLLM router keys workers by URL as one path segment (axum decodes it).
        return "/workers/" + quote(self.settings.worker_url, safe="")

    # -- calls: each takes the caller's deadline (time.monotonic); None = one router timeout ---
    def register(self, deadline: Optional[float] = None) -> Registered:
        """POST the worker.  An "already exists" answer counts as registered; its id is adopted
        from the answer, or looked up by URL when the answer names none."""
        result = self._call("POST", "/workers", self.payload(), deadline)
        registered, detected = answers.interpret_register(
            self.family, result.status, result.body, result.header("location")
        )
        self._learn(detected)
        if registered.worker_id is None and (registered.already or result.status == 202) and self.generation.ids:
            member = self.find_by_url(deadline)
            if member is None and registered.already:
                raise RouterError(
                    f"router says {self.settings.worker_url} already exists but does not list it: "
                    f"{answers.quote_body(result.body)}"
                )
            if member is not None:
                return Registered(member.worker_id, registered.already)
        return registered

    def lookup(self, worker_id: Optional[str], deadline: Optional[float] = None) -> Optional[Member]:
        """This worker as the router lists it now, or None: by id where the router has ids,
        by URL where it does not (or before an id is known)."""
        generation = self.generation
        if generation.family == "vllm":
            # vLLM's router keys GET /workers/{x} by URL in both modes: in IGW mode a lookup by
            # the id it gave answers 404 (observed on 0.1.17 --enable-igw), which made every
            # heartbeat POST again and every removal look confirmed.
            path = self._url_path()
        elif generation.ids and worker_id:
            path = "/workers/" + quote(worker_id, safe="")
        else:
            return self.find_by_url(deadline)
        result = self._call("GET", path, deadline=deadline)
        member, detected = answers.interpret_lookup(self.family, result.status, result.body, self.settings.worker_url)
        self._learn(detected)
        return member

    def find_by_url(self, deadline: Optional[float] = None) -> Optional[Member]:
        result = self._call("GET", "/workers", deadline=deadline)
        member, detected = answers.interpret_listing(self.family, result.status, result.body, self.settings.worker_url)
        self._learn(detected)
        return member

    def remove(self, worker_id: Optional[str], deadline: Optional[float] = None) -> bool:
        """DELETE the worker: True if the router knew it, False if it did not (404): gone already,
        or known under another id (a router that restarted and renumbered)."""
        generation = self.generation
        if generation.remove_by_url:
            path = self._url_path()
        elif worker_id:
            path = "/workers/" + quote(worker_id, safe="")  # from the router; quoted: one segment only
        else:
            return False
        result = self._call("DELETE", path, deadline=deadline)
        return answers.interpret_removal(result.status, result.body)

    def replace(
        self,
        member: Member,
        deadline: Optional[float] = None,
        proceed: Callable[[], bool] = lambda: True,
    ) -> Tuple[Optional[str], str]:
        """Apply our worker_type/bootstrap_port to a registration that differs; (new id, how).
        ``proceed`` is asked right before a POST that follows a DELETE (not after a stop)."""
        generation = self.generation
        if generation.replace == "put" and member.worker_id:
            result = self._call("PUT", "/workers/" + quote(member.worker_id, safe=""), self.payload(), deadline)
            answers.interpret_replace(result.status, result.body)
            return member.worker_id, "PUT /workers/{id}"
        # DELETE, wait until the router let go (its removal may be queued), then POST.
        self.remove(member.worker_id, deadline)
        gone_by = self.clock() + self.settings.request_timeout
        if deadline is not None:
            gone_by = min(gone_by, deadline)
        while True:
            still = self.lookup(member.worker_id, deadline)
            if still is None or still.leaving:
                break
            if self.clock() >= gone_by:
                raise RouterError("router still lists the worker after DELETE; replacing it next heartbeat")
            self.sleep(GONE_POLL)
        if not proceed():
            return None, "DELETE (stopping: not registered again)"
        return self.register(deadline).worker_id, "DELETE then POST"
