"""HTTP/1.1 request parsing without I/O (in the manner of h11).

Bytes go in with ``feed()``; complete requests come out of ``next_request()``.
Framing is by ``Content-Length`` only: a chunked request body is refused with
411 (sidecar clients send small JSON bodies with a length), and any other
``Transfer-Encoding`` with 501.  Every error is a ``PatioError`` carrying the
status to answer with; after one, the connection must be closed.

Probes and scrapes send the same head, byte for byte, every time (the kubelet's, Prometheus'):
a ``HeadCache`` shared by one server's parsers remembers what such a head parsed to, so a
repeated request costs one dictionary lookup, not a parse.  The result is the same either way:
the cache is keyed by the head's exact bytes and holds only heads that parsed without error.

Nothing here knows about sockets or asyncio.
"""

import re
from typing import Dict, List, NamedTuple, Optional, Tuple

from patio.errors import (
    BadRequest,
    HeadersTooLarge,
    HttpVersionNotSupported,
    LengthRequired,
    NotImplementedMethod,
    PatioError,
    PayloadTooLarge,
)

# RFC 9110 §5.6.2 token characters, for methods and header names.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")
_DIGITS = re.compile(rb"^[0-9]+$")
# Request targets: visible ASCII only (RFC 9112 §3.2); raw spaces or controls are malformed.
_TARGET = re.compile(rb"^[\x21-\x7e]+$")
# Field values: visible ASCII, obs-text, SP and HTAB (RFC 9110 §5.5); no CR, LF or NUL.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NEWLINES = b"\r\n"
# Leading empty lines a server should ignore before a request line (RFC 9112 §2.2).
MAX_LEADING_EMPTY_LINES = 8
# Heads remembered by a HeadCache, and the largest head remembered: a probe's head is about
# 100 bytes, a Prometheus scrape's about 250.  At most 32 x (1 KiB + its parse) resident.
MAX_CACHED_HEADS = 32
MAX_CACHED_HEAD_BYTES = 1024

Header = Tuple[str, str]


class ParsedRequest(NamedTuple):
    method: str
    target: str
    version: str
    headers: Tuple[Header, ...]  # names lower-cased, in order
    body: bytes
    keep_alive: bool


class RequestHead(NamedTuple):
    method: str
    target: str
    version: str
    headers: Tuple[Header, ...]
    content_length: int
    keep_alive: bool
    expect_continue: bool
    bodiless: Optional[ParsedRequest]  # the whole request, when it has no body (built once)


class HeadCache:
    """Parsed heads by their exact bytes, oldest dropped first past ``MAX_CACHED_HEADS``.

    One cache serves the parsers of one server (the same limits); a head that failed to parse
    is never in it.  Only the event loop touches it.
    """

    def __init__(self, entries: int = MAX_CACHED_HEADS, max_head_bytes: int = MAX_CACHED_HEAD_BYTES) -> None:
        self.entries = entries
        self.max_head_bytes = max_head_bytes
        self.heads: Dict[bytes, RequestHead] = {}  # read directly on the hot path; filled by put()

    def __len__(self) -> int:
        return len(self.heads)

    def put(self, raw: bytes, head: RequestHead) -> None:
        if len(raw) > self.max_head_bytes:
            return
        heads = self.heads
        if len(heads) >= self.entries:
            del heads[next(iter(heads))]
        heads[raw] = head


class RequestParser:
    """One connection's request stream.  Not thread-safe; one per connection."""

    __slots__ = ("_buffer", "_cache", "_error", "_head", "max_body_bytes", "max_header_bytes")

    def __init__(self, max_header_bytes: int, max_body_bytes: int, cache: Optional[HeadCache] = None) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._head: Optional[RequestHead] = None
        self._error: Optional[PatioError] = None
        self._cache = cache

    @property
    def head(self) -> Optional[RequestHead]:
        """The head of the request whose body is still awaited, if any."""
        return self._head

    @property
    def in_progress(self) -> bool:
        """True when part of a request is buffered (the client owes us bytes)."""
        if not self._buffer:
            return self._head is not None
        return self._head is not None or bool(self._buffer.strip(b"\r\n"))

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as part of a request."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_request(self) -> Optional[ParsedRequest]:
        """The next complete request, or ``None`` if more bytes are needed.  Raises ``PatioError``."""
        if self._error is not None:
            raise self._error
        head = self._head
        if head is None:
            if not self._buffer:
                return None
            try:
                head = self._parse_head()
            except PatioError as exc:
                self._error = exc
                raise
            if head is None:
                return None
            if head.bodiless is not None:
                return head.bodiless
            self._head = head
        length = head.content_length
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._head = None
        return ParsedRequest(head.method, head.target, head.version, head.headers, body, head.keep_alive)

    def _parse_head(self) -> Optional[RequestHead]:
        buffer = self._buffer
        if buffer[0] in _NEWLINES:
            skipped = 0
            while buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
                del buffer[: 2 if buffer[:1] == b"\r" else 1]
                skipped += 1
                if skipped > MAX_LEADING_EMPTY_LINES:
                    raise BadRequest("too many empty lines before the request line")
        end = buffer.find(b"\r\n\r\n")
        sep = 4
        lf_end = buffer.find(b"\n\n")
        if lf_end != -1 and (end == -1 or lf_end < end):
            end, sep = lf_end, 2
        if end == -1:
            if len(buffer) > self.max_header_bytes:
                raise HeadersTooLarge(f"request line and headers exceed {self.max_header_bytes} bytes")
            return None
        if end + sep > self.max_header_bytes:
            raise HeadersTooLarge(f"request line and headers exceed {self.max_header_bytes} bytes")
        raw = bytes(buffer[:end])
        del buffer[: end + sep]
        cache = self._cache
        if cache is None:
            return parse_head(raw, self.max_body_bytes)
        head = cache.heads.get(raw)
        if head is None:
            head = parse_head(raw, self.max_body_bytes)
            cache.put(raw, head)
        return head


def parse_head(raw: bytes, max_body_bytes: int) -> RequestHead:
    """The request line and header fields (``raw`` without the blank line that ends them)."""
    lines = raw.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    method, target, version = _parse_request_line(lines[0])
    headers = _parse_headers(lines[1:])
    return _frame(method, target, version, headers, max_body_bytes)


def _parse_request_line(line: bytes) -> Tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise BadRequest(f"malformed request line {_excerpt(line)}")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadRequest(f"malformed method {_excerpt(method)}")
    if not _TARGET.match(target):
        raise BadRequest(f"malformed request target {_excerpt(target)}")
    match = _VERSION.match(version)
    if match is None:
        raise BadRequest(f"malformed HTTP version {_excerpt(version)}")
    if match.group(1) != b"1":
        raise HttpVersionNotSupported(f"HTTP version {version.decode('ascii')} is not supported")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _parse_headers(lines: List[bytes]) -> Tuple[Header, ...]:
    headers: List[Header] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obsolete header line folding is not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise BadRequest(f"malformed header line {_excerpt(line)}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadRequest(f"control character in header {name.decode('ascii')!r}")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return tuple(headers)


def _frame(method: str, target: str, version: str, headers: Tuple[Header, ...], max_body: int) -> RequestHead:
    lengths = [v for k, v in headers if k == "content-length"]
    encodings = [v for k, v in headers if k == "transfer-encoding"]
    connection = ",".join(v for k, v in headers if k == "connection").lower()
    tokens = {t.strip() for t in connection.split(",")}
    if version == "HTTP/1.1":
        if not any(k == "host" for k, _ in headers):
            raise BadRequest("HTTP/1.1 request without a Host header", param="Host")
        keep_alive = "close" not in tokens
    else:
        keep_alive = "keep-alive" in tokens
    if encodings:
        if lengths:
            # Both framings at once is the request-smuggling shape (RFC 9112 §6.3).
            raise BadRequest("both Transfer-Encoding and Content-Length", param="Transfer-Encoding")
        if "chunked" in ",".join(encodings).lower():
            raise LengthRequired(
                "chunked request bodies are not accepted; send Content-Length", param="Transfer-Encoding"
            )
        raise NotImplementedMethod(f"unsupported Transfer-Encoding {encodings[0]!r}", param="Transfer-Encoding")
    length = 0
    if lengths:
        if len(lengths) > 1:
            raise BadRequest("more than one Content-Length header", param="Content-Length")
        raw = lengths[0].encode("latin-1")
        if not _DIGITS.match(raw):
            raise BadRequest(f"invalid Content-Length {lengths[0]!r}", param="Content-Length")
        if len(raw) > 18 or int(raw) > max_body:
            raise PayloadTooLarge(f"request body exceeds {max_body} bytes", param="Content-Length")
        length = int(raw)
    expect = ",".join(v for k, v in headers if k == "expect").lower()
    bodiless = None if length else ParsedRequest(method, target, version, headers, b"", keep_alive)
    return RequestHead(
        method, target, version, headers, length, keep_alive, "100-continue" in expect and length > 0, bodiless
    )


def _excerpt(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("latin-1")
    return repr(text + ("..." if len(data) > limit else ""))
