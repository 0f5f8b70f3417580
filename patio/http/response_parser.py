"""HTTP/1.1 response parsing without I/O, for Patio's own calls to the engine and router.

Bytes go in with ``feed()`` (and ``feed_eof()`` when the peer closes); the
parser says when the head and then the whole body have arrived.  Framing follows
RFC 9112 §6.3: no body for an answer to HEAD or for 1xx/204/304; else chunked
(size lines, data, trailers skipped); else ``Content-Length``; else the body runs
until the peer closes.  Interim 1xx answers (``100 Continue``) are skipped.

Every buffer has a named limit.  A malformed answer raises ``MalformedResponse``,
a body over the caller's limit ``ResponseTooLarge``, a body cut short by the peer
closing ``TruncatedResponse``; the transport maps them to Patio's errors.

Nothing here knows about sockets.
"""

import re
from typing import List, NamedTuple, Optional, Tuple

# Status line plus headers; http.client allows 64 KiB per line and 100 headers.
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
MAX_RESPONSE_HEADERS = 100
# One chunk-size line (size, extensions, CRLF) and the whole trailer section.
MAX_CHUNK_LINE_BYTES = 4 * 1024
MAX_TRAILER_BYTES = 16 * 1024
# Interim 1xx answers skipped before the final one.
MAX_INTERIM_RESPONSES = 8

_STATUS_LINE = re.compile(rb"^HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?$")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DIGITS = re.compile(rb"^[0-9]+$")
_HEX = re.compile(rb"^[0-9A-Fa-f]+$")

# Parser states.
_HEAD = "head"
_LENGTH = "length"
_CHUNK_SIZE = "chunk-size"
_CHUNK_DATA = "chunk-data"
_CHUNK_END = "chunk-end"
_TRAILERS = "trailers"
_UNTIL_CLOSE = "until-close"
_DONE = "done"


class MalformedResponse(Exception):
    """The peer's answer is not HTTP/1.x as RFC 9112 frames it."""


class ResponseTooLarge(MalformedResponse):
    """The body (or its declared length) is over the caller's limit."""


class TruncatedResponse(MalformedResponse):
    """The peer closed the connection before the answer was complete."""


class ResponseHead(NamedTuple):
    status: int
    reason: str
    version: Tuple[int, int]
    headers: List[Tuple[str, str]]  # names lower-cased, in order

    def get(self, name: str) -> Optional[str]:
        """The value of ``name`` (lower case); repeated fields joined with ``, ``."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None


class ResponseParser:
    """One answer to one request.  ``method`` decides whether a body follows (HEAD: never)."""

    def __init__(self, method: str, max_body_bytes: int, max_head_bytes: int = MAX_RESPONSE_HEAD_BYTES) -> None:
        self.method = method.upper()
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.head: Optional[ResponseHead] = None
        self.received = 0  # bytes fed so far, interim answers included
        self._state = _HEAD
        self._buffer = bytearray()
        self._body: List[bytes] = []
        self._body_size = 0
        self._remaining = 0  # of a Content-Length body or of the current chunk
        self._declared_length = 0
        self._interim = 0
        self._keep_alive = False

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    @property
    def keep_alive(self) -> bool:
        """After a complete answer: whether the connection may carry another request."""
        return self.complete and self._keep_alive

    def body(self) -> bytes:
        return b"".join(self._body)

    def feed(self, data: bytes) -> None:
        """Consume bytes; raises ``MalformedResponse`` (or a subclass) on a bad answer."""
        if self._state == _DONE:
            if data:
                # Bytes after a complete answer: the connection cannot be trusted for reuse.
                self._keep_alive = False
            return
        self.received += len(data)
        self._buffer += data
        self._advance()

    def feed_eof(self) -> None:
        """The peer closed.  Completes a close-delimited body; anything else unfinished is truncated."""
        if self._state == _DONE:
            return
        if self._state == _UNTIL_CLOSE:
            self._keep_alive = False
            self._state = _DONE
            return
        if self._state == _HEAD:
            if self.received == 0:
                raise TruncatedResponse("the connection closed without an answer")
            raise TruncatedResponse("the connection closed inside the answer's head")
        if self._state == _LENGTH:
            raise TruncatedResponse(f"body truncated: {self._body_size} of {self._declared_length} bytes")
        raise TruncatedResponse(f"chunked body truncated after {self._body_size} bytes")

    # -- states ---------------------------------------------------------------

    def _advance(self) -> None:
        while True:
            state = self._state
            if state == _HEAD:
                if not self._parse_head():
                    return
            elif state == _LENGTH:
                self._take_body(self._remaining)
                if self._remaining:
                    return
                self._finish()
            elif state == _UNTIL_CLOSE:
                self._take_body(len(self._buffer))
                return
            elif state == _CHUNK_SIZE:
                if not self._parse_chunk_size():
                    return
            elif state == _CHUNK_DATA:
                self._take_body(self._remaining)
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise MalformedResponse("chunk data is not followed by CRLF")
                del self._buffer[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if not self._skip_trailers():
                    return
            else:  # _DONE
                return

    def _take_body(self, wanted: int) -> None:
        take = min(wanted, len(self._buffer))
        if not take:
            return
        if self._body_size + take > self.max_body_bytes:
            raise ResponseTooLarge(f"body is larger than {self.max_body_bytes} bytes")
        self._body.append(bytes(self._buffer[:take]))
        del self._buffer[:take]
        self._body_size += take
        if self._state != _UNTIL_CLOSE:
            self._remaining -= take

    def _finish(self) -> None:
        self._state = _DONE
        if self._buffer:
            self._keep_alive = False  # unexpected extra bytes

    def _find(self, terminator: bytes, limit: int, what: str) -> int:
        """Where ``terminator`` starts in the buffer, or -1 while it has not arrived; ``what``
        (terminator included) running past ``limit`` bytes is an error either way."""
        end = self._buffer.find(terminator)
        if (end < 0 and len(self._buffer) > limit) or end + len(terminator) > limit:
            raise MalformedResponse(f"{what} is larger than {limit} bytes")
        return end

    def _parse_head(self) -> bool:
        end = self._find(b"\r\n\r\n", self.max_head_bytes, "answer head")
        if end < 0:
            return False
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        lines = raw.split(b"\r\n")
        match = _STATUS_LINE.match(lines[0])
        if match is None:
            raise MalformedResponse(f"bad status line {lines[0][:80]!r}")
        version = (int(match.group(1)), int(match.group(2)))
        if version[0] != 1:
            raise MalformedResponse(f"unsupported HTTP version {version[0]}.{version[1]}")
        status = int(match.group(3))
        reason = (match.group(4) or b"").decode("latin-1")
        headers = _parse_fields(lines[1:], MAX_RESPONSE_HEADERS)
        if 100 <= status < 200 and status != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                raise MalformedResponse(f"more than {MAX_INTERIM_RESPONSES} interim answers")
            return True  # skip it; the final answer follows
        if status == 101:
            raise MalformedResponse("the peer switched protocols")
        self.head = ResponseHead(status, reason, version, headers)
        self._start_body(status, version)
        return True

    def _start_body(self, status: int, version: Tuple[int, int]) -> None:
        assert self.head is not None
        connection = {t.strip().lower() for t in (self.head.get("connection") or "").split(",")}
        if version >= (1, 1):
            self._keep_alive = "close" not in connection
        else:
            self._keep_alive = "keep-alive" in connection
        if self.method == "HEAD" or status in (204, 304):
            self._finish()
            return
        coding = self.head.get("transfer-encoding")
        if coding is not None:
            codings = [c.strip().lower() for c in coding.split(",") if c.strip()]
            if codings and codings[-1] == "chunked":
                if self.head.get("content-length") is not None:
                    self._keep_alive = False  # RFC 9112 §6.3: possible smuggling; do not reuse
                self._state = _CHUNK_SIZE
                return
            self._keep_alive = False
            self._state = _UNTIL_CLOSE
            return
        length = self._content_length()
        if length is None:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE
            return
        if length > self.max_body_bytes:
            raise ResponseTooLarge(f"declared body of {length} bytes is larger than {self.max_body_bytes} bytes")
        self._declared_length = length
        self._remaining = length
        self._state = _LENGTH

    def _content_length(self) -> Optional[int]:
        assert self.head is not None
        values = [v for k, v in self.head.headers if k == "content-length"]
        if not values:
            return None
        seen = {part.strip() for value in values for part in value.split(",")}
        if len(seen) != 1:
            raise MalformedResponse(f"conflicting Content-Length values {sorted(seen)}")
        value = seen.pop().encode("latin-1")
        if not _DIGITS.match(value) or len(value) > 18:
            raise MalformedResponse(f"bad Content-Length {value[:40]!r}")
        return int(value)

    def _parse_chunk_size(self) -> bool:
        end = self._find(b"\r\n", MAX_CHUNK_LINE_BYTES, "chunk size line")
        if end < 0:
            return False
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        size_text = line.split(b";", 1)[0].strip()
        if not _HEX.match(size_text) or len(size_text) > 15:
            raise MalformedResponse(f"bad chunk size {size_text[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            self._state = _TRAILERS
            return True
        if self._body_size + size > self.max_body_bytes:
            raise ResponseTooLarge(f"body is larger than {self.max_body_bytes} bytes")
        self._remaining = size
        self._state = _CHUNK_DATA
        return True

    def _skip_trailers(self) -> bool:
        if self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
            self._finish()
            return True
        end = self._find(b"\r\n\r\n", MAX_TRAILER_BYTES, "trailer section")
        if end < 0:
            return False
        _parse_fields(bytes(self._buffer[:end]).split(b"\r\n"), MAX_RESPONSE_HEADERS)  # validated, then dropped
        del self._buffer[: end + 4]
        self._finish()
        return True


def _parse_fields(lines: List[bytes], limit: int) -> List[Tuple[str, str]]:
    if len(lines) > limit:
        raise MalformedResponse(f"more than {limit} header fields")
    fields: List[Tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise MalformedResponse(f"bad header line {line[:80]!r}")
        fields.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    return fields
