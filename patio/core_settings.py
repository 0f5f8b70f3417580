"""The core section of the settings: the server, the engine beside Patio, HTTP limits, shutdown.

Also the raw topology environment the incumbents set (their names), which the topology
section interprets.  Three tables of rows (``patio.options``): ``SERVER``, ``HTTP`` and
``WORKER``; composed with the capability sections by ``patio.config``.
"""

import argparse
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from patio.errors import ConfigError
from patio.logs import redact_url
from patio.options import (
    Section,
    Setting,
    as_str,
    base_url,
    choice,
    fields_of,
    json_object,
    parse_bool,
    port_number,
    positive_int,
    positive_seconds,
    seconds,
    stripped,
    url_path,
)
from patio.profiles import PROFILES, Profile

ENGINES = ("sglang", "vllm", "llamacpp", "tgi", "triton")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
# The engine assumed until the engine says which it is, when neither -E nor the profile names one.
FALLBACK_ENGINE = PROFILES["patio"].engine

# The short flags are Kthena's runtime flags (-E -H -P -B -M -I -N), so its manifests run unchanged.
SERVER = Section(
    "server",
    "Server and engine",
    (
        Setting("host", "-H --host", "PATIO_HOST", "0.0.0.0", as_str, "listen address"),
        Setting("port", "-P --port", "PATIO_PORT", 9091, port_number, "listen port"),
        Setting(
            "profile",
            "--profile",
            "PATIO_PROFILE",
            None,
            as_str,
            "patio, aibrix or kthena: whose defaults apply (docs/migrating.md)",
            shown="inferred from the command, Kthena's flags or AIBrix's switches",
        ),
        Setting(
            "log_level",
            "--log-level",
            "PATIO_LOG_LEVEL LOG_LEVEL",
            "INFO",
            choice(*LOG_LEVELS, upper=True),
            "DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)",
        ),
        Setting("log_format", "--log-format", "PATIO_LOG_FORMAT", "text", choice(*LOG_FORMATS), "text or json"),
        Setting(
            "engine",
            "-E --engine",
            "INFERENCE_ENGINE",
            None,
            choice(*ENGINES),
            f"{', '.join(ENGINES[:-1])} or {ENGINES[-1]}; unset, Patio asks the engine (GET /version, "
            f"/server_info) and assumes {FALLBACK_ENGINE} until it answers",
            shown="what the engine answers as",
        ),
        Setting(
            "engine_version",
            "--engine-version",
            "INFERENCE_ENGINE_VERSION",
            "",
            stripped,
            "engine version label on GET / and patio_build_info",
            shown=f"the engine's own, else {PROFILES['patio'].engine_version} "
            f"({PROFILES['aibrix'].engine_version} in AIBrix's start profile)",
        ),
        Setting(
            "engine_endpoint",
            "-B --engine-base-url",
            "INFERENCE_ENGINE_ENDPOINT",
            "http://localhost:8000",
            base_url,
            "the engine's base URL (host:port means http://host:port)",
        ),
        Setting(
            "engine_api_key",
            "",
            "INFERENCE_ENGINE_API_KEY VLLM_API_KEY",
            None,
            as_str,
            "sent to the engine as Authorization: Bearer",
        ),
        Setting(
            "metrics_path",
            "-M --engine-metrics-path",
            "METRIC_SCRAPE_PATH",
            "/metrics",
            url_path,
            "the engine's metrics path",
        ),
        Setting(
            "scrape_engine_metrics",
            "--scrape-engine-metrics",
            "PATIO_SCRAPE_ENGINE_METRICS",
            True,
            parse_bool,
            "add the engine's metrics to /metrics",
            switch=True,
        ),
        Setting("pod", "-I --pod", "POD_NAME", "", as_str, "pod name, a label of patio_build_info"),
        Setting("model", "-N --model", "MODEL_NAME", "", as_str, "model name, a label of patio_build_info"),
        Setting(
            "instance_info",
            "--instance-info",
            "INSTANCE_INFO",
            None,
            json_object,
            'this worker, for topology (RoleBasedGroup\'s form: {"data": {"port": 8000, "worker_type": '
            '"prefill", "bootstrap_port": 34000}})',
            metavar="JSON",
        ),
        Setting(
            "enable_docs",
            "--enable-docs --enable-fastapi-docs",
            "PATIO_ENABLE_DOCS",
            False,
            parse_bool,
            "serve /openapi.json and /docs",
            switch=True,
        ),
        Setting(
            "api_key",
            "--api-key",
            "PATIO_API_KEY",
            None,
            as_str,
            "require Authorization: Bearer KEY on management routes",
        ),
        Setting(
            "api_key_file",
            "",
            "PATIO_API_KEY_FILE",
            None,
            as_str,
            "a file holding the API key (a mounted Secret), read when neither --api-key nor PATIO_API_KEY is given",
        ),
    ),
)

HTTP = Section(
    "http",
    "HTTP limits, readiness and shutdown",
    (
        Setting(
            "max_header_bytes",
            "--max-header-bytes",
            "PATIO_MAX_HEADER_BYTES",
            16 * 1024,
            positive_int,
            "request line + headers limit; larger: 431",
        ),
        Setting(
            "max_body_bytes",
            "--max-body-bytes",
            "PATIO_MAX_BODY_BYTES",
            1024 * 1024,
            positive_int,
            "request body limit; larger: 413",
        ),
        Setting(
            "idle_timeout",
            "--idle-timeout",
            "PATIO_IDLE_TIMEOUT",
            75.0,
            positive_seconds,
            "seconds a keep-alive connection may idle (longer than load balancers' idle timeouts)",
        ),
        Setting(
            "request_timeout",
            "--request-timeout",
            "PATIO_REQUEST_TIMEOUT",
            30.0,
            positive_seconds,
            "seconds a client has to send a whole request; slower: 408 and close",
        ),
        Setting(
            "max_connections",
            "--max-connections",
            "PATIO_MAX_CONNECTIONS",
            1024,
            positive_int,
            "open client connections; at the limit one that owes nothing is closed for the newcomer, else 503",
        ),
        # Kubelet probes and Prometheus send at once, so a connection that says nothing is a flood.
        Setting(
            "first_byte_timeout",
            "--first-byte-timeout",
            "PATIO_FIRST_BYTE_TIMEOUT",
            10.0,
            positive_seconds,
            "seconds a new connection has to send its first byte",
        ),
        Setting(
            "write_timeout",
            "--write-timeout",
            "PATIO_WRITE_TIMEOUT",
            30.0,
            positive_seconds,
            "seconds one answer may take to be written; a client that does not read is cut off",
        ),
        Setting(
            "shutdown_timeout",
            "--shutdown-timeout",
            "PATIO_SHUTDOWN_TIMEOUT",
            10.0,
            positive_seconds,
            "whole shutdown budget in seconds (well inside Kubernetes' 30 s grace period)",
        ),
        Setting(
            "drain_timeout",
            "--drain-timeout",
            "PATIO_DRAIN_TIMEOUT",
            3.0,
            seconds,
            "of that, seconds in-flight requests may finish after the listener closes",
        ),
        # SGLang's /health generates a token: a probe storm must not become an engine load.
        Setting(
            "ready_cache_ttl",
            "--ready-cache-ttl",
            "PATIO_READY_CACHE_TTL",
            2.0,
            seconds,
            "seconds one engine health answer is reused by /ready",
        ),
        Setting(
            "ready_timeout",
            "--ready-timeout",
            "PATIO_READY_TIMEOUT",
            1.0,
            positive_seconds,
            "seconds /ready may take (the kubelet's default probe timeout) before it answers from the last "
            "known engine state",
        ),
        Setting(
            "engine_health_interval",
            "--engine-health-interval",
            "PATIO_ENGINE_HEALTH_INTERVAL",
            2.0,
            positive_seconds,
            "seconds between Patio's own engine health probes (healing and readiness without probe traffic)",
        ),
    ),
)

# RoleBasedGroup's runtime names (rolebasedgroup/inference-engine-runtime envs.py at a6acbfe4);
# patio.topology.settings turns them into a registration.
WORKER = Section(
    "worker",
    "Topology: this worker and its router, as RoleBasedGroup names them",
    (
        Setting(
            "topo_type",
            "",
            "TOPO_TYPE",
            "",
            as_str,
            "the router family, SGLang or vLLM (any case); empty or none: no registration",
        ),
        Setting(
            "heartbeat_interval",
            "",
            "HEARTBEAT_INTERVAL",
            30.0,
            positive_seconds,
            "seconds between heartbeats to the router",
        ),
        Setting(
            "group_name",
            "",
            "RBG_GROUP_NAME GROUP_NAME",
            "",
            as_str,
            "the group: with role and index it names this worker and the router",
        ),
        Setting("role_name", "", "RBG_ROLE_NAME ROLE_NAME", "", as_str, "this worker's role"),
        Setting("role_index", "", "RBG_ROLE_INDEX ROLE_INDEX", "", as_str, "this worker's index in its role"),
        Setting(
            "pod_ip",
            "",
            "POD_IP",
            "",
            as_str,
            "this worker's address in the registration (else the group/role/index name, else the host name)",
        ),
        Setting(
            "router_role_name",
            "",
            "SGL_ROUTER_ROLE_NAME",
            "",
            as_str,
            "the router's role, when SGL_ROUTER_ENDPOINT is unset",
        ),
        Setting(
            "router_port", "", "SGL_ROUTER_PORT", "", as_str, "the router's port, when SGL_ROUTER_ENDPOINT is unset"
        ),
    ),
)


@dataclass(frozen=True)
class Limits:
    """Named limits of the HTTP server; each guards one buffer or wait (reasons in ``HTTP``)."""

    max_header_bytes: int = HTTP.default("max_header_bytes")
    max_body_bytes: int = HTTP.default("max_body_bytes")
    idle_timeout: float = HTTP.default("idle_timeout")
    request_timeout: float = HTTP.default("request_timeout")
    max_connections: int = HTTP.default("max_connections")
    first_byte_timeout: float = HTTP.default("first_byte_timeout")
    write_timeout: float = HTTP.default("write_timeout")


@dataclass(frozen=True)
class CoreSettings:
    host: str = SERVER.default("host")
    port: int = SERVER.default("port")
    log_level: str = SERVER.default("log_level")
    log_format: str = SERVER.default("log_format")
    scrape_engine_metrics: bool = SERVER.default("scrape_engine_metrics")
    enable_docs: bool = SERVER.default("enable_docs")
    instance_info: Optional[Mapping[str, Any]] = SERVER.default("instance_info")
    # How Patio was started (patio.profiles): the incumbent whose defaults apply, and why.
    profile: str = "patio"
    profile_reason: str = "Patio's own command"
    # The engine: INFERENCE_ENGINE / -E when set (``engine_configured``), else the profile's
    # default, used until the engine itself says which it is (patio.engines.detect).
    engine: str = FALLBACK_ENGINE
    engine_configured: bool = False
    engine_version: str = SERVER.default("engine_version")  # INFERENCE_ENGINE_VERSION as set ("" when unset)
    engine_version_default: str = ""  # shown when unset and the engine does not tell
    engine_endpoint: str = SERVER.default("engine_endpoint")
    engine_api_key: Optional[str] = SERVER.default("engine_api_key")
    metrics_path: str = SERVER.default("metrics_path")
    pod: str = SERVER.default("pod")
    model: str = SERVER.default("model")
    api_key: Optional[str] = SERVER.default("api_key")
    limits: Limits = Limits()
    shutdown_timeout: float = HTTP.default("shutdown_timeout")
    drain_timeout: float = HTTP.default("drain_timeout")
    ready_cache_ttl: float = HTTP.default("ready_cache_ttl")
    engine_health_timeout: float = 2.0  # one engine health probe (not a setting)
    engine_health_interval: float = HTTP.default("engine_health_interval")
    ready_timeout: float = HTTP.default("ready_timeout")
    # Raw topology environment (names from the incumbents); the topology section interprets them.
    topo_type: str = WORKER.default("topo_type")
    heartbeat_interval: float = WORKER.default("heartbeat_interval")
    group_name: str = WORKER.default("group_name")
    role_name: str = WORKER.default("role_name")
    role_index: str = WORKER.default("role_index")
    pod_ip: str = WORKER.default("pod_ip")
    router_role_name: str = WORKER.default("router_role_name")
    router_port: str = WORKER.default("router_port")

    def __repr__(self) -> str:  # never print credentials
        return (
            f"CoreSettings(host={self.host!r}, port={self.port}, engine={self.engine!r}, "
            f"endpoint={redact_url(self.engine_endpoint)!r})"
        )


SECTIONS = (SERVER, HTTP, WORKER)


def _secret_from_file(setting: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(setting, f"{path} is empty")
    return value


def _api_key(values: Mapping[str, Any], env: Mapping[str, str]) -> Optional[str]:
    api_key: Optional[str] = values["api_key"]
    if api_key is None and "PATIO_API_KEY" in env and not env["PATIO_API_KEY"].strip():
        # Set but empty is a mistake (a missing Secret key renders as ""), not "no key": refusing
        # to start beats serving management routes open.
        raise ConfigError("PATIO_API_KEY", "is set but empty (unset it to run without an API key)")
    if api_key is None and values["api_key_file"]:
        api_key = _secret_from_file("PATIO_API_KEY_FILE", values["api_key_file"])
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key", "must not be empty")
    return api_key


def from_sources(
    args: argparse.Namespace,
    env: Mapping[str, str],
    profile: Optional[Profile] = None,
    profile_reason: str = "Patio's own command",
) -> CoreSettings:
    """The core section; ``profile`` supplies the start's engine defaults (``patio.profiles``)."""
    profile = profile or PROFILES["patio"]
    values = {**SERVER.read(args, env), **HTTP.read(args, env), **WORKER.read(args, env)}
    engine: Optional[str] = values["engine"]
    core = CoreSettings(
        **fields_of(
            CoreSettings,
            values,
            profile=profile.name,
            profile_reason=profile_reason,
            engine=engine or profile.engine or FALLBACK_ENGINE,
            engine_configured=engine is not None,
            engine_version_default=profile.engine_version,
            api_key=_api_key(values, env),
            limits=Limits(**fields_of(Limits, values)),
        )
    )
    if core.drain_timeout > core.shutdown_timeout:
        raise ConfigError("--drain-timeout", "must not exceed --shutdown-timeout")
    return core
