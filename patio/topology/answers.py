"""What a router's worker-API answers mean, without any I/O.

Three router generations are in use today and they answer the same calls
differently (each started from PyPI on 127.0.0.1, and read in its source;
tests/test_topology_routers.py runs all three):

    generation        POST /workers (new)     POST again (known URL)           lookup / removal
    sglang-router     202 {"worker_id"}       202, the same id                 /workers/{id}
    smg               202 {"worker_id"} v7    409 WORKER_ALREADY_EXISTS "with  /workers/{id}; PUT
                                              ID <uuid>" (smg worker/service.rs) /workers/{id} replaces
    vllm-router       200 {"success"}, no id  400 ADD_WORKER_FAILED "already   /workers/{url-quoted}
                                              exists" (vllm router src/server.rs)
    vllm-router-igw   200 {"worker":{"id"}}   200, the same id                 /workers/{url-quoted}
    (vllm-router --enable-igw)

The generation is detected from these answers (never from a version flag) and
may change at any time: a router upgraded in place answers differently after
its restart.  Everything here takes a status and body bytes and returns a
value or raises one of the ``RouterError`` family; it never touches a socket.
"""

import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

from patio import jsontext
from patio.errors import PatioError

# How much of a bad router answer is quoted in an error (the rest is noise in logs).
QUOTE_LIMIT = 160

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-([0-9a-fA-F])[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Keys only smg (1.x) puts on a worker entry; sglang-router 0.3.x has none of them.
_SMG_KEYS = ("runtime_type", "status", "models")
# A worker entry's job_status while its job still runs (smg workflow/job_queue.rs).
JOB_RUNNING = ("pending", "processing")


class RouterError(PatioError):
    """The router answered, but not with what a registration needs."""

    status = 502
    error_type = "router_error"


class RouterAuthError(RouterError):
    """401/403: the control-plane key is missing or wrong.  Retried at the heartbeat pace only."""

    error_type = "router_auth_error"


class RouterTimeout(RouterError):
    """The heartbeat's (or the removal's) deadline ran out before the next router call."""

    status = 504
    error_type = "router_timeout"


@dataclass(frozen=True)
class Generation:
    """How one router generation names, replaces and removes a worker."""

    name: str
    family: str  # "sglang" or "vllm": which TOPO_TYPE it answers to
    ids: bool  # the router gives workers ids (lookups by id); else by URL
    remove_by_url: bool  # DELETE /workers/{quoted url} (vLLM's router) instead of /workers/{id}
    replace: str  # how a changed worker_type/bootstrap_port is applied: "put", "delete-post", "" (cannot)


GENERATIONS: Dict[str, Generation] = {
    g.name: g
    for g in (
        Generation("sglang-router", "sglang", ids=True, remove_by_url=False, replace="delete-post"),
        Generation("smg", "sglang", ids=True, remove_by_url=False, replace="put"),
        # Single-router mode ignores worker_type on POST /workers (vllm router src/server.rs,
        # create_worker: ``state.router.add_worker(&config.url)``): a type cannot be changed.
        Generation("vllm-router", "vllm", ids=False, remove_by_url=True, replace=""),
        Generation("vllm-router-igw", "vllm", ids=True, remove_by_url=True, replace="delete-post"),
    )
}
# Until a router has answered, each family is driven like its most common generation.
DEFAULT_GENERATION = {"sglang": "sglang-router", "vllm": "vllm-router"}


@dataclass(frozen=True)
class Detected:
    generation: str
    evidence: str


@dataclass(frozen=True)
class Member:
    """This worker as the router lists it."""

    worker_id: Optional[str]
    worker_type: Optional[str]
    bootstrap_port: Optional[int]
    pending: bool = False  # an add/update job is still running: its fields are not final
    # The router is removing it: smg 1.x answers a lookup after DELETE with "status": "draining"
    # and a RemoveWorker job for as long as in-flight requests drain (observed on 1.13.0: many
    # seconds); it no longer routes new requests there, which is what a removal is for.
    leaving: bool = False
    # Of that, the part a later add cannot undo: the router holds the worker and drains it
    # (smg "status": "draining").  A RemoveWorker job alone may lose to an add still running.
    draining: bool = False


@dataclass(frozen=True)
class Registered:
    worker_id: Optional[str]  # None: the answer named none (look it up, or the router has no ids)
    already: bool  # the router already knew this URL (409 / 400 "already exists" / same id)


def quote_body(body: bytes) -> str:
    """A short, printable excerpt of an answer for messages (no control characters)."""
    text = body[: QUOTE_LIMIT * 4].decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return repr(text[:QUOTE_LIMIT] + ("..." if len(text) > QUOTE_LIMIT else ""))


def _json(status: int, body: bytes, what: str) -> Any:
    try:
        return jsontext.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        message = f"router answered {status} to {what} with a body that is not JSON: {quote_body(body)}"
        raise RouterError(message) from None


def check_auth(status: int, body: bytes, what: str) -> None:
    if status in (401, 403):
        raise RouterAuthError(
            f"router refused {what} with {status}: set SGL_ROUTER_API_KEY to the router's control-plane key"
            f" (answer: {quote_body(body)})"
        )


def uuid_version(worker_id: str) -> Optional[str]:
    match = _UUID.fullmatch(worker_id)
    return match.group(1) if match else None


def detect_from_entry(family: str, entry: Dict[str, Any]) -> Optional[Detected]:
    """A worker entry (listing or lookup) names its generation by its keys."""
    if family == "sglang":
        present = [k for k in _SMG_KEYS if k in entry]
        if present:
            return Detected("smg", f"worker entry has {', '.join(present)}")
        if "id" in entry:
            return Detected("sglang-router", "worker entry has an id and no smg-only keys")
        return None
    # Single-router mode never puts an "id" key on an entry (vllm router src/server.rs,
    # list_workers_rest / get_worker); IGW mode always does ("unknown" on a lookup by URL).
    if "id" in entry:
        return Detected("vllm-router-igw", "worker entry has an id key")
    if "url" in entry:
        return Detected("vllm-router", "worker entry has no id key")
    return None


def _usable_id(value: Any) -> bool:
    # vLLM's IGW lookup by URL answers "id": "unknown" (router_manager.get_worker).
    return isinstance(value, str) and bool(value) and value != "unknown"


def _port(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def member_from_entry(entry: Dict[str, Any]) -> Member:
    worker_id = entry.get("id") if _usable_id(entry.get("id")) else entry.get("worker_id")
    worker_type = entry.get("worker_type")
    job = entry.get("job_status")
    # A finished job's status stays on the entry for 5 minutes (smg workflow/job_queue.rs
    # status_expired, STATUS_TTL; sglang-router 0.3.2 keeps a repeated POST's "failed" AddWorker
    # the same way): only a pending or processing job is still running.
    running = isinstance(job, dict) and str(job.get("status", "processing")).lower() in JOB_RUNNING
    removing = running and isinstance(job, dict) and job.get("job_type") == "RemoveWorker"
    return Member(
        worker_id=worker_id if _usable_id(worker_id) else None,
        worker_type=worker_type.lower() if isinstance(worker_type, str) else None,
        bootstrap_port=_port(entry.get("bootstrap_port")),
        pending=running or entry.get("status") == "pending",
        leaving=removing or entry.get("status") == "draining",
        draining=entry.get("status") == "draining",
    )


def id_from_location(location: Optional[str]) -> Optional[str]:
    """The worker id in a ``Location: /workers/<id>`` header (smg and sglang-router send one with
    their 202; smg worker/service.rs ``CreateWorkerResult``), or None."""
    if not location:
        return None
    _, found, tail = location.rstrip("/").rpartition("/workers/")
    return tail if found and _UUID.fullmatch(tail) else None


def interpret_register(
    family: str, status: int, body: bytes, location: Optional[str] = None
) -> Tuple[Registered, Optional[Detected]]:
    """The answer to ``POST /workers`` (and its ``Location`` header, where the router sent one)."""
    check_auth(status, body, "POST /workers")
    data = _json(status, body, "POST /workers") if body.strip() else {}
    if not isinstance(data, dict):
        raise RouterError(f"router answered {status} to POST /workers with {quote_body(body)}")
    error = str(data.get("error") or data.get("message") or "")
    code = str(data.get("code") or "")
    if status in (200, 201, 202):
        worker = data.get("worker")
        if isinstance(worker, dict) and _usable_id(worker.get("id")):  # vllm-router --enable-igw
            return Registered(str(worker["id"]), already=False), Detected(
                "vllm-router-igw", "POST /workers answered with a worker object"
            )
        # The id is the router's to give: the body's worker_id, else the Location it named.
        worker_id = data.get("worker_id") if _usable_id(data.get("worker_id")) else id_from_location(location)
        if _usable_id(worker_id):
            detected = None
            if family == "sglang" and uuid_version(str(worker_id)) == "7":
                detected = Detected("smg", "worker id is a UUIDv7")
            elif family == "sglang":
                detected = Detected("sglang-router", "POST /workers answered 202 with a UUIDv4 id")
            return Registered(str(worker_id), already=False), detected
        if data.get("success") is True:
            return Registered(None, already=False), Detected("vllm-router", "POST /workers answered without an id")
        if status == 202:
            return Registered(None, already=False), None
        raise RouterError(f"router answered {status} to POST /workers without success or an id: {quote_body(body)}")
    if status == 409 and (code == "WORKER_ALREADY_EXISTS" or "already exists" in error.lower()):
        # smg: "Worker already exists at URL 'U' with ID <uuid>. Use PUT /workers/<uuid> ..."
        match = re.search(r"with ID ([0-9a-fA-F-]{36})", error)
        worker_id = match.group(1) if match and _UUID.fullmatch(match.group(1)) else None
        return Registered(worker_id, already=True), Detected("smg", "POST for a known URL answered 409")
    if status == 400 and "already exists" in error.lower():
        return Registered(None, already=True), Detected("vllm-router", "POST for a known URL answered 400")
    detail = quote_body(body) if not error else repr(error[:QUOTE_LIMIT])
    raise RouterError(f"router answered {status} to POST /workers: {detail}")


def interpret_lookup(family: str, status: int, body: bytes, url: str) -> Tuple[Optional[Member], Optional[Detected]]:
    """The answer to ``GET /workers/{id}`` or ``GET /workers/{quoted url}``: the member, or None if absent."""
    check_auth(status, body, "GET /workers/{id}")
    if status == 404:
        return None, None
    if status == 400 and b"Invalid worker_id" in body:
        # smg and sglang-router refuse an id that is not a UUID (smg worker/service.rs
        # parse_worker_id): an id learned from another router generation that now answers at
        # this address.  That router does not know it: absent, so the heartbeat registers again.
        return None, None
    if status != 200:
        raise RouterError(f"router answered {status} to a worker lookup: {quote_body(body)}")
    data = _json(status, body, "a worker lookup")
    if not isinstance(data, dict):
        raise RouterError(f"router's worker lookup answer is not an object: {quote_body(body)}")
    if data.get("url") not in (None, url):
        return None, None  # an id the router now gives another URL: we are not that worker
    return member_from_entry(data), detect_from_entry(family, data)


def interpret_listing(family: str, status: int, body: bytes, url: str) -> Tuple[Optional[Member], Optional[Detected]]:
    """The answer to ``GET /workers``: this worker's entry (matched by exact URL) or None."""
    check_auth(status, body, "GET /workers")
    if status != 200:
        raise RouterError(f"router answered {status} to GET /workers: {quote_body(body)}")
    data = _json(status, body, "GET /workers")
    workers = data.get("workers") if isinstance(data, dict) else None
    if not isinstance(workers, list):
        raise RouterError(f"router's GET /workers answer has no worker list: {quote_body(body)}")
    entries: Iterable[Dict[str, Any]] = (w for w in workers if isinstance(w, dict))
    detected: Optional[Detected] = None
    for entry in entries:
        detected = detected or detect_from_entry(family, entry)
        if entry.get("url") == url:
            return member_from_entry(entry), detect_from_entry(family, entry)
    return None, detected


def interpret_removal(status: int, body: bytes) -> bool:
    """The answer to a DELETE: True if the router knew the worker and lets it go, False if it
    did not know it (404; vLLM IGW's 400 WORKER_NOT_FOUND), which is success too."""
    check_auth(status, body, "DELETE /workers")
    if status in (200, 202, 204):
        return True
    if status == 404 or (status == 400 and (b"WORKER_NOT_FOUND" in body or b"Invalid worker_id" in body)):
        return False
    raise RouterError(f"router answered {status} to DELETE /workers: {quote_body(body)}")


def interpret_replace(status: int, body: bytes) -> None:
    """The answer to smg's ``PUT /workers/{id}`` (202 queued; 404 if the id is gone)."""
    check_auth(status, body, "PUT /workers/{id}")
    if status in (200, 202):
        return
    raise RouterError(f"router answered {status} to PUT /workers/{{id}}: {quote_body(body)}")
