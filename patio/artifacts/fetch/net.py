"""Blocking HTTP for downloads: pooled keep-alive connections, streamed bodies, timeouts, retries.

Run only in worker threads.  ``patio.http.client`` reads whole answers
into memory, which suits JSON from a local engine; downloads need streaming,
connection reuse across thousands of ranged GETs, proxies and TLS to the
internet, so they get this small client on ``http.client``.

Every socket operation has a timeout; a stalled body is a ``Transient`` error
and the caller's bounded retry resumes it.  URLs in messages lose their query
string (presigned URLs carry signatures there).
"""

import base64
import http.client
import logging
import re
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

from patio.artifacts.errors import (
    ArtifactAccessDenied,
    ArtifactError,
    ArtifactNotFound,
    ObjectChanged,
    Transient,
)
from patio.artifacts.fetch.retry import TRANSIENT_STATUSES, NetConfig, parse_retry_after
from patio.artifacts.uri import display_uri as redact  # scheme://host/path, no userinfo or query
from patio.errors import PatioError

log = logging.getLogger("patio.artifacts")

# Error answers are read this far for their message; the rest is discarded.
MAX_ERROR_BODY = 64 * 1024
# A listing page (1000 S3 keys, 1000 HF tree entries) is a few hundred KB; this bounds a hostile one.
MAX_METADATA_BODY = 32 * 1024 * 1024
# Idle keep-alive connections kept per host; more threads than this just reconnect.
MAX_IDLE_PER_HOST = 64
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
USER_AGENT = "patio-downloader"


def redirect_target(url: str, location: str, what: str) -> str:
    """Where a 3xx answer to ``url`` sends us: an http(s) URL, or ``ArtifactError``.

    ``Location`` is the server's word, not the operator's: ``file:///etc/passwd``,
    ``ftp://`` or ``gopher://`` there must not become a request.
    """
    target = urllib.parse.urljoin(url, location.strip())
    scheme = urllib.parse.urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        raise ArtifactError(f"{what}: redirect to a non-HTTP location ({scheme or 'no'} scheme) refused")
    if not urllib.parse.urlsplit(target).hostname:
        raise ArtifactError(f"{what}: redirect to a location without a host refused")
    return target


def origin(url: str) -> Tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


class Response:
    """A streamed answer.  ``close()`` returns the connection to the pool when the body was read whole."""

    def __init__(
        self,
        client: "HttpClient",
        key: Tuple[str, str, int],
        conn: http.client.HTTPConnection,
        raw: http.client.HTTPResponse,
        url: str,
    ) -> None:
        self._client = client
        self._key = key
        self._conn: Optional[http.client.HTTPConnection] = conn
        self._raw = raw
        self.url = url
        self.status = raw.status
        self.headers: Dict[str, str] = {}
        for name, value in raw.getheaders():
            lower = name.lower()
            self.headers[lower] = value if lower not in self.headers else self.headers[lower] + ", " + value

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def read(self, size: int) -> bytes:
        try:
            return self._raw.read(size)
        except (socket.timeout, TimeoutError):
            self._discard()
            raise Transient(f"read from {redact(self.url)} stalled") from None
        except (OSError, http.client.HTTPException, AttributeError, ValueError) as exc:
            # AttributeError/ValueError: http.client after the socket was shut down by abort().
            self._discard()
            raise Transient(f"connection lost while reading {redact(self.url)}: {exc!r}") from None

    def read_all(self, limit: int = MAX_METADATA_BODY) -> bytes:
        chunks: List[bytes] = []
        total = 0
        while True:
            chunk = self.read(min(256 * 1024, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                self._discard()
                raise ArtifactError(f"answer from {redact(self.url)} is larger than {limit} bytes")
        self.close()
        return b"".join(chunks)

    def abort(self) -> None:
        """From another thread: make a blocked ``read`` return now (shutdown, not close, so the
        reading thread never finds its objects freed under it)."""
        sock = getattr(self._conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._raw.isclosed() and not self._raw.will_close:
            self._client._release(self._key, conn)
        else:
            # Unread body or Connection: close: the connection cannot carry another request.
            conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpClient:
    """Keep-alive connections shared by the download threads of one job."""

    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self._idle: Dict[Tuple[str, str, int], List[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._ssl: Optional[ssl.SSLContext] = None

    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                context = ssl.create_default_context()
                if self.config.ca_file:
                    context.load_verify_locations(self.config.ca_file)
                self._ssl = context
            return self._ssl

    def _proxy_for(self, scheme: str, host: str) -> Optional[str]:
        proxy = self.config.proxies.get(scheme)
        if not proxy:
            return None
        bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 - missing from typeshed
        if self.config.no_proxy and bypass(host, {"no": self.config.no_proxy}):
            return None
        return proxy

    def _connect(self, key: Tuple[str, str, int]) -> http.client.HTTPConnection:
        """A connection (not yet open) whose socket the egress policy opens: only to addresses
        of the target it allowed, resolved once (``fetch/egress.py``)."""
        scheme, host, port = key
        proxy = self._proxy_for(scheme, host)
        timeout = self.config.timeout
        egress = self.config.egress
        direct: http.client.HTTPConnection
        if proxy is None:
            if scheme == "https":
                direct = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl_context())
            else:
                direct = http.client.HTTPConnection(host, port, timeout=timeout)

            def pinned(address: Tuple[str, int], timeout: Optional[float], source: Any = None) -> socket.socket:
                return egress.connect(host, port, timeout, source)

            direct._create_connection = pinned  # type: ignore[attr-defined]
            return direct
        pparts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        pport = pparts.port or (443 if pparts.scheme == "https" else 80)
        tunnel_headers: Dict[str, str] = {}
        if pparts.username:
            userpass = f"{urllib.parse.unquote(pparts.username)}:{urllib.parse.unquote(pparts.password or '')}"
            tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(userpass.encode()).decode()
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                pparts.hostname or "", pport, timeout=timeout, context=self._ssl_context()
            )
            conn.set_tunnel(host, port, headers=tunnel_headers)
        else:
            conn = http.client.HTTPConnection(pparts.hostname or "", pport, timeout=timeout)
            conn._patio_proxy_headers = tunnel_headers  # type: ignore[attr-defined]
        conn._patio_via_proxy = scheme == "http"  # type: ignore[attr-defined]

        def checked(address: Tuple[str, int], timeout: Optional[float], source: Any = None) -> socket.socket:
            # The proxy resolves the target itself; the policy still judges the target (the proxy's
            # own address is the operator's choice).
            egress.check_proxied(host, port)
            return socket.create_connection(address, timeout, source)

        conn._create_connection = checked  # type: ignore[attr-defined]
        return conn

    def _acquire(self, key: Tuple[str, str, int]) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self._connect(key), False

    def _release(self, key: Tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    def request(
        self,
        method: str,
        url: str,
        headers: Optional[Sequence[Tuple[str, str]]] = None,
        body: Optional[bytes] = None,
    ) -> Response:
        """Send one request; the answer whatever its status.  Network failures raise ``Transient``."""
        key = origin(url)
        parts = urllib.parse.urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        for _ in range(2):
            conn, reused = self._acquire(key)
            if getattr(conn, "_patio_via_proxy", False):
                send_target = url
                extra = list(getattr(conn, "_patio_proxy_headers", {}).items())
            else:
                send_target = target
                extra = []
            all_headers = list(headers or ()) + extra
            has_host = any(name.lower() == "host" for name, _ in all_headers)
            if conn.sock is None:
                self._open(conn, key, method, url)
            try:
                # A signed request carries its own Host (the one it signed): send exactly one.
                conn.putrequest(method, send_target, skip_host=has_host, skip_accept_encoding=True)
                names = set()
                for name, value in all_headers:
                    conn.putheader(name, value)
                    names.add(name.lower())
                if "user-agent" not in names:
                    conn.putheader("User-Agent", USER_AGENT)
                if "accept-encoding" not in names:
                    # Sizes and hashes are of the stored bytes: never let a server compress them.
                    conn.putheader("Accept-Encoding", "identity")
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                raw = conn.getresponse()
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                raise ArtifactError(f"TLS verification failed for {redact(url)}: {exc.verify_message}") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection: one fresh try
                raise Transient(f"{method} {redact(url)}: connection dropped ({exc!r})") from None
            except (socket.timeout, TimeoutError):
                conn.close()
                raise Transient(f"{method} {redact(url)}: timed out after {self.config.timeout:g}s") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise Transient(f"{method} {redact(url)}: {exc!r}") from None
            return Response(self, key, conn, raw, url)
        raise Transient(f"{method} {redact(url)}: connection dropped twice")

    @staticmethod
    def _open(conn: http.client.HTTPConnection, key: Tuple[str, str, int], method: str, url: str) -> None:
        """Connect (DNS, the egress policy, TCP, TLS).  Refused, unreachable, timed out and unknown
        names all read the same to the caller ("could not connect"), so a download request cannot
        serve as a port scanner; the reason goes to Patio's log for the operator."""
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise ArtifactError(f"TLS verification failed for {redact(url)}: {exc.verify_message}") from None
        except PatioError:  # EgressRefused: never retried, never detailed
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            log.info("download connection to %s port %d failed: %r", key[1], key[2], exc)
            raise Transient(f"{method} {redact(url)}: could not connect") from None


class BodyStream:
    """A response body as the fetch engine reads it: ``offset`` says where its bytes start."""

    def __init__(self, response: Response, offset: int) -> None:
        self._response = response
        self.offset = offset

    def read(self, size: int) -> bytes:
        return self._response.read(size)

    def close(self) -> None:
        self._response.close()

    def abort(self) -> None:
        self._response.abort()


def range_start(response: Response, size: Optional[int], what: str) -> int:
    """Where a 200/206 body starts; ``ObjectChanged`` when the object's total size is not ``size``."""
    if response.status == 200:
        length = response.header("content-length")
        if size is not None and length is not None and length.isdigit() and int(length) != size:
            response.close()
            raise ObjectChanged(f"{what}: size is now {length}, listed {size}")
        return 0
    match = _CONTENT_RANGE.match((response.header("content-range") or "").strip())
    if match is None:
        response.close()
        raise ArtifactError(f"{what}: 206 answer without a usable Content-Range")
    total = match.group(3)
    if size is not None and total.isdigit() and int(total) != size:
        response.close()
        raise ObjectChanged(f"{what}: size is now {total}, listed {size}")
    return int(match.group(1))


def error_for_status(response: Response, what: str, detail: str = "") -> Exception:
    """The exception for a non-success answer: retryable, changed, or a precise fatal error."""
    status = response.status
    suffix = f": {detail}" if detail else ""
    if status in TRANSIENT_STATUSES:
        return Transient(f"{what}: HTTP {status}{suffix}", parse_retry_after(response.header("retry-after")))
    if status in (401, 403):
        return ArtifactAccessDenied(f"access denied to {what} (HTTP {status}){suffix}")
    if status == 404:
        return ArtifactNotFound(f"{what} not found (HTTP 404){suffix}")
    if status in (412, 416):
        return ObjectChanged(f"{what} changed during the download (HTTP {status})")
    return ArtifactError(f"{what}: unexpected HTTP {status}{suffix}")
