"""The KV-event bridge against real peers: redis-server and a libzmq publisher.

The publisher (tests/kvevents_peers.py) is vLLM 0.32's ZmqEventPublisher wire
behaviour on real pyzmq sockets, replaying the recorded vLLM payload
(../shared/fixtures/kv-events/) and msgspec-encoded batches; Redis is Debian's
redis-server started per test module.  Redis contents are read back with redis-py
and compared with Kthena's layout (volcano-sh/kthena
python/kthena/runtime/kv_cache_manager.py) computed independently here.
"""

import dataclasses
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
import redis as redis_lib
from fakes.engine import FakeEngine
from kvevents_peers import (
    POD,
    Expected,
    Publisher,
    RedisServer,
    batch,
    cleared,
    free_port,
    redis_state,
    removed,
    settled,
    sglang_batch,
    std_hash,
    stored,
    wait_for,
)
from kvevents_peers import SglangBlockStored as SgStored
from support import PatioProcess, http_call, shared_path

from patio.kvevents.bridge import Bridge
from patio.kvevents.settings import KvEventsSettings
from patio.metrics.registry import Registry

FIXTURE = shared_path("fixtures", "kv-events", "vllm-0.32-cpu-blockstored.msgpack").read_bytes()
MODEL = "tiny"

# The shared fixtures: redis_server (one per module), redis, publisher, bridges.
pytest_plugins = ["kvevents_fixtures"]


def make_bridge(redis_server, publisher, replay=True, **overrides):
    settings = KvEventsSettings(
        enabled=True,
        pod=POD,
        model=MODEL,
        endpoint=publisher.endpoint,
        replay_endpoint=publisher.replay_endpoint if replay else None,
        redis_host="127.0.0.1",
        redis_port=redis_server.port,
        timeout=2.0,
        retry_max=0.2,
        **overrides,
    )
    bridge = Bridge(settings, Registry())
    bridge.start()
    wait_for(lambda: bridge.state == "live", what="bridge live")
    return bridge


def test_recorded_payload_lands_in_kthenas_layout(redis_server, redis, publisher, bridges):
    publisher.publish(FIXTURE)  # before the bridge starts: a late start, recovered by replay
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    settled(bridge, 0)
    (event,) = msgspec.msgpack.decode(FIXTURE)[1]  # msgspec, vLLM's own decoder, as the oracle
    tokens = event["token_ids"]
    h0, h1 = event["block_hashes"]
    s0, s1 = std_hash(tokens[:32]), std_hash(tokens[32:])
    assert redis.get(f"vllm:kv:block:{POD}@{h0}") == str(s0).encode()
    assert redis.get(f"vllm:kv:block:{POD}@{h1}") == str(s1).encode()
    assert 86000 < redis.ttl(f"vllm:kv:block:{POD}@{h0}") <= 86400
    stamp = int(redis.hget(f"matrix:kv:block:{MODEL}@{s0}", POD))
    assert abs(stamp - time.time()) < 60
    assert redis.hkeys(f"matrix:kv:block:{MODEL}@{s1}") == [POD.encode()]
    assert publisher.replay_requests == [0]
    assert bridge.metrics.applied.value("BlockStored") == 1
    assert bridge.metrics.replays.value("complete") == 1


def test_gap_is_replayed_and_redis_equals_the_publishers_state(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    expected = Expected()
    script = [
        ("store", [1, 2], list(range(64)), False),
        ("store", [3], list(range(100, 132)), True),  # lost on the wire
        ("remove", [1], None, True),  # lost on the wire
        ("store", [4], list(range(200, 232)), False),
        ("remove", [2], None, False),
    ]
    for kind, hashes, tokens, drop in script:
        if kind == "store":
            expected.store(hashes, tokens)
            seq = publisher.publish(batch([stored(hashes, tokens)]), drop=drop)
        else:
            expected.remove(hashes)
            seq = publisher.publish(batch([removed(hashes)]), drop=drop)
    settled(bridge, seq)
    assert redis_state(redis) == expected.state()
    assert bridge.metrics.gaps.value() == 1 and publisher.replay_requests == [0, 1]
    assert bridge.metrics.lag.count() >= 3


def test_removal_of_a_block_the_memory_forgot_reads_its_std_hash_back(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher, hash_cache=1)
    bridges.append(bridge)
    expected = Expected()
    for h in (1, 2, 3):
        expected.store([h], list(range(h * 32, h * 32 + 32)))
        publisher.publish(batch([stored([h], list(range(h * 32, h * 32 + 32)))]))
    expected.remove([1, 2])
    seq = publisher.publish(batch([removed([1, 2])]))
    settled(bridge, seq)
    assert redis_state(redis) == expected.state()


def test_gap_without_replay_clears_the_pod_rather_than_keep_stale_claims(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher, replay=False)
    bridges.append(bridge)
    publisher.publish(batch([stored([1], list(range(32)))]))
    publisher.publish(batch([removed([1])]), drop=True)
    seq = publisher.publish(batch([stored([2], list(range(40, 72)))]))
    settled(bridge, seq)
    expected = Expected()
    expected.store([2], list(range(40, 72)))
    assert redis_state(redis) == expected.state()  # block 1 is gone: a subset, never a stale claim
    assert bridge.metrics.clears.value("gap") == 1


def test_other_pods_are_untouched_and_all_blocks_cleared_clears_only_this_pod(redis_server, redis, publisher, bridges):
    redis.hset(f"matrix:kv:block:{MODEL}@{std_hash(list(range(32)))}", "other-pod", "1")
    redis.set("vllm:kv:block:other-pod@1", "5")
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    publisher.publish(batch([stored([1], list(range(32))), stored([2], list(range(32, 64)))]))
    seq = publisher.publish(batch([cleared(), stored([3], list(range(64, 96)))]))
    settled(bridge, seq)
    expected = Expected()
    expected.store([3], list(range(64, 96)))
    keys, matrix = redis_state(redis)
    assert matrix[f"matrix:kv:block:{MODEL}@{std_hash(list(range(32)))}"] == {"other-pod"}
    assert keys.pop("vllm:kv:block:other-pod@1") == "5"
    matrix.pop(f"matrix:kv:block:{MODEL}@{std_hash(list(range(32)))}")
    assert (keys, matrix) == expected.state()


def test_engine_restart_clears_then_new_blocks_arrive(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    seq = publisher.publish(batch([stored([1], list(range(32)))]))
    settled(bridge, seq)
    publisher.stop()  # the engine dies: its publisher connection drops
    wait_for(lambda: redis_state(redis) == ({}, {}), what="pod cleared after the publisher went away")
    publisher.start()  # a new engine: seq from 0, empty cache
    wait_for(lambda: bridge.state == "live", what="reconnected")
    publisher.publish(batch([stored([9], list(range(500, 532)))]))
    expected = Expected()
    expected.store([9], list(range(500, 532)))
    wait_for(lambda: redis_state(redis) == expected.state(), what="the new engine's block")
    assert bridge.metrics.clears.value("publisher_lost") >= 1


def test_sequence_restarting_at_zero_clears_the_pod(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    for h in (1, 2, 3):
        seq = publisher.publish(batch([stored([h], list(range(h * 32, h * 32 + 32)))]))
    settled(bridge, seq)
    publisher.reset_sequence()  # same connection, numbering from 0: a new engine, an empty cache
    publisher.publish(batch([stored([9], list(range(900, 932)))]))
    expected = Expected()
    expected.store([9], list(range(900, 932)))
    wait_for(lambda: redis_state(redis) == expected.state(), what="only the new engine's block")
    assert bridge.metrics.clears.value("engine_restart") == 1


def test_redis_killed_and_restarted_mid_stream_is_consistent_after_resync(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    expected = Expected()
    publisher.publish(batch([stored([1, 2], list(range(64)))]))
    expected.store([1, 2], list(range(64)))
    settled(bridge, 0)
    redis_server.stop()
    publisher.publish(batch([removed([1])]))
    expected.remove([1])
    publisher.publish(batch([stored([3], list(range(90, 122)))]))
    expected.store([3], list(range(90, 122)))
    wait_for(lambda: bridge.state == "redis_down" and len(bridge.backlog) >= 1, what="backlog while Redis is down")
    redis_server.start()  # empty: no persistence
    settled(bridge, 2)
    client = redis_server.client()
    assert redis_state(client) == expected.state()
    assert bridge.metrics.redis_errors.value() >= 1 and len(bridge.backlog) == 0


def test_backlog_is_bounded_while_redis_is_down(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher, backlog=3)
    bridges.append(bridge)
    redis_server.stop()
    publisher.publish(batch([stored([1], list(range(32)))]))
    wait_for(lambda: bridge.redis is None, what="redis loss noticed")
    for i in range(10):
        publisher.publish(batch([stored([10 + i], list(range(i, i + 32)))]))
    wait_for(lambda: bridge.last_error != "" and len(bridge.backlog) > 0, what="backlog")
    time.sleep(0.3)
    assert len(bridge.backlog) <= 3
    redis_server.start()
    settled(bridge, 10)
    assert len(redis_state(redis_server.client())[0]) == 11  # the replay buffer restored everything


def test_engine_health_down_clears_and_up_resyncs(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    seq = publisher.publish(batch([stored([1], list(range(32)))]))
    settled(bridge, seq)
    bridge.engine_health(False)
    wait_for(lambda: redis_state(redis) == ({}, {}), what="cleared on engine down")
    wait_for(lambda: bridge.snapshot()["state"] == "engine_down", what="the state shown")
    bridge.engine_health(True)
    wait_for(lambda: len(redis_state(redis)[0]) == 1, what="resynced from the replay buffer")
    assert bridge.metrics.clears.value("engine_down") >= 1


def test_patio_process_clears_the_pod_when_the_engine_health_goes_down(tmp_path):
    server = RedisServer()
    publisher = Publisher()
    engine = FakeEngine("vllm")
    try:
        publisher.publish(FIXTURE)
        env = {
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": engine.url,
            "PATIO_ENGINE_HEALTH_INTERVAL": "0.2",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(server.port),
            "VLLM_ZMQ_ENDPOINT": publisher.endpoint,
            "VLLM_ZMQ_REPLAY_ENDPOINT": publisher.replay_endpoint,
        }
        with PatioProcess(["-I", POD, "-N", MODEL, "--scrape-engine-metrics", "false"], env=env) as patio:
            client = server.client()
            wait_for(lambda: len(redis_state(client)[0]) == 2, what="fixture applied by the process")
            engine.health_status = 503  # the publisher (a separate peer here) stays up
            wait_for(lambda: redis_state(client) == ({}, {}), what="pod cleared after the health watch saw it down")
            kv_state = lambda: json.loads(http_call("GET", patio.url + "/v1/kv-events")[2])["state"]  # noqa: E731
            wait_for(lambda: kv_state() == "engine_down", what="the state shown")
            engine.health_status = 200
            wait_for(lambda: len(redis_state(client)[0]) == 2, what="resynced after the engine came back")
            patio.stop()
    finally:
        publisher.close()
        server.close()
        engine.stop()


def test_malformed_messages_are_counted_and_skipped(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher)
    bridges.append(bridge)
    publisher.publish(b"\xc1 not msgpack")
    publisher.publish(batch([{"type": "BlockMoved"}, stored([1, 2], [1, 2, 3])]))
    seq = publisher.publish(batch([stored([5], list(range(32)))]))
    settled(bridge, seq)
    assert bridge.metrics.malformed.value("payload") == 1
    assert bridge.metrics.malformed.value("event") == 1
    assert bridge.metrics.skipped.value("other") >= 1
    assert len(redis_state(redis)[0]) == 1


def test_sglang_publisher_shape(redis_server, redis, bridges):
    publisher = Publisher(topic=b"", replay_shape="sglang")
    try:
        publisher.publish(sglang_batch([SgStored([7, 8], None, list(range(8)), 4, None)]))
        bridge = make_bridge(redis_server, publisher, engine="sglang", topic="")
        bridges.append(bridge)
        settled(bridge, 0)
        expected = Expected(prefix="sglang")
        expected.store([7, 8], list(range(8)))
        assert redis_state(redis) == expected.state()
    finally:
        publisher.close()


def test_patio_process_serves_state_and_clears_the_pod_on_sigterm(tmp_path):
    server = RedisServer(password="s3cret-pw")
    publisher = Publisher()
    engine = FakeEngine("vllm")  # healthy: the health watch lets the bridge apply
    try:
        publisher.publish(FIXTURE)
        env = {
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": engine.url,
            "PATIO_ENGINE_HEALTH_INTERVAL": "0.2",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(server.port),
            "REDIS_PASSWORD": "s3cret-pw",
            "VLLM_ZMQ_ENDPOINT": publisher.endpoint,
            "VLLM_ZMQ_REPLAY_ENDPOINT": publisher.replay_endpoint,
        }
        with PatioProcess(["-I", POD, "-N", MODEL, "--scrape-engine-metrics", "false"], env=env) as patio:
            client = server.client()
            wait_for(lambda: len(redis_state(client)[0]) == 2, what="fixture applied by the process")
            status, _, body = http_call("GET", patio.url + "/v1/kv-events")
            state = json.loads(body)
            assert status == 200 and state["state"] == "live" and state["last_seq"] == 0
            status, _, metrics = http_call("GET", patio.url + "/metrics")
            assert b'patio_kv_events_applied_total{type="BlockStored"} 1' in metrics
            assert b"patio_kv_events_connected 1" in metrics
            assert b"s3cret-pw" not in body + metrics
            # std hashes use CPython's built-in SHA-256: a working bridge loads no OpenSSL either.
            maps = Path(f"/proc/{patio.proc.pid}/maps").read_text()
            assert "_socket." in maps and not [n for n in ("_hashlib.", "libcrypto", "_ssl.") if n in maps]
            assert patio.stop(signal.SIGTERM) == 0
            assert redis_state(client) == ({}, {})
            assert "s3cret-pw" not in patio.output()
    finally:
        publisher.close()
        server.close()
        engine.stop()


def test_off_without_redis_host_says_why_and_loads_nothing():
    with PatioProcess(["-I", POD, "--scrape-engine-metrics", "false"]) as patio:
        status, _, body = http_call("GET", patio.url + "/v1/kv-events")
        assert status == 200 and json.loads(body) == {
            "enabled": False,
            "reason": "not configured: REDIS_HOST, --model unset",
        }
        patio.stop()
        assert "kv events to redis: off (not configured: REDIS_HOST, --model unset)" in patio.output()


class _Silent:
    """A TCP listener that accepts and then answers ``reply`` (or nothing) forever: a hung or foreign peer."""

    def __init__(self, reply: bytes = b"") -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.reply:
                conn.sendall(self.reply)

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_a_foreign_publisher_and_a_hung_redis_are_survived(redis_server, bridges):
    http = _Silent(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    hung = _Silent()
    try:
        settings = KvEventsSettings(
            enabled=True,
            pod=POD,
            model=MODEL,
            endpoint=f"tcp://127.0.0.1:{http.port}",
            redis_host="127.0.0.1",
            redis_port=hung.port,
            timeout=0.3,
            retry_max=0.2,
        )
        bridge = Bridge(settings, Registry())
        bridges.append(bridge)
        bridge.start()
        wait_for(lambda: "not a ZeroMQ peer" in bridge.last_error or "redis" in bridge.last_error, what="errors")
        wait_for(lambda: bridge.metrics.redis_errors.value() >= 2, what="redis timeouts counted")
        time.sleep(1.0)
        assert bridge._thread.is_alive() and bridge.state in ("connecting_publisher", "redis_down")
        assert len(http.conns) >= 2  # it kept retrying, with backoff
    finally:
        http.close()
        hung.close()


@pytest.mark.parametrize("password,ok", [("right-pw", True), ("wrong-pw", False)], ids=["auth", "wrong_password"])
def test_redis_auth_with_an_acl_user_and_a_database(password, ok, bridges):
    server = RedisServer()
    publisher = Publisher()
    try:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", "kthena", "on", ">right-pw", "~*", "+@all")
        settings = KvEventsSettings(
            enabled=True,
            pod=POD,
            model=MODEL,
            endpoint=publisher.endpoint,
            replay_endpoint=publisher.replay_endpoint,
            redis_host="127.0.0.1",
            redis_port=server.port,
            redis_db=3,
            redis_username="kthena",
            redis_password=password,
            timeout=2.0,
            retry_max=0.2,
        )
        publisher.publish(FIXTURE)
        bridge = Bridge(settings, Registry())
        bridges.append(bridge)
        bridge.start()
        if ok:
            settled(bridge, 0)
            db3 = redis_lib.Redis(host="127.0.0.1", port=server.port, db=3)
            assert len(redis_state(db3)[0]) == 2 and admin.dbsize() == 0
            db3.close()
        else:
            wait_for(
                lambda: "WRONGPASS" in bridge.last_error and bridge.state == "redis_down", what="the refusal reported"
            )
            assert "wrong-pw" not in bridge.last_error
    finally:
        publisher.close()
        server.close()


def test_an_idle_publisher_answers_pings_and_stays_connected(redis_server, redis, publisher, bridges):
    bridge = make_bridge(redis_server, publisher, heartbeat=0.2)
    bridges.append(bridge)
    bridge.sub.timeout = 0.5  # an unanswered PING would drop the connection after 0.7 s
    time.sleep(1.5)  # idle: several PING/PONG rounds with the real libzmq PUB
    assert bridge.state == "live" and bridge.metrics.clears.value("publisher_lost") == 0
    assert time.monotonic() - bridge.sub.last_rx < 0.5  # the PONGs arrived
    seq = publisher.publish(batch([stored([1], list(range(32)))]))
    settled(bridge, seq)


def test_a_frozen_engine_is_detected_by_its_unanswered_ping(redis_server, redis, bridges, caplog):
    """A real libzmq PUB in a process we SIGSTOP: TCP stays up, nothing answers (a hung engine)."""
    port = free_port()
    script = (
        "import sys, time, zmq\n"
        "pub = zmq.Context().socket(zmq.PUB)\n"
        f"pub.bind('tcp://127.0.0.1:{port}')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        settings = KvEventsSettings(
            enabled=True,
            pod=POD,
            model=MODEL,
            endpoint=f"tcp://127.0.0.1:{port}",
            redis_host="127.0.0.1",
            redis_port=redis_server.port,
            timeout=0.5,
            retry_max=0.2,
            heartbeat=0.2,
        )
        bridge = Bridge(settings, Registry())
        bridges.append(bridge)
        bridge.start()
        wait_for(lambda: bridge.state == "live", what="connected")
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: bridge.metrics.clears.value("publisher_lost") >= 1, what="the pod cleared")
        assert "did not answer a PING" in caplog.text
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(5)


def test_shutdown_with_a_hung_redis_stays_inside_its_budget(redis_server, publisher):
    bridge = make_bridge(redis_server, publisher)
    hung = _Silent()
    try:
        bridge.settings = dataclasses.replace(bridge.settings, redis_port=hung.port)
        started = time.monotonic()
        assert bridge.shutdown(1.0) is False  # nothing answered: reported, not waited on forever
        assert time.monotonic() - started < 2.5
        assert bridge.state == "stopped"
    finally:
        hung.close()


OFF_CASES = [
    ("no_redis_host", ["-I", POD, "-N", MODEL], {}),
    ("switched_off", ["-I", POD, "-N", MODEL], {"REDIS_HOST": "127.0.0.1", "PATIO_KV_EVENTS": "false"}),
]


@pytest.mark.parametrize("argv,env", [(a, e) for _, a, e in OFF_CASES], ids=[n for n, *_ in OFF_CASES])
def test_off_costs_nothing_no_module_no_thread(argv, env):
    """Off, the app is built and started without importing the bridge or starting a thread."""
    code = (
        "import asyncio, json, sys, threading\n"
        "sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + '/tests')\n"
        "from support import make_settings\n"
        "from patio.app import build_app\n"
        "app = build_app(make_settings(json.loads(sys.argv[2]), json.loads(sys.argv[3])))\n"
        "(kv,) = [c for c in app.components if c.name == 'kv_events']\n"
        "asyncio.run(kv.start())\n"
        # patio.ratelog is not the bridge's: /metrics uses it too, so every start loads it.
        "loaded = sorted(m for m in sys.modules if m.startswith('patio.kvevents.')\n"
        "                and m not in ('patio.kvevents.settings', 'patio.kvevents.component'))\n"
        "print(json.dumps([loaded, [t.name for t in threading.enumerate() if 'kvevents' in t.name]]))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, "-c", code, root, json.dumps(argv), json.dumps(env)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], []]
