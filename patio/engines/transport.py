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
import urllib.request
from dataclasses import dataclass
from typing import Mapping, Optional

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
        chunks = []
        total = 0
        while True:
            if time.monotonic() > deadline:
                raise EngineTimeout(f"{peer} answer to {method} {url} took longer than {timeout:g}s")
            chunk = response.read(_READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise EngineError(f"{peer} answer to {method} {url} is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except (socket.timeout, TimeoutError):
        raise EngineTimeout(f"{peer} answer to {method} {url} stalled past {timeout:g}s") from None
    except (ConnectionError, OSError, http.client.HTTPException) as exc:
        # IncompleteRead (a body shorter than its Content-Length) lands here too.
        raise PeerUnavailable(f"{peer} connection lost while reading {url}: {exc!r}", sent=True) from None
    finally:
        response.close()
    status = response.status if hasattr(response, "status") else response.code
    header_map = {k.lower(): v for k, v in response.headers.items()} if response.headers else {}
    declared = header_map.get("content-length", "")
    if declared.isdigit() and int(declared) != total and method != "HEAD":
        # A body cut short (peer died mid-answer) must not pass as a complete one.
        raise PeerUnavailable(f"{peer} answer to {method} {url} truncated: {total} of {declared} bytes", sent=True)
    return HttpResult(status=int(status), headers=header_map, body=b"".join(chunks), elapsed=time.monotonic() - started)


def bearer(api_key: Optional[str]) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
