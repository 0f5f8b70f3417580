"""The core section of the settings: the server, the engine beside Patio, HTTP limits, shutdown.

Also the raw topology environment the incumbents set (their names), which the topology
section interprets.  Composed with the capability sections by ``patio.config``.
"""

import argparse
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from patio.errors import ConfigError
from patio.logs import redact_url
from patio.options import (
    as_str,
    parse_bool,
    parse_choice,
    pick,
    port_number,
    positive_int,
    positive_seconds,
    seconds,
)
from patio.profiles import PROFILES, Profile

ENGINES = ("sglang", "vllm", "llamacpp", "tgi", "triton")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Limits:
    """Named limits of the HTTP server; each guards one buffer or wait."""

    max_header_bytes: int = 16 * 1024  # request line + headers; past it -> 431
    max_body_bytes: int = 1024 * 1024  # request body; past it -> 413
    idle_timeout: float = 75.0  # keep-alive wait for the next request (longer than LB idle timeouts)
    request_timeout: float = 30.0  # first byte to complete request; slower clients get 408
    max_connections: int = 1024  # open client connections; at the limit an idle one is evicted, else 503
    # A new connection must send its first byte this soon: kubelet probes and Prometheus send at
    # once, so a connection that says nothing is a flood, not a client (issue 13, row 1).
    first_byte_timeout: float = 10.0
    # Whole-response write deadline: a client that does not read is cut off after it (issue 13, row 3).
    write_timeout: float = 30.0


@dataclass(frozen=True)
class CoreSettings:
    host: str = "0.0.0.0"
    port: int = 9091
    log_level: str = "INFO"
    log_format: str = "text"
    scrape_engine_metrics: bool = True
    enable_docs: bool = False
    instance_info: Optional[Mapping[str, Any]] = None
    # How Patio was started (patio.profiles): the incumbent whose defaults apply, and why.
    profile: str = "patio"
    profile_reason: str = "Patio's own command"
    # The engine: INFERENCE_ENGINE / -E when set (``engine_configured``), else the profile's
    # default, used until the engine itself says which it is (patio.engines.detect).
    engine: str = "sglang"
    engine_configured: bool = False
    engine_version: str = ""  # INFERENCE_ENGINE_VERSION as set ("" when unset)
    engine_version_default: str = ""  # shown when unset and the engine does not tell
    engine_endpoint: str = "http://localhost:8000"
    engine_api_key: Optional[str] = None
    metrics_path: str = "/metrics"
    pod: str = ""
    model: str = ""
    api_key: Optional[str] = None
    limits: Limits = Limits()
    shutdown_timeout: float = 10.0  # whole shutdown budget, well inside k8s' 30 s grace period
    drain_timeout: float = 3.0  # of that, how long in-flight requests may run after the listener closes
    ready_cache_ttl: float = 2.0  # engine health answer reused this long (SGLang /health generates a token)
    engine_health_timeout: float = 2.0
    engine_health_interval: float = 2.0  # Patio's own engine health watch (healing without probe traffic)
    ready_timeout: float = 1.0  # /ready answers within this, whatever a check is waiting on (kubelet's default)
    # Raw topology environment (names from the incumbents); the topology section interprets them.
    topo_type: str = ""
    heartbeat_interval: float = 30.0
    group_name: str = ""
    role_name: str = ""
    role_index: str = ""
    pod_ip: str = ""
    router_role_name: str = ""
    router_port: str = ""

    def __repr__(self) -> str:  # never print credentials
        return (
            f"CoreSettings(host={self.host!r}, port={self.port}, engine={self.engine!r}, "
            f"endpoint={redact_url(self.engine_endpoint)!r})"
        )


def add_flags(parser: Any) -> None:
    """The core flags (their short forms are Kthena's runtime flags)."""
    add = parser.add_argument
    add("-H", "--host", help="listen address (default 0.0.0.0)")
    add("-P", "--port", help="listen port (default 9091)")
    add("--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO; case-insensitive)")
    add("--log-format", help="text or json (default text)")
    add(
        "--scrape-engine-metrics",
        nargs="?",
        const="true",
        metavar="true|false",
        help="add the engine's metrics to /metrics (default true)",
    )
    add(
        "--enable-docs",
        "--enable-fastapi-docs",
        dest="enable_docs",
        nargs="?",
        const="true",
        metavar="true|false",
        help="serve /openapi.json and /docs",
    )
    add("--instance-info", help="JSON describing this worker, for topology")
    add(
        "--profile",
        help="patio, aibrix or kthena: whose defaults apply (env PATIO_PROFILE; default: inferred from the "
        "command, Kthena's flags or AIBrix's switches; see docs/migrating.md)",
    )
    add(
        "-E",
        "--engine",
        help="sglang, vllm, llamacpp, tgi or triton (env INFERENCE_ENGINE; default: what the engine answers as)",
    )
    add("--engine-version", help="engine version label (env INFERENCE_ENGINE_VERSION)")
    add(
        "-B",
        "--engine-base-url",
        dest="engine_endpoint",
        help="engine base URL (env INFERENCE_ENGINE_ENDPOINT; default http://localhost:8000)",
    )
    add(
        "-M",
        "--engine-metrics-path",
        dest="metrics_path",
        help="engine metrics path (env METRIC_SCRAPE_PATH; default /metrics)",
    )
    add("-I", "--pod", help="pod name, shown on patio_build_info")
    add("-N", "--model", help="model name, shown on patio_build_info")
    add("--api-key", help="require Authorization: Bearer KEY on management routes (env PATIO_API_KEY)")
    add("--max-header-bytes", help="request line + headers limit (default 16384)")
    add("--max-body-bytes", help="request body limit (default 1048576)")
    add("--idle-timeout", help="keep-alive idle timeout in seconds (default 75)")
    add("--request-timeout", help="seconds a client has to send a whole request (default 30)")
    add("--max-connections", help="concurrent client connections; idle ones are evicted at the limit (default 1024)")
    add("--first-byte-timeout", help="seconds a new connection has to send its first byte (default 10)")
    add("--write-timeout", help="seconds a response may take to be written to the client (default 30)")
    add("--shutdown-timeout", help="whole shutdown budget in seconds (default 10)")
    add("--drain-timeout", help="seconds in-flight requests may finish after the listener closes (default 3)")
    add("--ready-cache-ttl", help="seconds an engine health answer is reused by /ready (default 2)")
    add("--ready-timeout", help="seconds /ready may take before answering from what it knows (default 1)")
    add("--engine-health-interval", help="seconds between Patio's own engine health probes (default 2)")


def _engine_endpoint(setting: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not (value.startswith("http://") or value.startswith("https://")):
        if "://" in value:
            raise ConfigError(setting, f"must be an http:// or https:// URL, got {raw!r}")
        value = "http://" + value
    host = value.split("://", 1)[1]
    if not host or host.startswith("/"):
        raise ConfigError(setting, f"has no host: {raw!r}")
    return value


def _path(setting: str, raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/"):
        raise ConfigError(setting, f"must start with '/', got {raw!r}")
    return value


def _instance_info(setting: str, raw: str) -> Mapping[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(setting, f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(setting, "must be a JSON object")
    return value


def _secret_from_file(setting: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(setting, f"{path} is empty")
    return value


def from_sources(
    args: argparse.Namespace,
    env: Mapping[str, str],
    profile: Optional[Profile] = None,
    profile_reason: str = "Patio's own command",
) -> CoreSettings:
    """The core section; ``profile`` supplies the start's engine defaults (``patio.profiles``)."""
    profile = profile or PROFILES["patio"]
    api_key: Optional[str] = pick(args, env, "api_key", ("PATIO_API_KEY",), None, as_str)
    if api_key is None and "PATIO_API_KEY" in env and not env["PATIO_API_KEY"].strip():
        # Set but empty is a mistake (a missing Secret key renders as ""), not "no key": refusing
        # to start beats serving management routes open (issue 13, row 16).
        raise ConfigError("PATIO_API_KEY", "is set but empty (unset it to run without an API key)")
    if api_key is None and env.get("PATIO_API_KEY_FILE"):
        api_key = _secret_from_file("PATIO_API_KEY_FILE", env["PATIO_API_KEY_FILE"])
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key", "must not be empty")

    engine_api_key = env.get("INFERENCE_ENGINE_API_KEY") or env.get("VLLM_API_KEY") or None
    engine: Optional[str] = pick(
        args, env, "engine", ("INFERENCE_ENGINE",), None, lambda s, r: parse_choice(s, r, ENGINES)
    )

    limits = Limits(
        max_header_bytes=pick(
            args, env, "max_header_bytes", ("PATIO_MAX_HEADER_BYTES",), Limits.max_header_bytes, positive_int
        ),
        max_body_bytes=pick(
            args, env, "max_body_bytes", ("PATIO_MAX_BODY_BYTES",), Limits.max_body_bytes, positive_int
        ),
        idle_timeout=pick(args, env, "idle_timeout", ("PATIO_IDLE_TIMEOUT",), Limits.idle_timeout, positive_seconds),
        request_timeout=pick(
            args, env, "request_timeout", ("PATIO_REQUEST_TIMEOUT",), Limits.request_timeout, positive_seconds
        ),
        max_connections=pick(
            args, env, "max_connections", ("PATIO_MAX_CONNECTIONS",), Limits.max_connections, positive_int
        ),
        first_byte_timeout=pick(
            args,
            env,
            "first_byte_timeout",
            ("PATIO_FIRST_BYTE_TIMEOUT",),
            Limits.first_byte_timeout,
            positive_seconds,
        ),
        write_timeout=pick(
            args, env, "write_timeout", ("PATIO_WRITE_TIMEOUT",), Limits.write_timeout, positive_seconds
        ),
    )
    core = CoreSettings(
        host=pick(args, env, "host", ("PATIO_HOST",), "0.0.0.0", as_str),
        port=pick(args, env, "port", ("PATIO_PORT",), 9091, port_number),
        log_level=pick(
            args,
            env,
            "log_level",
            ("PATIO_LOG_LEVEL", "LOG_LEVEL"),
            "INFO",
            lambda s, r: parse_choice(s, r, LOG_LEVELS, upper=True),
        ),
        log_format=pick(
            args, env, "log_format", ("PATIO_LOG_FORMAT",), "text", lambda s, r: parse_choice(s, r, LOG_FORMATS)
        ),
        scrape_engine_metrics=pick(
            args, env, "scrape_engine_metrics", ("PATIO_SCRAPE_ENGINE_METRICS",), True, parse_bool
        ),
        enable_docs=pick(args, env, "enable_docs", ("PATIO_ENABLE_DOCS",), False, parse_bool),
        instance_info=pick(args, env, "instance_info", ("INSTANCE_INFO",), None, _instance_info),
        profile=profile.name,
        profile_reason=profile_reason,
        engine=engine or profile.engine or "sglang",
        engine_configured=engine is not None,
        engine_version=pick(args, env, "engine_version", ("INFERENCE_ENGINE_VERSION",), "", as_str).strip(),
        engine_version_default=profile.engine_version,
        engine_endpoint=pick(
            args, env, "engine_endpoint", ("INFERENCE_ENGINE_ENDPOINT",), "http://localhost:8000", _engine_endpoint
        ),
        engine_api_key=engine_api_key,
        metrics_path=pick(args, env, "metrics_path", ("METRIC_SCRAPE_PATH",), "/metrics", _path),
        pod=pick(args, env, "pod", ("POD_NAME",), "", as_str),
        model=pick(args, env, "model", ("MODEL_NAME",), "", as_str),
        api_key=api_key,
        limits=limits,
        shutdown_timeout=pick(args, env, "shutdown_timeout", ("PATIO_SHUTDOWN_TIMEOUT",), 10.0, positive_seconds),
        drain_timeout=pick(args, env, "drain_timeout", ("PATIO_DRAIN_TIMEOUT",), 3.0, seconds),
        ready_cache_ttl=pick(args, env, "ready_cache_ttl", ("PATIO_READY_CACHE_TTL",), 2.0, seconds),
        ready_timeout=pick(args, env, "ready_timeout", ("PATIO_READY_TIMEOUT",), 1.0, positive_seconds),
        engine_health_interval=pick(
            args, env, "engine_health_interval", ("PATIO_ENGINE_HEALTH_INTERVAL",), 2.0, positive_seconds
        ),
        topo_type=env.get("TOPO_TYPE", ""),
        heartbeat_interval=pick(args, env, "heartbeat_interval", ("HEARTBEAT_INTERVAL",), 30.0, positive_seconds),
        group_name=env.get("RBG_GROUP_NAME") or env.get("GROUP_NAME") or "",
        role_name=env.get("RBG_ROLE_NAME") or env.get("ROLE_NAME") or "",
        role_index=env.get("RBG_ROLE_INDEX") or env.get("ROLE_INDEX") or "",
        pod_ip=env.get("POD_IP", ""),
        router_role_name=env.get("SGL_ROUTER_ROLE_NAME", ""),
        router_port=env.get("SGL_ROUTER_PORT", ""),
    )
    if core.drain_timeout > core.shutdown_timeout:
        raise ConfigError("--drain-timeout", "must not exceed --shutdown-timeout")
    return core
