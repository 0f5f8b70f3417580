"""Blocking HTTP calls to local peers (engine, router) with urllib.

Run these only in worker threads (``AppContext.run_blocking``), never on the
event loop.  Every call has a timeout and a response size limit.  Failures
become the error family: unreachable -> ``EngineUnavailable`` (with
``sent=False`` when the request surely never reached the peer, so a retry is
safe), too slow -> ``EngineTimeout``, oversize -> ``EngineError``.
Non-2xx answers are *returned*, not raised: callers map them.
"""

import http.client
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from patio.errors import EngineError, EngineTimeout, EngineUnavailable

# An engine or router answer larger than this is refused (JSON answers are small;
# /metrics has its own, larger limit passed by the scraper).
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    elapsed: float = 0.0

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class PeerUnavailable(EngineUnavailable):
    """Connection refused, reset, DNS failure.  ``sent`` says whether the request may have arrived."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # a local peer that redirects is answering wrongly; surface its 3xx


def _opener() -> urllib.request.OpenerDirector:
    # No proxies: the engine is on localhost and HTTP(S)_PROXY must not capture it.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _refused_before_send(reason: object) -> bool:
    return isinstance(reason, (ConnectionRefusedError, socket.gaierror, FileNotFoundError))


def http_request(
    method: str,
    url: str,
    *,
    body: Optional[bytes] = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    peer: str = "engine",
) -> HttpResult:
    """One request; the answer whatever its status.  ``timeout`` bounds the whole call."""
    started = time.monotonic()
    deadline = started + timeout
    request = urllib.request.Request(url, data=body, method=method)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    if body is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        response = _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        response = exc  # non-2xx: still an answer
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise EngineTimeout(f"{peer} did not answer {method} {url} within {timeout:g}s") from None
        raise PeerUnavailable(f"{peer} unreachable at {url}: {reason}", sent=not _refused_before_send(reason)) from None
    except (socket.timeout, TimeoutError):
        raise EngineTimeout(f"{peer} did not answer {method} {url} within {timeout:g}s") from None
    except (ConnectionError, OSError, http.client.HTTPException) as exc:
        raise PeerUnavailable(f"{peer} connection failed for {url}: {exc!r}", sent=True) from None
    try:
        data = read_body(response, peer, f"{method} {url}", deadline, max_bytes, check_length=method != "HEAD")
    finally:
        response.close()
    status = response.status if hasattr(response, "status") else response.code
    header_map = {k.lower(): v for k, v in response.headers.items()} if response.headers else {}
    return HttpResult(status=int(status), headers=header_map, body=data, elapsed=time.monotonic() - started)


def read_body(response: Any, peer: str, what: str, deadline: float, max_bytes: int, check_length: bool = True) -> bytes:
    """A response body, bounded in size and time; a body shorter than its Content-Length is an error."""
    declared = response.getheader("Content-Length") if hasattr(response, "getheader") else None
    chunks = []
    total = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise EngineTimeout(f"{peer} answer to {what} took too long")
            chunk = response.read1(_READ_CHUNK) if hasattr(response, "read1") else response.read(_READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise EngineError(f"{peer} answer to {what} is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except (socket.timeout, TimeoutError):
        raise EngineTimeout(f"{peer} answer to {what} stalled") from None
    except (ConnectionError, OSError, http.client.HTTPException) as exc:
        # IncompleteRead (a body shorter than its Content-Length) can land here too.
        raise PeerUnavailable(f"{peer} connection lost while reading {what}: {exc!r}", sent=True) from None
    if check_length and declared is not None and declared.isdigit() and int(declared) != total:
        # A body cut short (peer died mid-answer) must not pass as a complete one.
        raise PeerUnavailable(f"{peer} answer to {what} truncated: {total} of {declared} bytes", sent=True)
    return b"".join(chunks)


def bearer(api_key: Optional[str]) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class KeepAliveClient:
    """One persistent connection to one peer, for a hot path called again and again (the
    metrics scrape).  Not thread-safe: callers serialise (the scrape is single-flight).

    A request that fails on a reused connection before any answer arrived is retried once
    on a fresh one (the peer may have closed an idle keep-alive connection).
    """

    def __init__(self, base_url: str, peer: str = "engine") -> None:
        parts = urllib.parse.urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._peer = peer
        self._conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def get(self, path: str, headers: Mapping[str, str], *, timeout: float, max_bytes: int) -> HttpResult:
        url = f"{'https' if self._https else 'http'}://{self._host}:{self._port}{self._prefix}{path}"
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect(timeout)
            conn = self._conn
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            started = time.monotonic()
            try:
                conn.request("GET", self._prefix + path, headers=dict(headers))
                response = conn.getresponse()
            except (socket.timeout, TimeoutError):
                self.close()
                raise EngineTimeout(f"{self._peer} did not answer GET {url} within {timeout:g}s") from None
            except (ConnectionError, OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # a stale keep-alive connection: try once more on a fresh one
                raise PeerUnavailable(f"{self._peer} unreachable at {url}: {exc}", sent=False) from None
            declared = response.getheader("Content-Length")
            try:
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise EngineError(f"{self._peer} answer to GET {url} is larger than {max_bytes} bytes")
                body = read_body(response, self._peer, f"GET {url}", started + timeout, max_bytes)
            except BaseException:
                self.close()
                raise
            if response.will_close:
                self.close()
            headers_out = {k.lower(): v for k, v in response.getheaders()}
            return HttpResult(response.status, headers_out, body, time.monotonic() - started)
        raise PeerUnavailable(f"{self._peer} unreachable at {url}", sent=False)  # pragma: no cover
