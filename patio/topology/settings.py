"""Topology settings: is registration on, where is the router, what is this worker.

Derived once from the core's raw environment and ``--instance-info``; anything
missing or invalid is a ``ConfigError`` naming what to set (exit 2).
"""

import argparse
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional
from urllib.parse import urlsplit

from patio.core_settings import CoreSettings
from patio.errors import ConfigError
from patio.options import parse_choice, parse_float, pick

# TOPO_TYPE (any case) -> router family.  "SGLang" covers sglang-router 0.3.x and smg 1.x
# (told apart by their answers); "vLLM" is vLLM's router (vllm-project/router).
TOPO_TYPES = {"sglang": "sglang", "vllm": "vllm"}
WORKER_TYPES = ("regular", "prefill", "decode")
# What /ready needs from the topology (README "Topology", "Readiness"):
#   first-registration: the first successful registration; later router outages do not
#                       flip readiness (a router restart must not take the fleet out of service)
#   strict:             the router listed this worker at the last heartbeat
READINESS_MODES = ("first-registration", "strict")
# Fields of --instance-info's data that Patio itself turns into the registration; every other
# field goes to the router as written (RoleBasedGroup's runtime posts the whole data object less
# "port", plus "url": topo/client/sgl_topo_client.py register, at a6acbfe4), e.g. smg's priority.
RESERVED_FIELDS = frozenset(("port", "url", "worker_type", "bootstrap_port", "topo_type"))
# A host name as it may stand in a worker URL (DNS labels; "_" too, which some hostnames carry).
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")


@dataclass(frozen=True)
class TopologySettings:
    enabled: bool = False
    topo_type: str = "sglang"  # router family: "sglang" or "vllm"
    router_url: str = ""
    worker_url: str = ""
    worker_type: str = "regular"
    bootstrap_port: Optional[int] = None
    api_key: Optional[str] = None
    heartbeat_interval: float = 30.0
    request_timeout: float = 5.0  # one heartbeat's deadline, all its router calls together
    # How often the thread reads the shared engine health watch before registering (a plain
    # attribute read, so it can be short: registration follows the engine within this).
    engine_probe_interval: float = 0.25
    # Heartbeats come every interval * uniform(1 - jitter, 1]; failures back off with jitter.
    # 0 disables all randomness (the bench's baseline).
    heartbeat_jitter: float = 0.2
    readiness: str = "first-registration"
    extra: Mapping[str, Any] = field(default_factory=dict)  # more registration fields (RESERVED_FIELDS)

    def __repr__(self) -> str:  # never print the router key
        return (
            f"TopologySettings(enabled={self.enabled}, topo_type={self.topo_type!r}, router={self.router_url!r},"
            f" worker={self.worker_url!r}, api_key={'set' if self.api_key else 'unset'})"
        )


def add_flags(parser: Any) -> None:
    parser.add_argument("--router-timeout", help="seconds for one heartbeat, all its router calls together (default 5)")
    parser.add_argument(
        "--topology-readiness",
        help="what /ready needs from the router: first-registration (default) or strict",
    )
    parser.add_argument(
        "--heartbeat-jitter", help="fraction of the heartbeat interval to randomise, 0..0.9 (default 0.2)"
    )


def _port(setting: str, value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(setting, f"expected a port number, got {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(setting, f"port out of range: {port}")
    return port


def url_host(setting: str, raw: str) -> str:
    """A host as it stands in a URL: an IPv6 literal in brackets, else an IPv4 literal or a name.

    smg refuses ``http://fd00::1:8000`` ("Invalid URL format: empty host", smg
    config/validation.rs validate_worker_url) and sglang-router lists it but never reaches it:
    a worker on an IPv6 pod network is only routable as ``http://[fd00::1]:8000``."""
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except (OSError, ValueError):
            raise ConfigError(setting, f"not an IP address or a host name: {raw!r}") from None
        return f"[{host}]"
    if not _HOST_NAME.fullmatch(host):
        raise ConfigError(setting, f"not an IP address or a host name: {raw!r}")
    return host


def _host_port(setting: str, raw: str) -> str:
    """``host:port`` or ``http://host:port`` -> canonical ``http://host:port``."""
    value = raw.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(setting, f"expected host:port or http://host:port, got {raw!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(setting, f"invalid port in {raw!r}") from None
    if port is None:
        raise ConfigError(setting, f"no port in {raw!r}")
    return f"{parts.scheme}://{url_host(setting, parts.hostname)}:{port}"


def derive(
    core: CoreSettings,
    env: Mapping[str, str],
    request_timeout: float = 5.0,
    hostname: Callable[[], str] = socket.gethostname,
    readiness: str = "first-registration",
    jitter: float = 0.2,
) -> TopologySettings:
    info: Dict[str, Any] = dict(core.instance_info or {})
    nested = info.get("data")
    data: Dict[str, Any] = dict(nested) if isinstance(nested, dict) else info
    topo = core.topo_type or str(info.get("topo_type") or data.get("topo_type") or "")
    if topo.strip().lower() in ("", "none"):
        return TopologySettings(enabled=False, heartbeat_interval=core.heartbeat_interval)
    family = TOPO_TYPES.get(topo.strip().lower())
    if family is None:
        raise ConfigError(
            "TOPO_TYPE", f"unknown topology type {topo!r}; supported: SGLang, vLLM (any case), or empty to disable"
        )
    if not info and not (env.get("SGL_ROUTER_ENDPOINT", "").strip() or core.router_role_name or core.router_port):
        # RoleBasedGroup's runtime registers only when --instance-info is given; TOPO_TYPE alone (its
        # README's profile sets it for every pod) only names the router family
        # (rolebasedgroup/inference-engine-runtime app.py main, at a6acbfe4).
        return TopologySettings(enabled=False, heartbeat_interval=core.heartbeat_interval)

    worker_type = str(data.get("worker_type") or env.get("WORKER_TYPE") or "regular").lower()
    if worker_type not in WORKER_TYPES:
        raise ConfigError("worker_type", f"must be one of {', '.join(WORKER_TYPES)}, got {worker_type!r}")
    raw_port = data.get("port") or env.get("WORKER_PORT")
    if raw_port is None:
        engine_port = urlsplit(core.engine_endpoint).port
        if engine_port is None:
            raise ConfigError("WORKER_PORT", "the worker port is missing: set --instance-info data.port or WORKER_PORT")
        raw_port = engine_port
    port = _port("worker port (--instance-info data.port / WORKER_PORT)", raw_port)
    raw_bootstrap = data.get("bootstrap_port") or env.get("BOOTSTRAP_PORT")
    bootstrap = _port("bootstrap_port", raw_bootstrap) if raw_bootstrap not in (None, "") else None

    group, role, index = core.group_name, core.role_name, core.role_index
    if core.pod_ip:
        host = url_host("POD_IP", core.pod_ip)
    elif group and role and index != "":
        host = url_host("RBG_GROUP_NAME/RBG_ROLE_NAME/RBG_ROLE_INDEX", f"{group}-{role}-{index}.s-{group}-{role}")
    else:
        name = hostname()
        if not name:
            raise ConfigError(
                "POD_IP", "cannot name this worker: set POD_IP, or RBG_GROUP_NAME/RBG_ROLE_NAME/RBG_ROLE_INDEX"
            )
        host = url_host("POD_IP (unset; the host name)", name)
    # Always a lowercase scheme: smg 1.x refuses a schemeless or upper-case one with 400 (smg
    # PR #1977), sglang-router 0.3 lists it and never reaches it, vllm-router hangs on it.
    worker_url = f"http://{host}:{port}"

    endpoint = env.get("SGL_ROUTER_ENDPOINT", "").strip()
    if endpoint:
        router_url = _host_port("SGL_ROUTER_ENDPOINT", endpoint)
    else:
        missing = [
            name
            for name, value in (
                ("RBG_GROUP_NAME (or GROUP_NAME)", group),
                ("SGL_ROUTER_ROLE_NAME", core.router_role_name),
                ("SGL_ROUTER_PORT", core.router_port),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "SGL_ROUTER_ENDPOINT", "the router address is unknown: set SGL_ROUTER_ENDPOINT or " + ", ".join(missing)
            )
        router_role = core.router_role_name
        router_port = _port("SGL_ROUTER_PORT", core.router_port)
        router_url = f"http://{group}-{router_role}-0.s-{group}-{router_role}:{router_port}"

    return TopologySettings(
        enabled=True,
        topo_type=family,
        router_url=router_url,
        worker_url=worker_url,
        worker_type=worker_type,
        bootstrap_port=bootstrap,
        api_key=env.get("SGL_ROUTER_API_KEY") or None,
        heartbeat_interval=core.heartbeat_interval,
        request_timeout=request_timeout,
        heartbeat_jitter=jitter,
        readiness=readiness,
        extra={key: value for key, value in data.items() if key not in RESERVED_FIELDS},
    )


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> TopologySettings:
    timeout = pick(
        args, env, "router_timeout", ("SGL_ROUTER_TIMEOUT",), 5.0, lambda s, r: parse_float(s, r, minimum=0.1)
    )
    readiness = pick(
        args,
        env,
        "topology_readiness",
        ("PATIO_TOPOLOGY_READINESS",),
        "first-registration",
        lambda s, r: parse_choice(s, r, READINESS_MODES),
    )

    def fraction(setting: str, raw: str) -> float:
        value = parse_float(setting, raw, minimum=0.0)
        if value > 0.9:
            raise ConfigError(setting, f"must be <= 0.9, got {raw!r}")
        return value

    jitter = pick(args, env, "heartbeat_jitter", ("PATIO_HEARTBEAT_JITTER",), 0.2, fraction)
    return derive(core, env, timeout, readiness=readiness, jitter=jitter)
