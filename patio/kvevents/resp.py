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

import re
from typing import Any, List, Optional, Sequence, Tuple, Union

# One reply line (type byte + digits or a simple string/error) longer than this is refused.
MAX_LINE_BYTES = 64 * 1024
# One bulk string longer than this is refused (we read back std hashes: 20 digits).
MAX_BULK_BYTES = 1024 * 1024
# One array longer than this is refused: the bridge reads SCAN pages and MGET answers of
# at most a page (SCAN_COUNT keys, a few thousand), never more.
MAX_ARRAY_ITEMS = 100_000
# Values in one reply (all levels together): a hostile server's 4 MB array of integers is
# refused at this count instead of being built.
MAX_REPLY_ITEMS = 200_000
# Arrays nested deeper than this are refused (SCAN answers are 2 levels).
MAX_DEPTH = 8
# Bytes buffered while a reply is incomplete.
MAX_BUFFER_BYTES = 8 * 1024 * 1024

Arg = Union[bytes, str, int]
# A run of one-line replies (``+OK``, ``:1``): what a write pipeline gets back, thousands at a
# time; split in one C call instead of a Python step per reply.
_SIMPLE_RUN = re.compile(rb"(?:[+:][^\r\n]{0,40}\r\n)+")


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


class Commands:
    """A pipeline being built: encoded commands and how many there are."""

    __slots__ = ("count", "parts")

    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.count = 0

    def add(self, *args: Arg) -> None:
        self.parts.append(encode(*args))
        self.count += 1

    def add_encoded(self, data: bytes, count: int) -> None:
        self.parts.append(data)
        self.count += count

    def data(self) -> bytes:
        return b"".join(self.parts)

    def __len__(self) -> int:
        return self.count


class RespParser:
    """Incremental: each byte is looked at once, however the reply is cut into reads.

    A reply being built is kept as a stack of open arrays, so a large answer arriving in
    many reads costs time in proportion to its size (re-parsing from the start on every
    read made a 4 MB array reply cost minutes of CPU).
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_bulk_bytes: int = MAX_BULK_BYTES,
        max_array_items: int = MAX_ARRAY_ITEMS,
        max_reply_items: int = MAX_REPLY_ITEMS,
        max_depth: int = MAX_DEPTH,
        max_buffer_bytes: int = MAX_BUFFER_BYTES,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_bulk_bytes = max_bulk_bytes
        self.max_array_items = max_array_items
        self.max_reply_items = max_reply_items
        self.max_depth = max_depth
        self.max_buffer_bytes = max_buffer_bytes
        self._buffer = bytearray()
        self._pos = 0
        self._replies: List[Any] = []
        # Open arrays of the reply being built: [items so far, items announced].
        self._stack: List[Tuple[List[Any], int]] = []
        self._items = 0  # values in the reply being built
        self._bulk: Optional[int] = None  # length of a bulk string whose bytes are awaited

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        finally:
            if self._pos:
                del self._buffer[: self._pos]
                self._pos = 0
        if len(self._buffer) > self.max_buffer_bytes:
            raise RespError(f"an incomplete reply passed {self.max_buffer_bytes} bytes")

    def next_reply(self) -> Any:
        """The next whole reply, or ``NEED_DATA``."""
        return self._replies.pop(0) if self._replies else NEED_DATA

    def replies(self) -> List[Any]:
        out, self._replies = self._replies, []
        return out

    @property
    def pending(self) -> int:
        return len(self._replies)

    def _line(self) -> Optional[bytes]:
        buf, pos = self._buffer, self._pos
        end = buf.find(b"\r\n", pos, pos + self.max_line_bytes + 2)
        if end < 0:
            if len(buf) - pos > self.max_line_bytes:
                raise RespError(f"a reply line longer than {self.max_line_bytes} bytes")
            return None
        self._pos = end + 2
        return bytes(buf[pos:end])

    @staticmethod
    def _int(raw: bytes) -> int:
        try:
            return int(raw)
        except ValueError:
            raise RespError(f"expected an integer, got {raw[:40]!r}") from None

    def _parse(self) -> None:
        buf = self._buffer
        while True:
            if self._bulk is not None:
                length = self._bulk
                start = self._pos
                if len(buf) < start + length + 2:
                    return
                if buf[start + length : start + length + 2] != b"\r\n":
                    raise RespError("bulk string not followed by CRLF")
                self._pos = start + length + 2
                self._bulk = None
                self._emit(bytes(buf[start : start + length]))
                continue
            if self._pos >= len(buf):
                return
            if not self._stack:
                run = _SIMPLE_RUN.match(buf, self._pos)
                if run is not None:
                    self._simple_run(bytes(buf[self._pos : run.end() - 2]))
                    self._pos = run.end()
                    continue
            line = self._line()
            if line is None:
                return
            if not line:
                raise RespError("an empty reply line")
            kind, rest = line[:1], line[1:]
            if kind == b"+":
                self._emit(rest.decode("utf-8", "replace"))
            elif kind == b"-":
                self._emit(ReplyError(rest.decode("utf-8", "replace")))
            elif kind == b":":
                self._emit(self._int(rest))
            elif kind == b"$":
                length = self._int(rest)
                if length == -1:
                    self._emit(None)
                elif length < 0 or length > self.max_bulk_bytes:
                    raise RespError(f"bulk string of {length} bytes (limit {self.max_bulk_bytes})")
                else:
                    self._bulk = length
            elif kind == b"*":
                count = self._int(rest)
                if count == -1:
                    self._emit(None)
                    continue
                if count < 0 or count > self.max_array_items:
                    raise RespError(f"array of {count} items (limit {self.max_array_items})")
                if len(self._stack) >= self.max_depth:
                    raise RespError(f"arrays nested deeper than {self.max_depth}")
                if count == 0:
                    self._emit([])
                else:
                    self._count(count)
                    self._stack.append(([], count))
            else:
                raise RespError(f"unknown reply type {kind!r}")

    def _simple_run(self, lines: bytes) -> None:
        out = self._replies
        for line in lines.split(b"\r\n"):
            if line[0] == 0x2B:  # +
                out.append(line[1:].decode("utf-8", "replace"))
            else:
                out.append(self._int(line[1:]))

    def _count(self, items: int) -> None:
        self._items += items
        if self._items > self.max_reply_items:
            raise RespError(f"a reply of more than {self.max_reply_items} values")

    def _emit(self, value: Any) -> None:
        stack = self._stack
        while stack:
            items, count = stack[-1]
            items.append(value)
            if len(items) < count:
                return
            stack.pop()
            value = items
        self._items = 0
        self._replies.append(value)


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = _NeedData()
