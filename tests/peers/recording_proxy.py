"""A TCP relay in front of a real router that records what crosses it.

Patio sends one request per connection (``Connection: close``), so each connection is one
exchange: the relay copies bytes both ways untouched and, when both sides closed, records
the request (method, path, body) and the answer (status, headers, body).  Tests use it to
see exactly which URL Patio registered and which id it deleted on a real router.
"""

import json
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    body: bytes
    status: int
    headers: Dict[str, str]  # lower-case names
    answer: bytes

    def json_body(self) -> Any:
        return json.loads(self.body) if self.body else None

    def json_answer(self) -> Any:
        try:
            return json.loads(self.answer)
        except ValueError:
            return None


def _split(raw: bytes) -> Tuple[List[str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), rest


def _headers(lines: List[str]) -> Dict[str, str]:
    fields: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


def _body(fields: Dict[str, str], rest: bytes) -> bytes:
    if "content-length" in fields:
        return rest[: int(fields["content-length"])]
    if fields.get("transfer-encoding", "").lower() == "chunked":
        out, data = b"", rest
        while data:
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, data = out + data[:size], data[size + 2 :]
        return out
    return rest


class RecordingProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.exchanges: List[Exchange] = []
        self.lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, method: Optional[str] = None, prefix: str = "") -> List[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if (method is None or e.method == method) and e.path.startswith(prefix)]

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        sent: List[bytes] = []
        received: List[bytes] = []

        def pump(source: socket.socket, sink: socket.socket, copy: List[bytes]) -> None:
            try:
                while True:
                    data = source.recv(65536)
                    if not data:
                        break
                    copy.append(data)
                    sink.sendall(data)
            except OSError:
                pass
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        up = threading.Thread(target=pump, args=(client, upstream, sent), daemon=True)
        up.start()
        pump(upstream, client, received)
        up.join(30)
        client.close()
        upstream.close()
        self._record(b"".join(sent), b"".join(received))

    def _record(self, request: bytes, answer: bytes) -> None:
        if not request:
            return
        lines, rest = _split(request)
        method, path = [*lines[0].split(" "), "", ""][:2]
        body = _body(_headers(lines), rest)
        status, fields, answer_body = 0, {}, b""
        if answer:
            answer_lines, answer_rest = _split(answer)
            status = int(answer_lines[0].split(" ")[1])
            fields = _headers(answer_lines)
            answer_body = _body(fields, answer_rest)
        with self.lock:
            self.exchanges.append(Exchange(method, path, body, status, fields, answer_body))
