"""A hostile router: answers each call from a script, at the socket level.

Real routers do not misbehave on demand, so this one does: HTML or garbage
bodies, 500s, a 409 without an id, answers that never come (hangs past the
client's timeout), connections reset mid-request, bytes that are not HTTP.
Each rule is ``(method, path) -> action`` (a path ending in "/" is a prefix); an action is one of

    (status, body)        a normal HTTP/1.1 answer (body: bytes, str, or JSON-able)
    "hang"                read the request, then never answer (until stop)
    "reset"               read the request, then close with RST (SO_LINGER 0)
    "garbage"             answer bytes that are not HTTP at all

Every request is recorded as ``(method, path)``.
"""

import json
import socket
import socketserver
import struct
import threading
from typing import Any, Dict, List, Optional, Tuple, Union

Action = Union[str, Tuple[int, Any]]


class ScriptedRouter:
    def __init__(self, rules: Optional[Dict[Tuple[str, str], Action]] = None) -> None:
        self.rules: Dict[Tuple[str, str], Action] = dict(rules or {})
        self.requests: List[Tuple[str, str]] = []
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
        action = self._action(method, path)
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
        if isinstance(payload, bytes):
            raw, ctype = payload, "text/html"
        elif isinstance(payload, str):
            raw, ctype = payload.encode(), "text/plain"
        else:
            raw, ctype = json.dumps(payload).encode(), "application/json"
        answer = (
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
        ).encode() + raw
        try:
            sock.sendall(answer)
        except OSError:
            pass
