"""ZMTP 3.0/3.1 with the NULL mechanism, client side, without sockets.

Enough of ZeroMQ's wire protocol to be a SUB (the engine's event stream) or a
DEALER (its replay ROUTER) against libzmq: the greeting, the READY handshake,
multipart messages, SUBSCRIBE as a message (3.0) or a command (3.1), PING/PONG.
Specs: https://rfc.zeromq.org/spec/23/ (ZMTP 3.0), https://rfc.zeromq.org/spec/37/ (3.1).

Bytes in (``receive_data``), events out (``next_event``); bytes the protocol
itself must send (our READY, PONG) queue in ``data_to_send``.  The IO loop only
moves bytes.  A frame larger than ``max_frame_bytes`` is never buffered: its bytes
are counted off and its message is reported as ``Dropped`` (the stream stays
usable).  A violation of the protocol itself raises ``ZmtpError``: the caller
closes the connection.
"""

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

# Frame bodies larger than this are skipped, not buffered (a vLLM batch is a few KB;
# one with thousands of blocks stays well under a megabyte).
MAX_FRAME_BYTES = 16 * 1024 * 1024
# A message with more frames than this is dropped (the engines send 3, replay answers 4).
MAX_MESSAGE_FRAMES = 8
# Command bodies (READY, PING, ERROR) are tiny; larger ones are a protocol error.
MAX_COMMAND_BYTES = 64 * 1024

GREETING_SIZE = 64
SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
MECHANISM_NULL = b"NULL" + b"\x00" * 16

FLAG_MORE = 0x01
FLAG_LONG = 0x02
FLAG_COMMAND = 0x04

# Which peer socket types each of ours may talk to (ZMTP 3.0 "socket compatibility").
COMPATIBLE = {"SUB": ("PUB", "XPUB"), "DEALER": ("ROUTER", "DEALER", "REP")}

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


class ZmtpError(Exception):
    """The peer broke ZMTP (or is not a compatible ZeroMQ socket): close the connection."""


@dataclass(frozen=True)
class Ready:
    """The handshake is done; the peer's READY metadata (``Socket-Type``, ``Identity``...)."""

    version: Tuple[int, int]
    properties: Dict[str, bytes]


@dataclass(frozen=True)
class Message:
    frames: List[bytes]


@dataclass(frozen=True)
class Dropped:
    """A message we refused to buffer; the stream continues after it."""

    reason: str
    size: int


@dataclass(frozen=True)
class PeerError:
    """The peer sent an ERROR command (it closes next)."""

    reason: str


Event = Union[Ready, Message, Dropped, PeerError]


def greeting(minor: int = 1) -> bytes:
    """Our greeting: signature, version 3.``minor``, NULL, as-server 0, filler."""
    return SIGNATURE + bytes((3, minor)) + MECHANISM_NULL + b"\x00" + b"\x00" * 31


def encode_frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (FLAG_MORE if more else 0) | (FLAG_COMMAND if command else 0)
    if len(body) > 255:
        return bytes((flags | FLAG_LONG,)) + _U64.pack(len(body)) + body
    return bytes((flags, len(body))) + body


def encode_command(name: str, data: bytes = b"") -> bytes:
    raw = name.encode("ascii")
    return encode_frame(bytes((len(raw),)) + raw + data, command=True)


def encode_properties(properties: Dict[str, bytes]) -> bytes:
    out = b""
    for name, value in properties.items():
        raw = name.encode("ascii")
        out += bytes((len(raw),)) + raw + _U32.pack(len(value)) + value
    return out


def decode_properties(data: bytes) -> Dict[str, bytes]:
    props: Dict[str, bytes] = {}
    offset = 0
    while offset < len(data):
        size = data[offset]
        name = data[offset + 1 : offset + 1 + size]
        offset += 1 + size
        if len(name) != size or offset + 4 > len(data):
            raise ZmtpError("truncated READY property")
        (length,) = _U32.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise ZmtpError("truncated READY property value")
        # Property names are case-insensitive (ZMTP 3.0 "READY").
        props[name.decode("ascii", "replace").lower()] = bytes(data[offset : offset + length])
        offset += length
    return props


@dataclass
class _Partial:
    frames: List[bytes] = field(default_factory=list)
    dropping: str = ""
    size: int = 0


class ZmtpClient:
    """One connection's protocol state.  Feed it every byte read; send ``data_to_send()``."""

    def __init__(
        self,
        socket_type: str,
        *,
        minor: int = 1,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_message_frames: int = MAX_MESSAGE_FRAMES,
    ) -> None:
        if socket_type not in COMPATIBLE:
            raise ValueError(f"unsupported socket type {socket_type!r}")
        self.socket_type = socket_type
        self.max_frame_bytes = max_frame_bytes
        self.max_message_frames = max_message_frames
        self.version: Optional[Tuple[int, int]] = None  # negotiated, once the peer's greeting arrived
        self.ready = False
        self._minor = minor
        self._buffer = bytearray()
        self._outgoing = bytearray(greeting(minor))
        self._events: List[Event] = []
        self._partial = _Partial()
        self._skip = 0  # bytes of an oversize frame body still to count off
        self._skip_more = False

    # -- output ------------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def subscribe(self, topic: bytes) -> bytes:
        """Bytes that subscribe to ``topic`` (a prefix): a command on 3.1, a message on 3.0."""
        self._require_ready()
        if self.version is not None and self.version >= (3, 1):
            return encode_command("SUBSCRIBE", topic)
        return encode_frame(b"\x01" + topic)

    def message(self, frames: List[bytes]) -> bytes:
        self._require_ready()
        last = len(frames) - 1
        return b"".join(encode_frame(f, more=i < last) for i, f in enumerate(frames))

    def ping(self, context: bytes = b"") -> bytes:
        """A 3.1 PING (TTL 0: we only want the PONG); ``b""`` when the peer speaks 3.0."""
        self._require_ready()
        if self.version is None or self.version < (3, 1):
            return b""
        return encode_command("PING", b"\x00\x00" + context)

    def _require_ready(self) -> None:
        if not self.ready:
            raise ZmtpError("handshake not finished")

    # -- input -------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        self._parse()

    def next_event(self) -> Optional[Event]:
        return self._events.pop(0) if self._events else None

    def events(self) -> List[Event]:
        out, self._events = self._events, []
        return out

    def _parse(self) -> None:
        buf = self._buffer
        while True:
            if self.version is None:
                if not self._parse_greeting():
                    return
                continue
            if self._skip:
                take = min(self._skip, len(buf))
                del buf[:take]
                self._skip -= take
                if self._skip:
                    return
                if not self._skip_more:
                    self._finish_message()
                continue
            if len(buf) < 2:
                return
            flags = buf[0]
            if flags & 0xF8:
                raise ZmtpError(f"reserved frame flag bits set: 0x{flags:02x}")
            if flags & FLAG_LONG:
                if len(buf) < 9:
                    return
                (size,) = _U64.unpack_from(buf, 1)
                header = 9
            else:
                size = buf[1]
                header = 2
            command = bool(flags & FLAG_COMMAND)
            more = bool(flags & FLAG_MORE)
            if command:
                if more:
                    raise ZmtpError("a command frame with the MORE flag")
                if size > MAX_COMMAND_BYTES:
                    raise ZmtpError(f"command of {size} bytes")
            elif size > self.max_frame_bytes:
                # Count the body off without keeping it; the message is reported dropped.
                del buf[:header]
                self._partial.dropping = self._partial.dropping or f"frame of {size} bytes > {self.max_frame_bytes}"
                self._partial.size += size
                self._partial.frames.clear()
                self._skip, self._skip_more = size, more
                continue
            if len(buf) < header + size:
                return
            body = bytes(buf[header : header + size])
            del buf[: header + size]
            if command:
                self._command(body)
                continue
            if not self.ready:
                raise ZmtpError("a message before the READY handshake")
            self._frame(body, more)

    def _parse_greeting(self) -> bool:
        buf = self._buffer
        # Reject a non-ZMTP peer as soon as its first bytes show it (an HTTP server, say).
        if buf[:1] and buf[0] != 0xFF:
            raise ZmtpError(f"not a ZeroMQ peer (greeting starts with {bytes(buf[:8])!r})")
        if len(buf) >= 10 and buf[9] & 0x01 != 0x01:
            raise ZmtpError("not a ZeroMQ peer (bad signature)")
        if len(buf) >= 11 and buf[10] < 3:
            raise ZmtpError(f"peer speaks ZMTP {buf[10]}.x; 3.0 or later is needed")
        if len(buf) < GREETING_SIZE:
            return False
        major, minor = buf[10], buf[11]
        mechanism = bytes(buf[12:32]).rstrip(b"\x00")
        if mechanism != b"NULL":
            raise ZmtpError(
                f"peer wants security mechanism {mechanism.decode('ascii', 'replace')}, only NULL is spoken"
            )
        del buf[:GREETING_SIZE]
        # Both sides speak the lower version (ZMTP 3.1 "version negotiation").
        self.version = (3, min(self._minor, minor)) if major == 3 else (3, self._minor)
        self._outgoing += encode_command("READY", encode_properties({"Socket-Type": self.socket_type.encode()}))
        return True

    def _command(self, body: bytes) -> None:
        if not body or len(body) < 1 + body[0]:
            raise ZmtpError("truncated command name")
        name = body[1 : 1 + body[0]].decode("ascii", "replace")
        data = body[1 + body[0] :]
        if name == "READY":
            if self.ready:
                raise ZmtpError("a second READY")
            props = decode_properties(data)
            peer_type = props.get("socket-type", b"").decode("ascii", "replace")
            if peer_type not in COMPATIBLE[self.socket_type]:
                raise ZmtpError(f"a {self.socket_type} cannot talk to a {peer_type or 'peer without Socket-Type'}")
            self.ready = True
            assert self.version is not None
            self._events.append(Ready(self.version, props))
        elif name == "ERROR":
            reason = data[1 : 1 + data[0]].decode("utf-8", "replace") if data else ""
            self._events.append(PeerError(reason))
        elif name == "PING":
            # Answer with the context the peer sent (after its 2-byte TTL).
            self._outgoing += encode_command("PONG", data[2:])
        # PONG, and commands from later versions, need nothing from us.

    def _frame(self, body: bytes, more: bool) -> None:
        partial = self._partial
        if not partial.dropping:
            if len(partial.frames) >= self.max_message_frames:
                partial.dropping = f"more than {self.max_message_frames} frames"
                partial.frames.clear()
            else:
                partial.frames.append(body)
        partial.size += len(body)
        if not more:
            self._finish_message()

    def _finish_message(self) -> None:
        partial = self._partial
        if partial.dropping:
            self._events.append(Dropped(partial.dropping, partial.size))
        else:
            self._events.append(Message(partial.frames))
        self._partial = _Partial()
