"""The engine's publisher, from the bridge thread: the SUB stream and the replay DEALER (ZMTP).

Blocking sockets with a timeout on every read and write; the protocol itself is
``zmtp`` (sans-IO).  Every failure is a ``PeerDown`` naming the endpoint.
"""

import select
import time
from typing import Iterator, List, Optional, Tuple

from patio.kvevents import zmtp
from patio.kvevents.sockets import PeerDown, connect

_READ_CHUNK = 256 * 1024
END_SEQ = b"\xff" * 8  # the publishers' end-of-replay marker: (-1).to_bytes(8, "big", signed=True)
# A replay answers at most the publisher's buffer (vLLM and SGLang keep 10 000 batches by
# default); one that goes on past this is flooding, not replaying.
MAX_REPLAY_MESSAGES = 100_000


class ZmtpConnection:
    """A ZMTP socket (SUB or DEALER) over one TCP connection, handshake done in ``__init__``."""

    def __init__(self, endpoint: str, socket_type: str, timeout: float, max_frame_bytes: int) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.sock = connect(endpoint, timeout, f"ZMQ {socket_type} peer")
        self.proto = zmtp.ZmtpClient(socket_type, max_frame_bytes=max_frame_bytes)
        self.pending: List[zmtp.Event] = []
        self.last_rx = time.monotonic()  # when the peer last sent anything
        self.ping_sent: Optional[float] = None  # when our unanswered PING went out
        try:
            self.flush()
            deadline = time.monotonic() + timeout
            while not self.proto.ready:
                if time.monotonic() > deadline:
                    raise PeerDown(f"no ZMTP handshake from {endpoint} within {timeout:g}s")
                self.read(max(deadline - time.monotonic(), 0.001))
        except BaseException:
            self.close()
            raise
        self.pending = [e for e in self.pending if not isinstance(e, zmtp.Ready)]

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
        except OSError as exc:
            raise PeerDown(f"ZMQ peer {self.endpoint}: {exc}") from None

    def flush(self) -> None:
        out = self.proto.data_to_send()
        if out:
            self.send(out)

    def read(self, timeout: float) -> bool:
        """Read what is there (waiting at most ``timeout``); False when nothing came."""
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return False
            data = self.sock.recv(_READ_CHUNK)
        except OSError as exc:
            raise PeerDown(f"ZMQ peer {self.endpoint}: {exc}") from None
        if not data:
            raise PeerDown(f"ZMQ peer {self.endpoint} closed the connection")
        self.last_rx = time.monotonic()
        self.ping_sent = None
        try:
            self.proto.receive_data(data)
        except zmtp.ZmtpError as exc:
            raise PeerDown(f"ZMQ peer {self.endpoint}: {exc}") from None
        self.pending.extend(self.proto.events())
        self.flush()  # PONGs
        return True

    def heartbeat(self, idle: float) -> None:
        """After ``idle`` silent seconds send a ZMTP 3.1 PING; no answer within the timeout is a
        dead peer (a publisher is silent when the engine is idle, so silence alone proves nothing,
        but libzmq answers a PING whatever its own heartbeat options)."""
        if idle <= 0 or self.proto.version is None or self.proto.version < (3, 1):
            return
        now = time.monotonic()
        if self.ping_sent is not None:
            if now - self.ping_sent > self.timeout:
                raise PeerDown(f"ZMQ peer {self.endpoint} did not answer a PING within {self.timeout:g}s")
        elif now - self.last_rx > idle:
            self.send(self.proto.ping())
            self.ping_sent = now

    def take(self) -> List[zmtp.Event]:
        out, self.pending = self.pending, []
        for event in out:
            if isinstance(event, zmtp.PeerError):
                raise PeerDown(f"ZMQ peer {self.endpoint} sent ERROR: {event.reason}")
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def replay(
    endpoint: str,
    start: int,
    timeout: float,
    max_frame_bytes: int,
    wait: Optional[float] = None,
    max_messages: int = MAX_REPLAY_MESSAGES,
) -> Iterator[Tuple[int, bytes]]:
    """(seq, payload) from the publisher's replay ROUTER, starting at ``start``, until its end marker.

    Both answer shapes are accepted: vLLM 0.32 sends ``[b"", topic, seq, payload]``,
    SGLang and later vLLM ``[b"", seq, payload]``; the end marker's seq is all ones.
    ``wait`` bounds the silence between two answers (default: ``timeout``).  The caller
    may stop early (closing the generator closes the connection): a gap is filled by
    reading up to its end, never the whole buffer.
    """
    conn = ZmtpConnection(endpoint, "DEALER", timeout, max_frame_bytes)
    try:
        conn.send(conn.proto.message([b"", start.to_bytes(8, "big")]))
        count = 0
        while True:
            for event in conn.take():
                if not isinstance(event, zmtp.Message):
                    continue  # a dropped (oversize) answer: the caller sees the hole in seq
                frames = event.frames[1:] if event.frames and event.frames[0] == b"" else event.frames
                if len(frames) == 3:
                    frames = frames[1:]
                if len(frames) != 2 or len(frames[0]) != 8:
                    raise PeerDown(f"replay answer of {len(event.frames)} frames from {endpoint}")
                if frames[0] == END_SEQ:
                    return
                count += 1
                if count > max_messages:
                    raise PeerDown(f"replay from {endpoint} passed {max_messages} messages (its buffer is smaller)")
                yield int.from_bytes(frames[0], "big"), frames[1]
            if not conn.read(wait if wait is not None else timeout):
                raise PeerDown(f"replay from {endpoint} stalled for {wait or timeout:g}s")
    finally:
        conn.close()
