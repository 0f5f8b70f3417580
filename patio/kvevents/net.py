"""Blocking sockets for the bridge thread: endpoints, connect with a deadline, Redis and ZMTP peers.

Runs only in the bridge's own thread (never on the event loop).  Every read and
write has a timeout; every failure is a ``PeerDown`` naming the peer (and never a
password).
"""

import select
import socket
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from patio.http.client import resolver_host
from patio.kvevents import resp, zmtp
from patio.kvevents.settings import parse_endpoint

_READ_CHUNK = 256 * 1024
END_SEQ = b"\xff" * 8  # the publishers' end-of-replay marker: (-1).to_bytes(8, "big", signed=True)
# A replay answers at most the publisher's buffer (vLLM and SGLang keep 10 000 batches by default).
MAX_REPLAY_MESSAGES = 100_000


class PeerDown(Exception):
    """A peer is unreachable, too slow, or broke its protocol: drop the connection."""


def connect(endpoint: str, timeout: float, peer: str) -> socket.socket:
    kind, address = parse_endpoint(endpoint)
    try:
        if kind == "ipc":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            assert isinstance(address, tuple)
            host, port = address
            sock = socket.create_connection((resolver_host(host), port), timeout=timeout)  # type: ignore[arg-type]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise PeerDown(f"{peer} unreachable at {endpoint}: {exc}") from None
    sock.settimeout(timeout)
    return sock


class RedisConnection:
    """One Redis connection: AUTH and SELECT on connect, pipelined commands, every call bounded."""

    def __init__(
        self, host: str, port: int, db: int, username: str, password: str, timeout: float, parser_limits: dict
    ) -> None:
        self.where = f"{host}:{port}/{db}"
        self.timeout = timeout
        self._parser_limits = parser_limits
        self.sock = connect(f"tcp://{host}:{port}", timeout, "redis")
        self.parser = resp.RespParser(**parser_limits)
        hello: List[Sequence[resp.Arg]] = []
        if password:
            hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            hello.append(("SELECT", str(db)))
        hello.append(("PING",))
        for reply in self.pipeline(hello):
            if isinstance(reply, resp.ReplyError):
                self.close()
                # The reply text is the server's (WRONGPASS, NOAUTH...), never the password.
                raise PeerDown(f"redis at {self.where} refused the connection setup: {reply.message}")

    def pipeline(self, commands: Sequence[Sequence[resp.Arg]]) -> List[object]:
        """Send all, read one reply per command; error replies are values (``resp.ReplyError``)."""
        if not commands:
            return []
        try:
            self.sock.sendall(resp.encode_pipeline(commands))
            deadline = time.monotonic() + self.timeout
            while self.parser.pending < len(commands):
                self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self.sock.recv(_READ_CHUNK)
                if not data:
                    raise PeerDown(f"redis at {self.where} closed the connection")
                self.parser.receive_data(data)
        except (OSError, resp.RespError) as exc:
            self.close()
            raise PeerDown(f"redis at {self.where}: {exc or type(exc).__name__}") from None
        replies = self.parser.replies()
        if len(replies) != len(commands):
            self.close()
            raise PeerDown(f"redis at {self.where} answered {len(replies)} replies to {len(commands)} commands")
        return replies

    def scan(self, pattern: str, count: int) -> Iterator[List[bytes]]:
        """Pages of keys matching ``pattern`` (SCAN may repeat a key; callers tolerate that)."""
        cursor = b"0"
        while True:
            (reply,) = self.pipeline([("SCAN", cursor, "MATCH", pattern, "COUNT", str(count))])
            if isinstance(reply, resp.ReplyError) or not (isinstance(reply, list) and len(reply) == 2):
                raise PeerDown(f"redis at {self.where} answered SCAN with {reply!r}"[:200])
            cursor, keys = reply
            if keys:
                yield list(keys)
            if cursor in (b"0", 0, None):
                return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


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
    endpoint: str, start: int, timeout: float, max_frame_bytes: int, wait: Optional[float] = None
) -> Iterator[Tuple[int, bytes]]:
    """(seq, payload) from the publisher's replay ROUTER, starting at ``start``, until its end marker.

    Both answer shapes are accepted: vLLM 0.32 sends ``[b"", topic, seq, payload]``,
    SGLang and older vLLM ``[b"", seq, payload]``; the end marker's seq is all ones.
    ``wait`` bounds the silence between two answers (default: ``timeout``).
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
                if count > MAX_REPLAY_MESSAGES:
                    raise PeerDown(f"replay from {endpoint} passed {MAX_REPLAY_MESSAGES} messages")
                yield int.from_bytes(frames[0], "big"), frames[1]
            if not conn.read(wait if wait is not None else timeout):
                raise PeerDown(f"replay from {endpoint} stalled for {wait or timeout:g}s")
    finally:
        conn.close()
