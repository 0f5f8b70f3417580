"""What Kthena's router reads of Patio's writes, newer event fields, and endpoint discovery.

The router's reading is replayed from its Go source (tests/kthena_router.py: volcano-sh/kthena
``pkg/kthena-router/scheduler/plugins/kvcache_aware.go`` at 3cc0572, with PRs #1463 and #1422)
against the real redis-server the bridge writes to.  Events come from a libzmq publisher,
encoded by msgspec from copies of the engines' structs: vLLM at 0181ea3 (the batch a map,
``BlockStored`` with ``medium``, ``lora_name``, ``extra_keys``, ``group_idx``,
``kv_cache_spec_kind``), SGLang's array form with trailing fields and EAGLE's token pairs
(llm-d-kv-cache ``pkg/kvevents/engineadapter/sglang_adapter.go``).  Discovery answers come
from an HTTP peer speaking the engines' routes as their source defines them.
"""

import json
import signal
import time

import msgspec
import pytest
from kthena_router import gc_stale_fields, score
from kvevents_peers import (
    MODEL,
    POD,
    BlockRemoved,
    DiscoveryEngine,
    Publisher,
    RedisServer,
    batch,
    cleared,
    map_batch,
    redis_cli_scan,
    redis_state,
    settled,
    std_hash,
    stored,
    wait_for,
)
from support import PatioProcess, http_call

from patio.kvevents import discovery
from patio.kvevents import events as ev
from patio.kvevents.bridge import Bridge
from patio.kvevents.settings import KvEventsSettings
from patio.metrics.registry import Registry

DAY = 24 * 3600

# The shared fixtures: redis_server (one per module), redis, publisher, bridges.
pytest_plugins = ["kvevents_fixtures"]


class Clock:
    """The bridge's wall clock (the timestamps it writes), set by the test."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def start_bridge(bridges, redis_server, publisher, clock=time.time, **overrides):
    settings = KvEventsSettings(
        enabled=True,
        pod=POD,
        model=MODEL,
        endpoint=publisher.endpoint,
        replay_endpoint=publisher.replay_endpoint,
        redis_host="127.0.0.1",
        redis_port=redis_server.port,
        timeout=2.0,
        retry_max=0.2,
        **overrides,
    )
    bridge = Bridge(settings, Registry(), clock=clock)
    bridges.append(bridge)
    bridge.start()
    wait_for(lambda: bridge.state == "live", what="bridge live")
    return bridge


PROMPT = [(t * 37) % 32000 + 500 for t in range(64)]  # 4 router blocks of 16 tokens


def prompt_event(tokens, first_hash=1, **fields):
    """The engine's BlockStored for ``tokens`` in 16-token blocks (the router's default block size)."""
    hashes = [first_hash + i for i in range(len(tokens) // 16)]
    event = stored(hashes, tokens, 16)
    return msgspec.structs.replace(event, **fields) if fields else event


# -- issue 25, item 4: the router's reading -------------------------------------------------------------------
def test_the_router_scores_this_pod_for_a_prompt_the_engine_cached(redis_server, redis, publisher, bridges):
    bridge = start_bridge(bridges, redis_server, publisher)
    settled(bridge, publisher.publish(batch([prompt_event(PROMPT)])))
    started = int(time.time()) - 60
    assert score(redis, PROMPT, MODEL, {POD: started, "other.ns": started}) == {POD: 100}
    assert score(redis, PROMPT[:32] + [1] * 32, MODEL, {POD: started}) == {POD: 50}


def test_after_an_engine_restart_the_router_sees_what_the_new_engine_announced(redis_server, redis, publisher, bridges):
    """freshOwners drops fields written at or before the pod's last container start (PR #1463): the
    bridge clears the old engine's blocks and writes what the new one announces with a later stamp;
    a same-second write, dropped by the router, is rewritten by the refresh."""
    clock = Clock(1_000_000_000)
    bridge = start_bridge(bridges, redis_server, publisher, clock, reconnect_grace=0.2, mapping_ttl=6, refresh=2.0)
    settled(bridge, publisher.publish(batch([prompt_event(PROMPT)])))
    restarted = clock.now + 50
    publisher.stop()  # the engine's container restarts
    wait_for(lambda: redis_state(redis) == ({}, {}), what="the old engine's blocks cleared")
    clock.now = restarted  # the new engine announces within the second its container started
    publisher.start()
    wait_for(lambda: bridge.state == "live", what="the new engine's publisher")
    settled(bridge, publisher.publish(batch([prompt_event(PROMPT[:32], first_hash=100)])))
    assert score(redis, PROMPT, MODEL, {POD: restarted}) == {}  # same second: the router drops it
    clock.now = restarted + 30
    wait_for(lambda: bridge.metrics.refreshed.value() >= 2, what="the refresh")
    assert score(redis, PROMPT, MODEL, {POD: restarted}) == {POD: 50}
    stamps = {int(redis.hget(k, POD)) for k in redis.scan_iter("matrix:kv:block:*")}
    assert stamps == {restarted + 30}


@pytest.mark.parametrize("refresh", [2.0, 0.0], ids=["refreshed", "control_without_refresh"])
def test_a_block_cached_for_days_keeps_its_field_through_the_routers_gc(
    refresh, redis_server, redis, publisher, bridges
):
    clock = Clock(1_000_000_000)
    bridge = start_bridge(bridges, redis_server, publisher, clock, mapping_ttl=6, refresh=refresh)
    settled(bridge, publisher.publish(batch([prompt_event(PROMPT)])))
    clock.now += DAY + 3600  # the engine keeps the prefix for a day and an hour
    if refresh:
        wait_for(lambda: bridge.metrics.refreshed.value() >= 4, what="every block refreshed")
        assert all(redis.ttl(k) > 3 for k in redis.scan_iter(f"vllm:kv:block:{POD}@*"))
    else:
        time.sleep(3)
    deleted = gc_stale_fields(redis, clock.now + 60)
    found = score(redis, PROMPT, MODEL, {POD: 1})
    if refresh:
        assert deleted == 0 and found == {POD: 100}
    else:
        assert deleted == 4 and found == {}  # what a bridge without the refresh leaves the router


# -- issue 25, item 5: newer fields, carried where Kthena keys on them ------------------------------------------
def test_a_lora_block_is_claimed_under_the_adapters_name(redis_server, redis, publisher, bridges):
    """The router scores a request with the model it names (router.go hands ``modelName`` to the
    scheduler): for a request to an adapter, its name.  A block computed with the adapter is no
    prefix of the base model's."""
    bridge = start_bridge(bridges, redis_server, publisher)
    lora = prompt_event(PROMPT, lora_name="sql-lora", lora_id=1)
    nameless = prompt_event(PROMPT, first_hash=50, lora_id=2)  # older vLLM: an id, no name
    seq = publisher.publish(map_batch([lora, nameless]))
    settled(bridge, seq)
    started = int(time.time()) - 60
    assert score(redis, PROMPT, "sql-lora", {POD: started}) == {POD: 100}
    assert score(redis, PROMPT, MODEL, {POD: started}) == {}
    h = std_hash(PROMPT[:16])
    assert redis.get(f"vllm:kv:block:{POD}@1") == f"{h}@sql-lora".encode()
    assert bridge.metrics.skipped.value("BlockStored") == 1
    settled(bridge, publisher.publish(map_batch([BlockRemoved([1, 2], "GPU")])))
    assert score(redis, PROMPT, "sql-lora", {POD: started}) == {}  # the first block is gone: no prefix
    settled(bridge, publisher.publish(map_batch([cleared()])))
    assert redis_state(redis) == ({}, {})


def test_newest_vllm_batches_with_every_field_and_some_not_yet_invented(redis_server, redis, publisher, bridges):
    bridge = start_bridge(bridges, redis_server, publisher)
    full = prompt_event(
        PROMPT,
        extra_keys=[None, ("mm-hash",), None, None],
        kv_cache_spec_kind="full_attention",
        kv_cache_spec_sliding_window=None,
    )
    payload = msgspec.msgpack.decode(map_batch([full], rank=1))
    payload["events"][0]["snapshot_version"] = 7  # a field added after these tests were written
    payload["events"][0]["locality"] = {"tier": "HBM", "nested": [1, [2]]}
    payload["later_batch_field"] = "x"
    seq = publisher.publish(msgspec.msgpack.encode(payload))
    settled(bridge, seq)
    assert score(redis, PROMPT, MODEL, {POD: 1}) == {POD: 100}
    assert bridge.metrics.malformed.value("event") == 0


def test_32_byte_hashes_become_the_integers_vllm_would_send(redis_server, redis, publisher, bridges):
    """VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 sends sha256 digests; maybe_convert_block_hash keeps the low 64 bits."""
    bridge = start_bridge(bridges, redis_server, publisher)
    digests = [bytes([i]) * 32 for i in (1, 2, 3, 4)]
    settled(bridge, publisher.publish(batch([stored(digests, PROMPT, 16)])))
    low = int.from_bytes(digests[0], "big") & ((1 << 64) - 1)
    assert redis.get(f"vllm:kv:block:{POD}@{low}") == str(std_hash(PROMPT[:16])).encode()
    settled(bridge, publisher.publish(batch([BlockRemoved(digests[:1], "GPU")])))
    assert redis.get(f"vllm:kv:block:{POD}@{low}") is None


def test_only_full_attention_groups_claim_prefixes(redis_server, redis, publisher, bridges):
    """A hybrid model's sliding-window group evicts early blocks all the time; its removals (which
    carry only group_idx) must not take the full-attention group's claims away."""
    bridge = start_bridge(bridges, redis_server, publisher)
    events = [
        prompt_event(PROMPT, group_idx=0, kv_cache_spec_kind="full_attention"),
        prompt_event(PROMPT, first_hash=500, group_idx=1, kv_cache_spec_kind="sliding_window"),
    ]
    settled(bridge, publisher.publish(map_batch(events)))
    settled(bridge, publisher.publish(map_batch([BlockRemoved([500, 501], "GPU", group_idx=1)])))
    assert score(redis, PROMPT, MODEL, {POD: 1}) == {POD: 100}
    assert len(redis_state(redis)[0]) == 4  # the sliding-window group's blocks were never claimed
    settled(bridge, publisher.publish(map_batch([BlockRemoved([1], "GPU", group_idx=0)])))
    assert score(redis, PROMPT, MODEL, {POD: 1}) == {}


class SglangEagleStored(msgspec.Struct, array_like=True, tag="BlockStored"):  # type: ignore[call-arg]
    """SGLang's array form with the trailing fields llm-d-kv-cache decodes (sglang_adapter.go):
    tag, block_hashes, parent, token_ids (pairs under EAGLE), block_size, lora_id, medium,
    lora_name, extra_keys."""

    block_hashes: list
    parent_block_hash: object
    token_ids: list
    block_size: int
    lora_id: object
    medium: object
    lora_name: object
    extra_keys: object


def test_sglang_trailing_fields_and_eagle_token_pairs(redis_server, redis, bridges):
    publisher = Publisher(topic=b"", replay_shape="sglang")
    try:
        bridge = start_bridge(bridges, redis_server, publisher, engine="sglang", topic="")
        pairs = [[PROMPT[i], PROMPT[i + 1] if i + 1 < len(PROMPT) else 0] for i in range(len(PROMPT))]
        event = SglangEagleStored([-5, -6, -7, -8], None, pairs, 16, None, "GPU", None, None)
        payload = msgspec.msgpack.encode([time.time(), [event]])
        settled(bridge, publisher.publish(payload))
        assert score(redis, PROMPT, MODEL, {POD: 1}) == {POD: 100}
        assert redis.get(f"sglang:kv:block:{POD}@-5") == str(std_hash(PROMPT[:16])).encode()
    finally:
        publisher.close()


# -- data-parallel ranks and endpoint discovery -----------------------------------------------------------------
def test_the_batch_rank_is_decoded():
    assert ev.decode_batch(map_batch([], rank=3)).dp_rank == 3
    assert ev.decode_batch(batch([])).dp_rank == 0


VLLM_SOURCES = [
    (
        "envelope",
        {
            "sources": [
                {
                    "data_parallel_rank": 1,
                    "endpoint": "tcp://0.0.0.0:41002",
                    "replay_endpoint": None,
                    "topic": "kv-events",
                },
                {
                    "data_parallel_rank": 0,
                    "endpoint": "tcp://0.0.0.0:41001",
                    "replay_endpoint": "tcp://0.0.0.0:41003",
                    "topic": "kv-events",
                },
            ]
        },
        [
            (0, "tcp://10.1.2.3:41001", "tcp://10.1.2.3:41003", "kv-events"),
            (1, "tcp://10.1.2.3:41002", None, "kv-events"),
        ],
    ),
    (
        "bare_list",
        [{"data_parallel_rank": 0, "endpoint": "tcp://*:5557", "replay_endpoint": None, "topic": ""}],
        [(0, "tcp://10.1.2.3:5557", None, "")],
    ),
    ("ipv6_wildcard", [{"endpoint": "tcp://[::]:5557"}], [(0, "tcp://10.1.2.3:5557", None, "")]),
    ("a_real_host_kept", [{"endpoint": "tcp://vllm-0.svc:5557"}], [(0, "tcp://vllm-0.svc:5557", None, "")]),
    ("ipc_kept", [{"endpoint": "ipc:///tmp/kv"}], [(0, "ipc:///tmp/kv", None, "")]),
    ("empty", {"sources": []}, []),
]


@pytest.mark.parametrize("answer,expected", [(a, e) for _, a, e in VLLM_SOURCES], ids=[n for n, *_ in VLLM_SOURCES])
def test_vllm_kv_event_sources(answer, expected):
    sources = discovery.parse_vllm(json.dumps(answer).encode(), "10.1.2.3")
    assert [(s.rank, s.endpoint, s.replay_endpoint, s.topic) for s in sources] == expected


def sglang_info(config, **extra):
    return {
        "model_path": "m",
        "kv_events_config": None if config is None else json.dumps(config),
        "dp_size": 1,
        **extra,
    }


SGLANG_INFO = [
    ("no_events", sglang_info(None), []),
    ("null_publisher", sglang_info({"publisher": "null"}), []),
    ("defaults", sglang_info({"publisher": "zmq"}), [(0, "tcp://10.1.2.3:5557", None, "")]),
    (
        "dp_attention_ranks",
        sglang_info(
            {"publisher": "zmq", "endpoint": "tcp://*:6000", "replay_endpoint": "tcp://*:6100", "topic": "t"},
            dp_size=2,
            enable_dp_attention=True,
        ),
        [
            (0, "tcp://10.1.2.3:6000", "tcp://10.1.2.3:6100", "t"),
            (1, "tcp://10.1.2.3:6001", "tcp://10.1.2.3:6101", "t"),
        ],
    ),
    ("dp_without_dp_attention", sglang_info({"publisher": "zmq"}, dp_size=4), [(0, "tcp://10.1.2.3:5557", None, "")]),
]


@pytest.mark.parametrize("answer,expected", [(a, e) for _, a, e in SGLANG_INFO], ids=[n for n, *_ in SGLANG_INFO])
def test_sglang_server_info(answer, expected):
    sources = discovery.parse_sglang(json.dumps(answer).encode(), "10.1.2.3")
    assert [(s.rank, s.endpoint, s.replay_endpoint, s.topic) for s in sources] == expected


@pytest.mark.parametrize(
    "parse,body",
    [
        (discovery.parse_vllm, b"not json"),
        (discovery.parse_vllm, b'{"sources": "x"}'),
        (discovery.parse_vllm, b'[{"endpoint": "http://x:1"}]'),
        (discovery.parse_vllm, b'[{"endpoint": "tcp://h:1", "data_parallel_rank": -1}]'),
        (discovery.parse_sglang, b'{"kv_events_config": "{not json"}'),
        (discovery.parse_sglang, b'{"kv_events_config": "{\\"publisher\\": \\"zmq\\", \\"endpoint\\": 5}"}'),
    ],
    ids=["not_json", "sources_not_a_list", "not_zmq", "bad_rank", "config_not_json", "endpoint_not_a_string"],
)
def test_discovery_answers_that_cannot_be_used(parse, body):
    with pytest.raises(discovery.DiscoveryError):
        parse(body, "localhost")


def test_patio_discovers_vllms_publishers_per_rank_and_clears_every_rank_on_sigterm():
    server = RedisServer()
    ranks = [Publisher(), Publisher()]
    sources = [
        {
            "data_parallel_rank": r,
            "endpoint": f"tcp://0.0.0.0:{p.port}",
            "replay_endpoint": f"tcp://0.0.0.0:{p.replay_port}",
            "topic": "kv-events",
        }
        for r, p in enumerate(ranks)
    ]
    engine = DiscoveryEngine("vllm", {"sources": sources})
    try:
        ranks[0].publish(batch([prompt_event(PROMPT)]))
        ranks[1].publish(batch([prompt_event(PROMPT[:32], first_hash=1)]))  # the same engine hashes on rank 1
        env = {
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": engine.url,
            "PATIO_ENGINE_HEALTH_INTERVAL": "0.2",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(server.port),
            "PATIO_KV_EVENTS_RETRY_MAX": "0.3",
        }
        with PatioProcess(["-I", POD, "-N", MODEL, "--scrape-engine-metrics", "false"], env=env) as patio:
            state = lambda: json.loads(http_call("GET", patio.url + "/v1/kv-events")[2])  # noqa: E731
            wait_for(
                lambda: state()["state"] == "live" and [r["state"] for r in state().get("ranks", [])] == ["live"],
                what="both ranks live",
            )
            shown = state()
            assert shown["endpoint_source"] == "discovered" and shown["endpoint"] == f"tcp://127.0.0.1:{ranks[0].port}"
            assert shown["ranks"][0]["data_parallel_rank"] == 1
            keys = redis_cli_scan(server.port, f"vllm:kv:block:{POD}*")
            assert len([k for k in keys if k.startswith(f"vllm:kv:block:{POD}@")]) == 4
            assert len([k for k in keys if k.startswith(f"vllm:kv:block:{POD}:dp1@")]) == 2
            assert score(server.client(), PROMPT, MODEL, {POD: 1}) == {POD: 100}
            assert "/kv_event_sources" in engine.requests
            assert patio.stop(signal.SIGTERM) == 0
            assert redis_cli_scan(server.port) == []
    finally:
        for p in ranks:
            p.close()
        engine.close()
        server.close()


@pytest.mark.parametrize("kind", ["sglang", "vllm_without_the_route"])
def test_patio_discovers_sglangs_publisher_or_falls_back_to_kthenas_default(kind):
    server = RedisServer()
    publisher = Publisher(topic=b"", replay_shape="sglang")
    if kind == "sglang":
        config = {
            "publisher": "zmq",
            "endpoint": f"tcp://*:{publisher.port}",
            "replay_endpoint": f"tcp://*:{publisher.replay_port}",
        }
        engine = DiscoveryEngine("sglang", sglang_info(config))
    else:
        engine = DiscoveryEngine("vllm", None)  # an older vLLM: 404
    try:
        env = {
            "INFERENCE_ENGINE": "sglang" if kind == "sglang" else "vllm",
            "INFERENCE_ENGINE_ENDPOINT": engine.url,
            "PATIO_ENGINE_HEALTH_INTERVAL": "0.2",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(server.port),
            "PATIO_KV_EVENTS_RETRY_MAX": "0.3",
        }
        with PatioProcess(["-I", POD, "-N", MODEL, "--scrape-engine-metrics", "false"], env=env) as patio:
            state = lambda: json.loads(http_call("GET", patio.url + "/v1/kv-events")[2])  # noqa: E731
            if kind == "sglang":
                wait_for(lambda: state()["state"] == "live", what="live on the discovered publisher")
                assert state()["endpoint_source"] == "discovered" and state()["topic"] == ""
                seq = publisher.publish(
                    msgspec.msgpack.encode([time.time(), [["BlockStored", [7], None, PROMPT[:16], 16, None]]])
                )
                wait_for(lambda: state()["last_seq"] == seq, what="applied")
                assert server.client().get(f"sglang:kv:block:{POD}@7") is not None
            else:
                wait_for(lambda: state()["endpoint_source"] == "default", what="the default endpoint")
                assert state()["endpoint"] == "tcp://localhost:5557"
            patio.stop()
    finally:
        publisher.close()
        engine.close()
        server.close()
