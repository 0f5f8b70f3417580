"""KV-event bridge settings, with Kthena's names so its manifests work unchanged.

Kthena's runtime reads ``-I/--pod``, ``-N/--model`` (core settings here),
``REDIS_HOST/PORT/DB/PASSWORD`` (``redis_client.py``) and
``VLLM_ZMQ_ENDPOINT``/``VLLM_ZMQ_TOPIC_FILTER`` (``vllm_config.py``) or the
``SGLANG_ZMQ_*`` pair (``sglang_config.py``).  Patio adds the replay endpoints.
The bridge is on only when a Redis host, the pod and the model are all given;
``reason`` says why it is off.  Without a configured endpoint the bridge asks the
engine where it publishes (``discovery``), then falls back to Kthena's default.
Importing this module costs nothing (the bridge's modules load only when it is on).
"""

import argparse
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Tuple, Union

from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import as_str, parse_bool, parse_int, pick, positive_seconds, seconds

# Kthena's defaults (vllm_config.py, sglang_config.py, redis_client.py).
DEFAULT_ENDPOINT = "tcp://localhost:5557"
DEFAULT_TOPICS = {"vllm": "kv-events", "sglang": ""}
DEFAULT_REDIS_PORT = 6379
# Engine hash -> std hash pairs kept in memory (about 150 bytes each); BlockRemoved for an older
# block reads the std hash back from its mapping key (one more pipelined round trip).
HASH_CACHE_ENTRIES = 4096
# Batches held while Redis is unreachable; past it they are dropped and a resync follows.
DEFAULT_BACKLOG = 10_000
# ... and bytes of what is held (the reduced form, ~4.3 KB per 256-block step).
DEFAULT_BACKLOG_BYTES = 16 * 1024 * 1024
# The engine's replay buffer (vLLM's and SGLang's ``buffer_steps``): a hole longer than this
# cannot be filled by a replay, so it is a resync at once.
DEFAULT_REPLAY_BUFFER = 10_000
# Seconds a lost publisher has to come back (the same engine, proven by its replay) before
# the pod is cleared: a blip costs a replay of what was missed, not a clear and a rewrite.
DEFAULT_RECONNECT_GRACE = 2.0
# Seconds between refreshes of long-cached blocks (Kthena's router deletes fields older than
# 24 h); at most half the mapping TTL so no mapping key expires under a live block.
DEFAULT_REFRESH = 6 * 3600.0


@dataclass(frozen=True)
class KvEventsSettings:
    enabled: bool = False
    reason: str = "off"
    engine: str = "vllm"
    pod: str = ""
    model: str = ""
    endpoint: str = DEFAULT_ENDPOINT
    replay_endpoint: Optional[str] = None
    topic: str = "kv-events"
    redis_host: str = ""
    redis_port: int = DEFAULT_REDIS_PORT
    redis_db: int = 0
    redis_username: str = ""
    redis_password: str = ""
    timeout: float = 5.0  # connect/read/write timeout of every socket
    retry_max: float = 5.0  # longest wait between two reconnect attempts
    heartbeat: float = 10.0  # idle seconds before a ZMTP PING to the publisher (0: never)
    backlog: int = DEFAULT_BACKLOG
    backlog_bytes: int = DEFAULT_BACKLOG_BYTES
    replay_buffer: int = DEFAULT_REPLAY_BUFFER
    reconnect_grace: float = DEFAULT_RECONNECT_GRACE
    refresh: float = DEFAULT_REFRESH  # 0: never
    mapping_ttl: int = 86400
    max_frame_bytes: int = 16 * 1024 * 1024
    hash_cache: int = HASH_CACHE_ENTRIES
    # Endpoint discovery: when no endpoint is configured, ask the engine where it publishes.
    endpoint_configured: bool = True
    discovery: bool = True
    engine_url: str = ""
    engine_api_key: Optional[str] = None

    def __repr__(self) -> str:  # never print the Redis password or the engine's key
        return (
            f"KvEventsSettings(enabled={self.enabled}, endpoint={self.endpoint!r}, "
            f"redis={self.redis_host}:{self.redis_port}/{self.redis_db})"
        )

    @property
    def redis_where(self) -> str:
        return f"{self.redis_host}:{self.redis_port}/{self.redis_db}"


def add_flags(parser: Any) -> None:
    parser.add_argument("--redis-host", help="Redis for KV-aware routing (env REDIS_HOST; unset: KV events off)")
    parser.add_argument("--redis-port", help="Redis port (env REDIS_PORT; default 6379)")
    parser.add_argument("--redis-db", help="Redis database (env REDIS_DB; default 0)")
    parser.add_argument("--kv-events-endpoint", help="engine's KV-event PUB endpoint (env VLLM_ZMQ_ENDPOINT...)")
    parser.add_argument("--kv-events-replay-endpoint", help="engine's replay ROUTER (env VLLM_ZMQ_REPLAY_ENDPOINT...)")
    parser.add_argument("--kv-events-topic", help="topic filter (env VLLM_ZMQ_TOPIC_FILTER...)")


def parse_endpoint(endpoint: str) -> Tuple[str, Union[str, Tuple[str, int]]]:
    """``tcp://host:port`` -> ("tcp", (host, port)); ``ipc:///path`` -> ("ipc", path)."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return "ipc", endpoint[len("ipc://") :]
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"endpoint must be tcp://host:port or ipc://path, got {endpoint!r}")
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError(f"endpoint needs a host and a port: {endpoint!r}")
    host = host.strip("[]")
    if host == "*":
        host = "127.0.0.1"  # vLLM's bind form copied from its flags: the engine is local
    return "tcp", (host, int(port))


def _endpoint(setting: str, raw: str) -> str:
    value = raw.strip()
    try:
        parse_endpoint(value)
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None
    return value


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> KvEventsSettings:
    prefix = "VLLM" if core.engine == "vllm" else "SGLANG"

    def count(minimum: int) -> Any:
        return lambda s, r: parse_int(s, r, minimum=minimum)

    def port(setting: str, raw: str) -> int:
        return parse_int(setting, raw, minimum=1, maximum=65535)

    redis_host = pick(args, env, "redis_host", ("REDIS_HOST",), "", as_str).strip()
    endpoint_configured = bool(getattr(args, "kv_events_endpoint", None)) or f"{prefix}_ZMQ_ENDPOINT" in env
    mapping_ttl = pick(args, env, "kv_events_ttl", ("PATIO_KV_EVENTS_MAPPING_TTL",), 86400, count(1))
    refresh = pick(args, env, "kv_events_refresh", ("PATIO_KV_EVENTS_REFRESH",), DEFAULT_REFRESH, seconds)
    if refresh and refresh > mapping_ttl / 2:
        raise ConfigError(
            "PATIO_KV_EVENTS_REFRESH",
            f"{refresh:g}s is more than half PATIO_KV_EVENTS_MAPPING_TTL ({mapping_ttl}s): keys would expire first",
        )
    settings = KvEventsSettings(
        engine=core.engine,
        pod=core.pod,
        model=core.model,
        endpoint=pick(args, env, "kv_events_endpoint", (f"{prefix}_ZMQ_ENDPOINT",), DEFAULT_ENDPOINT, _endpoint),
        replay_endpoint=pick(
            args, env, "kv_events_replay_endpoint", (f"{prefix}_ZMQ_REPLAY_ENDPOINT",), None, _endpoint
        ),
        # Kthena reads the topic with os.getenv, so an empty value is a real (match-all) filter.
        topic=(
            args.kv_events_topic
            if getattr(args, "kv_events_topic", None) is not None
            else env.get(f"{prefix}_ZMQ_TOPIC_FILTER", DEFAULT_TOPICS.get(core.engine, ""))
        ),
        redis_host=redis_host,
        redis_port=pick(
            args,
            env,
            "redis_port",
            ("REDIS_PORT",),
            DEFAULT_REDIS_PORT,
            port,
        ),
        redis_db=pick(args, env, "redis_db", ("REDIS_DB",), 0, count(0)),
        redis_username=env.get("REDIS_USERNAME", ""),
        redis_password=env.get("REDIS_PASSWORD", ""),
        timeout=pick(args, env, "kv_events_timeout", ("PATIO_KV_EVENTS_TIMEOUT",), 5.0, positive_seconds),
        retry_max=pick(args, env, "kv_events_retry_max", ("PATIO_KV_EVENTS_RETRY_MAX",), 5.0, positive_seconds),
        heartbeat=pick(
            args,
            env,
            "kv_events_heartbeat",
            ("PATIO_KV_EVENTS_HEARTBEAT",),
            10.0,
            seconds,
        ),
        backlog=pick(
            args,
            env,
            "kv_events_backlog",
            ("PATIO_KV_EVENTS_BACKLOG",),
            DEFAULT_BACKLOG,
            count(1),
        ),
        backlog_bytes=pick(
            args,
            env,
            "kv_events_backlog_bytes",
            ("PATIO_KV_EVENTS_BACKLOG_BYTES",),
            DEFAULT_BACKLOG_BYTES,
            count(64 * 1024),
        ),
        replay_buffer=pick(
            args, env, "kv_events_replay_buffer", ("PATIO_KV_EVENTS_REPLAY_BUFFER",), DEFAULT_REPLAY_BUFFER, count(1)
        ),
        reconnect_grace=pick(
            args, env, "kv_events_grace", ("PATIO_KV_EVENTS_RECONNECT_GRACE",), DEFAULT_RECONNECT_GRACE, seconds
        ),
        refresh=refresh,
        mapping_ttl=mapping_ttl,
        endpoint_configured=endpoint_configured,
        discovery=pick(args, env, "kv_events_discovery", ("PATIO_KV_EVENTS_DISCOVERY",), True, parse_bool),
        engine_url=core.engine_endpoint,
        engine_api_key=core.engine_api_key,
        hash_cache=pick(
            args,
            env,
            "kv_events_hash_cache",
            ("PATIO_KV_EVENTS_HASH_CACHE",),
            HASH_CACHE_ENTRIES,
            count(0),
        ),
    )
    switch = pick(args, env, "kv_events", ("PATIO_KV_EVENTS",), True, parse_bool)
    missing = [
        name for name, value in (("REDIS_HOST", redis_host), ("--pod", core.pod), ("--model", core.model)) if not value
    ]
    if not switch:
        return _with(settings, False, "PATIO_KV_EVENTS=false")
    if core.engine not in DEFAULT_TOPICS:
        return _with(settings, False, f"{core.engine} publishes no KV-cache events")
    if missing:
        return _with(settings, False, "not configured: " + ", ".join(missing) + " unset")
    return _with(settings, True, "on")


def _with(settings: KvEventsSettings, enabled: bool, reason: str) -> KvEventsSettings:
    return replace(settings, enabled=enabled, reason=reason)
