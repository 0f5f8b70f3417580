"""RESP2, the Redis wire protocol, without sockets: commands to bytes, bytes to replies.

Spec: https://redis.io/docs/latest/develop/reference/protocol-spec/ (RESP2 types:
``+`` simple string, ``-`` error, ``:`` integer, ``$`` bulk string (``$-1`` nil),
``*`` array (``*-1`` nil), nested).  ``encode`` builds one command as an array of
bulk strings; several concatenated are a pipeline.  ``RespParser`` takes bytes as
they arrive and yields one reply per command.  An error *reply* is a value
(``ReplyError``): in a pipeline one failed command must not hide the others'
answers.  A reply that breaks the protocol or a limit raises ``RespError``: the
connection is unusable and the caller closes it.
"""

from typing import Any, List, Optional, Sequence, Tuple, Union

# One reply line (type byte + digits or a simple string/error) longer than this is refused.
MAX_LINE_BYTES = 64 * 1024
# One bulk string longer than this is refused (we read back std hashes: 20 digits).
MAX_BULK_BYTES = 1024 * 1024
# One array longer than this is refused (SCAN pages are COUNT-sized; 1000 by default here).
MAX_ARRAY_ITEMS = 1 << 20
# Arrays nested deeper than this are refused (SCAN answers are 2 levels).
MAX_DEPTH = 8
# Bytes buffered while a reply is incomplete.
MAX_BUFFER_BYTES = 8 * 1024 * 1024

Arg = Union[bytes, str, int]


class RespError(Exception):
    """The server's bytes are not RESP2 (or break a limit)."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``, ``-WRONGPASS ...``): a value in a pipeline, raised on demand."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        return self.message.split(" ", 1)[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplyError) and other.message == self.message

    def __hash__(self) -> int:
        return hash(self.message)


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return str(value).encode("ascii")
    return value.encode("utf-8")


def encode(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for value in args:
        raw = _arg(value)
        parts.append(b"$%d\r\n" % len(raw))
        parts.append(raw)
        parts.append(b"\r\n")
    return b"".join(parts)


def encode_pipeline(commands: Sequence[Sequence[Arg]]) -> bytes:
    return b"".join(encode(*command) for command in commands)


_NEED_MORE = object()


class RespParser:
    def __init__(
        self,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_bulk_bytes: int = MAX_BULK_BYTES,
        max_array_items: int = MAX_ARRAY_ITEMS,
        max_depth: int = MAX_DEPTH,
        max_buffer_bytes: int = MAX_BUFFER_BYTES,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_bulk_bytes = max_bulk_bytes
        self.max_array_items = max_array_items
        self.max_depth = max_depth
        self.max_buffer_bytes = max_buffer_bytes
        self._buffer = bytearray()
        self._replies: List[Any] = []

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            value, end = self._value(0, 0)
            if value is _NEED_MORE:
                if len(self._buffer) > self.max_buffer_bytes:
                    raise RespError(f"an incomplete reply passed {self.max_buffer_bytes} bytes")
                return
            del self._buffer[:end]
            self._replies.append(value)

    def next_reply(self) -> Any:
        """The next whole reply, or ``NEED_DATA``."""
        return self._replies.pop(0) if self._replies else NEED_DATA

    def replies(self) -> List[Any]:
        out, self._replies = self._replies, []
        return out

    @property
    def pending(self) -> int:
        return len(self._replies)

    def _line(self, offset: int) -> Tuple[Optional[bytes], int]:
        buf = self._buffer
        end = buf.find(b"\r\n", offset, offset + self.max_line_bytes + 2)
        if end < 0:
            if len(buf) - offset > self.max_line_bytes:
                raise RespError(f"a reply line longer than {self.max_line_bytes} bytes")
            return None, offset
        return bytes(buf[offset:end]), end + 2

    def _int(self, raw: bytes) -> int:
        try:
            return int(raw)
        except ValueError:
            raise RespError(f"expected an integer, got {raw[:40]!r}") from None

    def _value(self, offset: int, depth: int) -> Tuple[Any, int]:
        line, after = self._line(offset)
        if line is None:
            return _NEED_MORE, offset
        if not line:
            raise RespError("an empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace"), after
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace")), after
        if kind == b":":
            return self._int(rest), after
        if kind == b"$":
            length = self._int(rest)
            if length == -1:
                return None, after
            if length < 0 or length > self.max_bulk_bytes:
                raise RespError(f"bulk string of {length} bytes (limit {self.max_bulk_bytes})")
            if len(self._buffer) < after + length + 2:
                return _NEED_MORE, offset
            if self._buffer[after + length : after + length + 2] != b"\r\n":
                raise RespError("bulk string not followed by CRLF")
            return bytes(self._buffer[after : after + length]), after + length + 2
        if kind == b"*":
            count = self._int(rest)
            if count == -1:
                return None, after
            if count < 0 or count > self.max_array_items:
                raise RespError(f"array of {count} items (limit {self.max_array_items})")
            if depth >= self.max_depth:
                raise RespError(f"arrays nested deeper than {self.max_depth}")
            items: List[Any] = []
            for _ in range(count):
                item, after = self._value(after, depth + 1)
                if item is _NEED_MORE:
                    return _NEED_MORE, offset
                items.append(item)
            return items, after
        raise RespError(f"unknown reply type {kind!r}")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = _NeedData()
