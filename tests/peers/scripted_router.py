"""A hostile router: answers each call from a script, at the socket level.

Real routers do not misbehave on demand, so this one does: HTML or garbage
bodies, 500s, a 409 without an id, answers that never come (hangs past the
client's timeout), connections reset mid-request, bytes that are not HTTP,
a head and then silence, a 1 GiB body, an answer dripped a byte at a time,
answers that change at every call.
Each rule is ``(method, path) -> action`` (a path ending in "/" is a prefix); an action is one of

    (status, body)        a normal HTTP/1.1 answer (body: bytes, str, or JSON-able)
    "hang"                read the request, then never answer (until stop)
    "reset"               read the request, then close with RST (SO_LINGER 0)
    "garbage"             answer bytes that are not HTTP at all
    HeadThenHang(...)     the status line and headers (a Content-Length), then nothing
    Huge(...)             200 and a body of ``size`` bytes (declared, or until close), streamed
    Drip(...)             a normal answer, a byte at once and then one every ``every`` seconds
    Slow(...)             a normal answer after ``delay`` seconds
    Cycle(...)            the next of its actions at each call the rule matches

Every request is recorded as ``(method, path)`` in ``requests`` and with its arrival
time and body in ``log``; ``sent`` counts the bytes of Huge bodies written so far.
"""

import itertools
import json
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union


@dataclass(frozen=True)
class HeadThenHang:
    status: int = 200
    length: int = 100


@dataclass(frozen=True)
class Huge:
    size: int = 1 << 30
    declared: bool = True  # Content-Length: size; else no length, the body ends at close


@dataclass(frozen=True)
class Drip:
    every: float
    status: int
    payload: Any


@dataclass(frozen=True)
class Slow:
    delay: float
    status: int
    payload: Any


class Cycle:
    """The next of ``actions`` at each call (round robin, shared by every path the rule matches)."""

    def __init__(self, actions: Sequence["Action"]) -> None:
        self.actions = list(actions)
        self._next: Iterator[Any] = itertools.cycle(self.actions)
        self._lock = threading.Lock()

    def take(self) -> "Action":
        with self._lock:
            return next(self._next)


@dataclass(frozen=True)
class Call:
    at: float  # time.monotonic() when the request was read
    method: str
    path: str
    body: bytes


Action = Union[str, Tuple[int, Any], HeadThenHang, Huge, Drip, Slow, Cycle]


class ScriptedRouter:
    def __init__(self, rules: Optional[Dict[Tuple[str, str], Action]] = None) -> None:
        self.rules: Dict[Tuple[str, str], Action] = dict(rules or {})
        self.requests: List[Tuple[str, str]] = []
        self.log: List[Call] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        router = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                router._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: Optional[str] = None) -> int:
        with self.lock:
            return sum(1 for m, _ in self.requests if method is None or m == method)

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()

    def _action(self, method: str, path: str) -> Action:
        best: Optional[Tuple[int, Action]] = None
        for (rule_method, prefix), action in self.rules.items():
            # A rule path ending in "/" is a prefix ("/workers/" = every lookup); else exact.
            match = path.startswith(prefix) if prefix.endswith("/") else path.split("?")[0] == prefix
            if rule_method == method and match and (best is None or len(prefix) > best[0]):
                best = (len(prefix), action)
        return best[1] if best else (404, {"error": "not scripted", "code": "WORKER_NOT_FOUND"})

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        except (OSError, ValueError):
            return
        with self.lock:
            self.requests.append((method, path))
            self.log.append(Call(time.monotonic(), method, path, body))
        action = self._action(method, path)
        if isinstance(action, Cycle):
            action = action.take()
        try:
            self._act(sock, action)
        except OSError:
            pass  # the client gave up (its deadline, its size limit): what the attack is for

    def _act(self, sock: socket.socket, action: Action) -> None:
        if isinstance(action, HeadThenHang):
            sock.sendall(
                f"HTTP/1.1 {action.status} OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {action.length}\r\n\r\n".encode()
            )
            self.stopped.wait(30)
            return
        if isinstance(action, Huge):
            length = f"Content-Length: {action.size}\r\n" if action.declared else ""
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
            sock.sendall(head.encode())
            chunk = b" " * 65536
            left = action.size
            while left > 0 and not self.stopped.is_set():
                piece = chunk[: min(left, len(chunk))]
                sock.sendall(piece)
                left -= len(piece)
                with self.lock:
                    self.sent += len(piece)
            return
        if isinstance(action, Slow):
            if self.stopped.wait(action.delay):
                return
            sock.sendall(self._answer(action.status, action.payload))
            return
        if isinstance(action, Drip):
            for byte in self._answer(action.status, action.payload):
                sock.sendall(bytes((byte,)))
                if self.stopped.wait(action.every):
                    return
            return
        if action == "hang":
            self.stopped.wait(30)
            return
        if action == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        if action == "garbage":
            sock.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
            return
        assert isinstance(action, tuple)
        status, payload = action
        sock.sendall(self._answer(status, payload))

    @staticmethod
    def _answer(status: int, payload: Any) -> bytes:
        if isinstance(payload, bytes):
            raw, ctype = payload, "text/html"
        elif isinstance(payload, str):
            raw, ctype = payload.encode(), "text/plain"
        else:
            raw, ctype = json.dumps(payload).encode(), "application/json"
        return (
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
        ).encode() + raw
