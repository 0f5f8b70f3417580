"""Patio's outbound HTTP/1.1 client: blocking calls to its peers (the engine, a router).

Run these only in worker threads (``AppContext.run_blocking``), never on the
event loop.  Every call has one deadline for the whole exchange and a response
size limit.  Failures become the error family: unreachable -> ``PeerUnavailable``
(with ``sent=False`` when the request surely never reached the peer, so a retry
is safe), too slow -> ``PeerTimeout``, oversize or unsendable -> ``PeerError``.
Non-2xx answers are *returned*, not raised: callers map them; redirects are not
followed (a local peer that redirects is answering wrongly).

Why not urllib: ``http.client`` imports ``ssl`` and ``email`` (about 6 MB of
resident memory in a sidecar whose peers are plain http on localhost).  The
answer framing lives in the sans-IO ``patio.http.response_parser``; ``ssl`` is
imported only when an https peer is configured.  No proxies: the engine is on
localhost and ``HTTP(S)_PROXY`` must not capture it.
"""

import socket
import time
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from patio import __version__
from patio.errors import PeerError, PeerTimeout, PeerUnavailable
from patio.http.response_parser import MalformedResponse, ResponseParser, ResponseTooLarge, TruncatedResponse

# Re-exported: the errors a call raises, beside the call.
__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "HttpResult",
    "KeepAliveClient",
    "Origin",
    "PeerError",
    "PeerTimeout",
    "PeerUnavailable",
    "bearer",
    "http_request",
    "request_bytes",
    "resolver_host",
    "split_url",
]

# An engine or router answer larger than this is refused (JSON answers are small;
# /metrics has its own, larger limit passed by the scraper).
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024
USER_AGENT = f"patio/{__version__}"


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


@dataclass(frozen=True)
class Origin:
    """Where a peer listens: scheme, host, port, and the path prefix of its base URL."""

    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> "Origin":
        return split_url(base_url)[0]

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.https else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url(self, target: str) -> str:
        return f"{'https' if self.https else 'http'}://{self.authority}{target}"


def split_url(url: str) -> Tuple[Origin, str]:
    """The origin of ``url`` (its path as the prefix) and the request target (path and query).
    Userinfo and the fragment are never sent."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise PeerError(f"not an http:// or https:// URL: {url!r}")
    if not parts.hostname:
        raise PeerError(f"URL has no host: {url!r}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:
        raise PeerError(f"URL has a bad port: {url!r}")
    https = scheme == "https"
    origin = Origin(https, parts.hostname, port or (443 if https else 80), parts.path.rstrip("/"))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return origin, target


def request_bytes(
    method: str, origin: Origin, target: str, headers: Mapping[str, str], body: Optional[bytes], keep_alive: bool
) -> bytes:
    """The request on the wire.  Header names or values with line breaks are refused (no injection)."""
    if not target.startswith("/") or any(c <= " " or c > "~" for c in target):
        raise PeerError(f"refusing to send request target {target[:80]!r}")
    fields: Dict[str, str] = {"Host": origin.authority, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    for name, value in headers.items():
        for existing in [k for k in fields if k.lower() == name.lower()]:
            del fields[existing]
        fields[name] = value
    if body is not None:
        fields["Content-Length"] = str(len(body))
    fields["Connection"] = "keep-alive" if keep_alive else "close"
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise PeerError(f"refusing to send header {name!r}: it contains a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def resolver_host(host: str) -> Union[str, bytes]:
    """The host as ``getaddrinfo`` should get it.  Given a ``str``, CPython encodes it with the
    ``idna`` codec, which imports ``stringprep`` and ``unicodedata`` on the first call; an ASCII
    name (every IP literal, ``localhost``, any Kubernetes service name) is passed as bytes instead."""
    return host.encode("ascii") if host.isascii() else host


def _connect(origin: Origin, url: str, deadline: float, peer: str) -> socket.socket:
    """A connection to ``origin`` by ``deadline``.  Failing here, nothing was sent: a retry is safe."""
    timeout = deadline - time.monotonic()
    address = (resolver_host(origin.host), origin.port)
    try:
        sock = socket.create_connection(address, timeout=max(timeout, 0.001))  # type: ignore[arg-type]  # bytes work
    except (socket.timeout, TimeoutError):
        raise PeerTimeout(f"{peer} did not accept a connection at {url} within {timeout:g}s") from None
    except OSError as exc:  # refused, DNS
        raise PeerUnavailable(f"{peer} unreachable at {url}: {exc}", sent=False) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.https:
            import ssl  # only for an https peer: loading TLS costs megabytes of resident memory

            context = ssl.create_default_context()
            return context.wrap_socket(sock, server_hostname=origin.host)
    except OSError as exc:  # the TLS handshake (SSLError is an OSError), before any request byte
        sock.close()
        raise PeerUnavailable(f"{peer} unreachable at {url}: {exc}", sent=False) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _exchange(sock: socket.socket, request: bytes, parser: ResponseParser, deadline: float) -> None:
    """Send the request and read until the parser has the whole answer (or raise)."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    sock.sendall(request)
    while not parser.complete:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        sock.settimeout(remaining)
        data = sock.recv(_READ_CHUNK)
        if not data:
            parser.feed_eof()
            return
        parser.feed(data)


def _result(parser: ResponseParser, started: float) -> HttpResult:
    head = parser.head
    assert head is not None
    headers: Dict[str, str] = {}
    for name, value in head.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return HttpResult(head.status, headers, parser.body(), time.monotonic() - started)


def _exchange_errors(exc: BaseException, parser: ResponseParser, peer: str, what: str, timeout: float) -> Exception:
    """The Patio error for a failure once connected (the request may have arrived)."""
    if isinstance(exc, ResponseTooLarge):
        return PeerError(f"{peer} answer to {what} is larger than {parser.max_body_bytes} bytes")
    if isinstance(exc, TruncatedResponse):
        return PeerUnavailable(f"{peer} answer to {what}: {exc}", sent=True)
    if isinstance(exc, MalformedResponse):
        return PeerUnavailable(f"{peer} sent a malformed answer to {what}: {exc}", sent=True)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        if parser.received:
            return PeerTimeout(f"{peer} answer to {what} stalled past {timeout:g}s")
        return PeerTimeout(f"{peer} did not answer {what} within {timeout:g}s")
    return PeerUnavailable(f"{peer} connection failed during {what}: {exc!r}", sent=True)


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
    """One request on its own connection; the answer whatever its status.  ``timeout`` bounds the whole call."""
    started = time.monotonic()
    deadline = started + timeout
    origin, target = split_url(url)
    fields = dict(headers or {})
    if body is not None and not any(k.lower() == "content-type" for k in fields):
        fields["Content-Type"] = "application/json"
    request = request_bytes(method, origin, target, fields, body, keep_alive=False)
    what = f"{method} {origin.url(target)}"
    sock = _connect(origin, origin.url(target), deadline, peer)
    parser = ResponseParser(method, max_bytes)
    try:
        _exchange(sock, request, parser, deadline)
    except (OSError, MalformedResponse) as exc:
        raise _exchange_errors(exc, parser, peer, what, timeout) from None
    finally:
        sock.close()
    return _result(parser, started)


def bearer(api_key: Optional[str]) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class KeepAliveClient:
    """One persistent connection to one peer, for a hot path called again and again (the
    metrics scrape).  Not thread-safe: callers serialise (the scrape is single-flight).

    A request that fails on a reused connection before any byte of an answer arrived is
    retried once on a fresh one (the peer may have closed an idle keep-alive connection).
    """

    def __init__(self, base_url: str, peer: str = "engine") -> None:
        self._origin = Origin.parse(base_url)
        self._peer = peer
        self._sock: Optional[socket.socket] = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def get(self, path: str, headers: Mapping[str, str], *, timeout: float, max_bytes: int) -> HttpResult:
        target = self._origin.prefix + path
        url = self._origin.url(target)
        what = f"GET {url}"
        request = request_bytes("GET", self._origin, target, headers, None, keep_alive=True)
        started = time.monotonic()
        deadline = started + timeout
        for attempt in (1, 2):
            reused = self._sock is not None
            if self._sock is None:
                self._sock = _connect(self._origin, url, deadline, self._peer)
            sock = self._sock
            parser = ResponseParser("GET", max_bytes)
            try:
                _exchange(sock, request, parser, deadline)
            except (OSError, MalformedResponse) as exc:
                self.close()
                stale = reused and parser.received == 0 and not isinstance(exc, (socket.timeout, TimeoutError))
                if stale and attempt == 1:
                    continue  # a keep-alive connection the peer had closed: once more on a fresh one
                raise _exchange_errors(exc, parser, self._peer, what, timeout) from None
            if not parser.keep_alive:
                self.close()
            return _result(parser, started)
        raise PeerUnavailable(f"{self._peer} unreachable for {what}", sent=False)  # pragma: no cover
