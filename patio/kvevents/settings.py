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
from typing import Mapping, Optional, Tuple, Union

from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import (
    Section,
    Setting,
    as_str,
    fields_of,
    integer,
    parse_bool,
    positive_seconds,
    seconds,
    split_host_port,
    stripped,
)

# Kthena's defaults (vllm_config.py, sglang_config.py, redis_client.py).
DEFAULT_TOPICS = {"vllm": "kv-events", "sglang": ""}


def parse_endpoint(endpoint: str) -> Tuple[str, Union[str, Tuple[str, int]]]:
    """``tcp://host:port`` -> ("tcp", (host, port)); ``ipc:///path`` -> ("ipc", path)."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return "ipc", endpoint[len("ipc://") :]
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"endpoint must be tcp://host:port or ipc://path, got {endpoint!r}")
    try:
        host, port = split_host_port(endpoint[len("tcp://") :])
    except ValueError:
        port = None
    if port is None or not host:
        raise ValueError(f"endpoint needs a host and a port: {endpoint!r}")
    if host == "*":
        host = "127.0.0.1"  # vLLM's bind form copied from its flags: the engine is local
    return "tcp", (host, port)


def _endpoint(setting: str, raw: str) -> str:
    value = raw.strip()
    try:
        parse_endpoint(value)
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None
    return value


# Kthena's names (vllm_config.py, sglang_config.py, redis_client.py); {ENGINE} is VLLM or SGLANG
# after -E/--engine.  The bridge's own limits are Patio's.
SETTINGS = Section(
    "kvevents",
    "KV-cache events to Redis",
    (
        Setting("switch", "", "PATIO_KV_EVENTS", True, parse_bool, "false turns the bridge off whatever else is set"),
        Setting(
            "redis_host",
            "--redis-host",
            "REDIS_HOST",
            "",
            stripped,
            "Redis for KV-aware routing; the bridge is on only with a Redis host, the pod and the model",
            shown="empty (off)",
        ),
        Setting("redis_port", "--redis-port", "REDIS_PORT", 6379, integer(1, 65535), "Redis port"),
        Setting("redis_db", "--redis-db", "REDIS_DB", 0, integer(0), "Redis database"),
        Setting("redis_username", "", "REDIS_USERNAME", "", as_str, "Redis AUTH user (never logged or shown)"),
        Setting("redis_password", "", "REDIS_PASSWORD", "", as_str, "Redis AUTH password (never logged or shown)"),
        Setting(
            "endpoint",
            "--kv-events-endpoint",
            "{ENGINE}_ZMQ_ENDPOINT",
            "tcp://localhost:5557",
            _endpoint,
            "the engine's KV-event PUB, tcp://host:port or ipc://path",
            shown="discovered, else tcp://localhost:5557",
        ),
        Setting(
            "replay_endpoint",
            "--kv-events-replay-endpoint",
            "{ENGINE}_ZMQ_REPLAY_ENDPOINT",
            None,
            _endpoint,
            "the engine's replay ROUTER; without it a lost message means a resync from what arrives next",
            shown="discovered, else none",
        ),
        # Kthena reads the topic with os.getenv, so an empty value is a real (match-all) filter.
        Setting(
            "topic",
            "--kv-events-topic",
            "{ENGINE}_ZMQ_TOPIC_FILTER",
            None,
            as_str,
            "topic prefix filter; set but empty matches every topic",
            shown="kv-events (vLLM), empty (SGLang)",
            keep_empty=True,
        ),
        Setting(
            "discovery",
            "",
            "PATIO_KV_EVENTS_DISCOVERY",
            True,
            parse_bool,
            "ask the engine where it publishes when no endpoint is set",
        ),
        Setting(
            "timeout", "", "PATIO_KV_EVENTS_TIMEOUT", 5.0, positive_seconds, "seconds for every connect, read and write"
        ),
        Setting(
            "retry_max",
            "",
            "PATIO_KV_EVENTS_RETRY_MAX",
            5.0,
            positive_seconds,
            "longest wait in seconds between two reconnect attempts",
        ),
        Setting(
            "heartbeat",
            "",
            "PATIO_KV_EVENTS_HEARTBEAT",
            10.0,
            seconds,
            "idle seconds before a ZMTP PING to the publisher (0: never)",
        ),
        # Past either bound the held batches are dropped and a resync follows.  16 MiB is about
        # 3,700 realistic vLLM steps (256 blocks each), three minutes of a real engine under load,
        # inside a 256 Mi container.
        Setting(
            "backlog", "", "PATIO_KV_EVENTS_BACKLOG", 10_000, integer(1), "batches held while Redis cannot take them"
        ),
        Setting(
            "backlog_bytes",
            "",
            "PATIO_KV_EVENTS_BACKLOG_BYTES",
            16 * 1024 * 1024,
            integer(64 * 1024),
            "bytes of batches held while Redis cannot take them (the reduced form, ~4.3 KB per 256-block step)",
        ),
        # vLLM's and SGLang's ``buffer_steps``.
        Setting(
            "replay_buffer",
            "",
            "PATIO_KV_EVENTS_REPLAY_BUFFER",
            10_000,
            integer(1),
            "the engine's replay buffer: a longer hole cannot be replayed, so it is a resync at once",
        ),
        # A blip costs a replay of what was missed, not a clear and a rewrite.
        Setting(
            "reconnect_grace",
            "",
            "PATIO_KV_EVENTS_RECONNECT_GRACE",
            2.0,
            seconds,
            "seconds a lost publisher has to come back as the same engine before the pod is cleared",
        ),
        # Kthena's router deletes fields older than 24 h.
        Setting(
            "refresh",
            "",
            "PATIO_KV_EVENTS_REFRESH",
            6 * 3600.0,
            seconds,
            "seconds between refreshes of long-cached blocks (0: never; at most half the mapping TTL)",
        ),
        Setting(
            "mapping_ttl",
            "",
            "PATIO_KV_EVENTS_MAPPING_TTL",
            86400,
            integer(1),
            "seconds until a mapping key expires (Kthena's)",
        ),
        # About 150 bytes each; BlockRemoved for an older block reads the std hash back from its
        # mapping key (one more pipelined round trip).
        Setting(
            "hash_cache",
            "",
            "PATIO_KV_EVENTS_HASH_CACHE",
            4096,
            integer(0),
            "engine hash -> std hash pairs kept in memory",
        ),
    ),
    forms={"ENGINE": ("VLLM", "SGLANG")},
)


@dataclass(frozen=True)
class KvEventsSettings:
    enabled: bool = False
    reason: str = "off"
    engine: str = "vllm"
    pod: str = ""
    model: str = ""
    endpoint: str = SETTINGS.default("endpoint")
    replay_endpoint: Optional[str] = None
    topic: str = DEFAULT_TOPICS["vllm"]
    redis_host: str = SETTINGS.default("redis_host")
    redis_port: int = SETTINGS.default("redis_port")
    redis_db: int = SETTINGS.default("redis_db")
    redis_username: str = ""
    redis_password: str = ""
    timeout: float = SETTINGS.default("timeout")  # connect/read/write timeout of every socket
    retry_max: float = SETTINGS.default("retry_max")  # longest wait between two reconnect attempts
    heartbeat: float = SETTINGS.default("heartbeat")  # idle seconds before a ZMTP PING (0: never)
    backlog: int = SETTINGS.default("backlog")
    backlog_bytes: int = SETTINGS.default("backlog_bytes")
    replay_buffer: int = SETTINGS.default("replay_buffer")
    reconnect_grace: float = SETTINGS.default("reconnect_grace")
    refresh: float = SETTINGS.default("refresh")  # 0: never
    mapping_ttl: int = SETTINGS.default("mapping_ttl")
    max_frame_bytes: int = 16 * 1024 * 1024
    hash_cache: int = SETTINGS.default("hash_cache")
    # Endpoint discovery: when no endpoint is configured, ask the engine where it publishes.
    endpoint_configured: bool = True
    discovery: bool = SETTINGS.default("discovery")
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


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> KvEventsSettings:
    engine = "VLLM" if core.engine == "vllm" else "SGLANG"
    values = SETTINGS.read(args, env, ENGINE=engine)
    if values["refresh"] and values["refresh"] > values["mapping_ttl"] / 2:
        raise ConfigError(
            "PATIO_KV_EVENTS_REFRESH",
            f"{values['refresh']:g}s is more than half PATIO_KV_EVENTS_MAPPING_TTL ({values['mapping_ttl']}s): "
            "keys would expire first",
        )
    # Set at all (even empty) counts as configured: no discovery then.
    configured = SETTINGS.given(args, "endpoint") or any(
        name in env for name in SETTINGS["endpoint"].env_names({"ENGINE": engine})
    )
    settings = KvEventsSettings(
        **fields_of(
            KvEventsSettings,
            values,
            engine=core.engine,
            pod=core.pod,
            model=core.model,
            topic=DEFAULT_TOPICS.get(core.engine, "") if values["topic"] is None else values["topic"],
            endpoint_configured=configured,
            engine_url=core.engine_endpoint,
            engine_api_key=core.engine_api_key,
        )
    )
    missing = [
        name
        for name, value in (("REDIS_HOST", values["redis_host"]), ("--pod", core.pod), ("--model", core.model))
        if not value
    ]
    if not values["switch"]:
        return _with(settings, False, "PATIO_KV_EVENTS=false")
    if core.engine not in DEFAULT_TOPICS:
        return _with(settings, False, f"{core.engine} publishes no KV-cache events")
    if missing:
        return _with(settings, False, "not configured: " + ", ".join(missing) + " unset")
    return _with(settings, True, "on")


def _with(settings: KvEventsSettings, enabled: bool, reason: str) -> KvEventsSettings:
    return replace(settings, enabled=enabled, reason=reason)
