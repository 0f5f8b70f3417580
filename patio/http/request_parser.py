"""HTTP/1.1 request parsing without I/O (in the manner of h11).

Bytes go in with ``feed()``; complete requests come out of ``next_request()``.
Framing is by ``Content-Length`` only: a chunked request body is refused with
411 (sidecar clients send small JSON bodies with a length), and any other
``Transfer-Encoding`` with 501.  Every error is a ``PatioError`` carrying the
status to answer with; after one, the connection must be closed.

Nothing here knows about sockets or asyncio.
"""

import re
from typing import List, NamedTuple, Optional, Tuple

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
# Leading empty lines a server should ignore before a request line (RFC 9112 §2.2).
MAX_LEADING_EMPTY_LINES = 8


class ParsedRequest(NamedTuple):
    method: str
    target: str
    version: str
    headers: List[Tuple[str, str]]  # names lower-cased, in order
    body: bytes
    keep_alive: bool


class RequestHead(NamedTuple):
    method: str
    target: str
    version: str
    headers: List[Tuple[str, str]]
    content_length: int
    keep_alive: bool
    expect_continue: bool


class RequestParser:
    """One connection's request stream.  Not thread-safe; one per connection."""

    def __init__(self, max_header_bytes: int, max_body_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._head: Optional[RequestHead] = None
        self._error: Optional[PatioError] = None

    @property
    def head(self) -> Optional[RequestHead]:
        """The head of the request whose body is still awaited, if any."""
        return self._head

    @property
    def in_progress(self) -> bool:
        """True when part of a request is buffered (the client owes us bytes)."""
        return self._head is not None or bool(self._buffer.strip(b"\r\n"))

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_request(self) -> Optional[ParsedRequest]:
        """The next complete request, or ``None`` if more bytes are needed.  Raises ``PatioError``."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except PatioError as exc:
            self._error = exc
            raise

    def _next(self) -> Optional[ParsedRequest]:
        if self._head is None:
            self._head = self._parse_head()
            if self._head is None:
                return None
        head = self._head
        if len(self._buffer) < head.content_length:
            return None
        body = bytes(self._buffer[: head.content_length])
        del self._buffer[: head.content_length]
        self._head = None
        return ParsedRequest(head.method, head.target, head.version, head.headers, body, head.keep_alive)

    def _parse_head(self) -> Optional[RequestHead]:
        buffer = self._buffer
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
        lines = raw.split(b"\n")
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        method, target, version = _parse_request_line(lines[0])
        headers = _parse_headers(lines[1:])
        return _frame(method, target, version, headers, self.max_body_bytes)


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


def _parse_headers(lines: List[bytes]) -> List[Tuple[str, str]]:
    headers: List[Tuple[str, str]] = []
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
    return headers


def _frame(method: str, target: str, version: str, headers: List[Tuple[str, str]], max_body: int) -> RequestHead:
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
    return RequestHead(method, target, version, headers, length, keep_alive, "100-continue" in expect and length > 0)


def _excerpt(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("latin-1")
    return repr(text + ("..." if len(data) > limit else ""))
