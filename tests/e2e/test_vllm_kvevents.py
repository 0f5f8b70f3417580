"""KV-cache events from a real vLLM (CPU) into Redis through Patio, in Kthena's layout (issue 14).

One vLLM with ``--enable-prefix-caching --block-size 32 --kv-events-config`` (PUB + replay
ROUTER), one redis-server, one Patio.  After a completion every full prompt block is in
``matrix:kv:block:{model}@{std_hash}`` with this pod as a field (tokens from vLLM's own
``/tokenize``); under load the event rate is recorded (the bench's 10x target); vLLM killed
-> the pod's entries are gone within a bound; vLLM restarted -> new blocks arrive again.
The restart runs last.
"""

import hashlib
import json
import threading
import time

import pytest
from conftest import ASSETS, Vllm, get, post_json, record_timing
from kvevents_peers import RedisServer
from support import free_port

POD, MODEL_LABEL = "vllm-0.default", "tiny-llama"
CLEAR_BOUND = 15.0  # seconds from vLLM's death to the pod gone from Redis


def std_hash(tokens):
    digest = hashlib.sha256(b"".join(t.to_bytes(4, "big") for t in tokens)).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFFFFFFFFFF


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def stack(assets, tmp_path_factory):
    redis = RedisServer()
    pub, replay = free_port(), free_port()
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        # vLLM binds its PUB only for a wildcard (or ipc) endpoint and *connects* for any other
        # (``_is_bind_endpoint`` in vllm/distributed/kv_events.py); its default is tcp://*:5557.
        "endpoint": f"tcp://*:{pub}",
        "replay_endpoint": f"tcp://127.0.0.1:{replay}",
        "topic": "kv-events",
    }
    vllm = Vllm("--enable-prefix-caching", "--block-size", "32", "--kv-events-config", json.dumps(config))
    try:
        vllm.start()
        record_timing("vllm_kvevents_ready_seconds", vllm.ready_seconds)
        yield vllm, redis, f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}"
    finally:
        vllm.stop()
        redis.close()


@pytest.fixture(scope="module")
def patio(stack, tmp_path_factory):
    from conftest import Patio

    vllm, redis, endpoint, replay = stack
    base = tmp_path_factory.mktemp("patio-kv")
    env = {
        "POD_NAME": POD,
        "MODEL_NAME": MODEL_LABEL,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis.port),
        "VLLM_ZMQ_ENDPOINT": endpoint,
        "VLLM_ZMQ_REPLAY_ENDPOINT": replay,
        "PATIO_ENGINE_HEALTH_INTERVAL": "1",
    }
    patio = Patio(vllm.url, base / "state", base / "adapters", env)
    try:
        try:
            wait_for(lambda: patio.get_json("/v1/kv-events")[1]["state"] == "live", 30, "bridge live")
        except AssertionError:
            state = patio.get_json("/v1/kv-events")[1]
            raise AssertionError(f"bridge not live: {state}\n{patio.log.read_text()[-3000:]}") from None
        yield patio
    finally:
        patio.stop()


def tokenize(vllm, text):
    status, raw = post_json(vllm.url + "/tokenize", {"model": str(ASSETS / "model"), "prompt": text})
    assert status == 200, raw
    return json.loads(raw)["tokens"]


def prompt_of(vllm, seed, low=70, high=100):
    """A prompt of ``low``..``high`` tokens (max-model-len is 128), unique per seed."""
    words = f"request {seed}: the quick brown fox jumps over the lazy dog and keeps running".split()
    text = ""
    while True:
        text += " " + words[len(text) % len(words)] + str(seed % 7)
        tokens = tokenize(vllm, text)
        if len(tokens) >= low:
            assert len(tokens) <= high, len(tokens)
            return text, tokens


def complete(vllm, text, max_tokens=2):
    body = {"model": str(ASSETS / "model"), "prompt": text, "max_tokens": max_tokens, "temperature": 0}
    status, raw = post_json(vllm.url + "/v1/completions", body)
    assert status == 200, raw


def pod_blocks(client):
    """std hashes this pod holds according to the matrix keys the router reads."""
    held = set()
    for key in client.scan_iter(match=f"matrix:kv:block:{MODEL_LABEL}@*", count=1000):
        if client.hexists(key, POD):
            held.add(int(key.decode().rsplit("@", 1)[1]))
    return held


def test_every_full_prompt_block_is_in_redis_under_its_std_hash(stack, patio):
    vllm, redis, _, _ = stack
    client = redis.client()
    text, tokens = prompt_of(vllm, 1)
    complete(vllm, text)
    expected = {std_hash(tokens[i * 32 : (i + 1) * 32]) for i in range(len(tokens) // 32)}
    assert len(expected) >= 2
    wait_for(lambda: expected <= pod_blocks(client), 15, "the prompt's full blocks in Redis")
    mapping = [k for k in client.scan_iter(match=f"vllm:kv:block:{POD}@*", count=1000)]
    assert {int(client.get(k)) for k in mapping} >= expected
    assert all(0 < client.ttl(k) <= 86400 for k in mapping)
    state = patio.get_json("/v1/kv-events")[1]
    assert state["state"] == "live" and state["last_seq"] is not None
    status, raw = get(patio.url + "/metrics")
    assert status == 200 and b'patio_kv_events_applied_total{type="BlockStored"}' in raw


def received_events(patio):
    status, raw = get(patio.url + "/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in raw.decode().splitlines()
        if line.startswith("patio_kv_events_received_total{")
    )


def test_event_rate_under_load_is_recorded(stack, patio):
    """4 concurrent clients (max-num-seqs), every prompt new (no prefix hits), 24 tokens generated
    each, for 8 s: the busiest stream this vLLM makes here, the rate bench_kvevents.py must beat 10x."""
    vllm, _, _, _ = stack
    template, _ = prompt_of(vllm, 100, low=60, high=90)
    first_seq = patio.get_json("/v1/kv-events")[1]["last_seq"]
    first_events = received_events(patio)
    stop = time.monotonic() + 8.0
    errors = []

    def client(offset):
        i = offset
        while time.monotonic() < stop:
            try:
                complete(vllm, f"n{i} {template}", max_tokens=24)
            except AssertionError as exc:  # pragma: no cover - reported below
                errors.append(exc)
            i += 4

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    time.sleep(1.0)
    last_seq = patio.get_json("/v1/kv-events")[1]["last_seq"]
    assert not errors
    record_timing("kv_events_batches_per_second", round((last_seq - first_seq) / elapsed, 1))
    record_timing("kv_events_events_per_second", round((received_events(patio) - first_events) / elapsed, 1))
    assert last_seq > first_seq


def test_vllm_killed_clears_the_pod_and_a_restarted_vllm_fills_it_again(stack, patio):
    vllm, redis, _, _ = stack
    client = redis.client()
    text, _ = prompt_of(vllm, 2)
    complete(vllm, text)
    wait_for(lambda: pod_blocks(client), 15, "blocks before the kill")
    killed = time.monotonic()
    vllm.stop()
    cleared_at = wait_for(lambda: not pod_blocks(client), CLEAR_BOUND, "pod cleared after vLLM died")
    assert not list(client.scan_iter(match=f"vllm:kv:block:{POD}@*"))
    record_timing("kv_events_clear_after_kill_seconds", round(cleared_at - killed, 2))
    vllm.start()
    record_timing("vllm_kvevents_restart_ready_seconds", vllm.ready_seconds)
    text, tokens = prompt_of(vllm, 3)
    complete(vllm, text)
    expected = {std_hash(tokens[i * 32 : (i + 1) * 32]) for i in range(len(tokens) // 32)}
    wait_for(lambda: expected <= pod_blocks(client), 30, "new blocks after the restart")
