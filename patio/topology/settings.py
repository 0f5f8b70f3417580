"""Topology settings: is registration on, where is the router, what is this worker.

Derived once from the core's raw environment and ``--instance-info``; anything
missing or invalid is a ``ConfigError`` naming what to set (exit 2).
"""

import argparse
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

from patio.core_settings import WORKER, CoreSettings
from patio.errors import ConfigError
from patio.options import Section, Setting, as_str, choice, host_port_url, number, parse_url, stripped

# TOPO_TYPE (any case) -> router family.  "SGLang" covers sglang-router 0.3.x and smg 1.x
# (told apart by their answers); "vLLM" is vLLM's router (vllm-project/router).
TOPO_TYPES = {"sglang": "sglang", "vllm": "vllm"}
WORKER_TYPES = ("regular", "prefill", "decode")
# What /ready needs from the topology (docs/topology.md, "Readiness"):
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


# The registration's own settings; the worker's names are the core's (``patio.core_settings.WORKER``).
SETTINGS = Section(
    "topology",
    "Topology: registration with the router",
    (
        Setting(
            "request_timeout",
            "--router-timeout",
            "SGL_ROUTER_TIMEOUT",
            5.0,
            number(minimum=0.1),
            "seconds for one heartbeat, all its router calls together",
        ),
        Setting(
            "readiness",
            "--topology-readiness",
            "PATIO_TOPOLOGY_READINESS",
            "first-registration",
            choice(*READINESS_MODES),
            "what /ready needs from the router: " + " or ".join(READINESS_MODES),
        ),
        Setting(
            "heartbeat_jitter",
            "--heartbeat-jitter",
            "PATIO_HEARTBEAT_JITTER",
            0.2,
            number(0.0, 0.9),
            "fraction of the heartbeat interval to randomise, 0..0.9 (0: no randomness)",
        ),
        Setting(
            "router_endpoint",
            "",
            "SGL_ROUTER_ENDPOINT",
            "",
            stripped,
            "the router, host:port or http://host:port (else named from the group and SGL_ROUTER_ROLE_NAME, "
            "SGL_ROUTER_PORT)",
        ),
        Setting(
            "router_api_key", "", "SGL_ROUTER_API_KEY", None, as_str, "sent to the router as Authorization: Bearer"
        ),
        Setting(
            "worker_type",
            "",
            "WORKER_TYPE",
            "regular",
            as_str,
            "regular, prefill or decode, when --instance-info does not say",
        ),
        # Set but empty is refused (a port is missing), as before there was a table.
        Setting(
            "worker_port",
            "",
            "WORKER_PORT",
            None,
            as_str,
            "the engine port the router reaches, when --instance-info does not say (else the engine URL's); set "
            "but empty is refused",
            keep_empty=True,
        ),
        Setting(
            "bootstrap_port",
            "",
            "BOOTSTRAP_PORT",
            None,
            as_str,
            "the prefill bootstrap port, when --instance-info does not say",
        ),
    ),
)


@dataclass(frozen=True)
class TopologySettings:
    enabled: bool = False
    topo_type: str = "sglang"  # router family: "sglang" or "vllm"
    router_url: str = ""
    worker_url: str = ""
    worker_type: str = SETTINGS.default("worker_type")
    bootstrap_port: Optional[int] = None
    api_key: Optional[str] = None
    heartbeat_interval: float = WORKER.default("heartbeat_interval")
    request_timeout: float = SETTINGS.default(
        "request_timeout"
    )  # one heartbeat's deadline, all its router calls together
    # How often the thread reads the shared engine health watch before registering (a plain
    # attribute read, so it can be short: registration follows the engine within this).
    engine_probe_interval: float = 0.25
    # Heartbeats come every interval * uniform(1 - jitter, 1]; failures back off with jitter.
    # 0 disables all randomness (the bench's baseline).
    heartbeat_jitter: float = SETTINGS.default("heartbeat_jitter")
    readiness: str = SETTINGS.default("readiness")
    extra: Mapping[str, Any] = field(default_factory=dict)  # more registration fields (RESERVED_FIELDS)

    def __repr__(self) -> str:  # never print the router key
        return (
            f"TopologySettings(enabled={self.enabled}, topo_type={self.topo_type!r}, router={self.router_url!r},"
            f" worker={self.worker_url!r}, api_key={'set' if self.api_key else 'unset'})"
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


def derive(
    core: CoreSettings,
    env: Mapping[str, str],
    request_timeout: float = SETTINGS.default("request_timeout"),
    hostname: Callable[[], str] = socket.gethostname,
    readiness: str = SETTINGS.default("readiness"),
    jitter: float = SETTINGS.default("heartbeat_jitter"),
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
    endpoint = SETTINGS.value("router_endpoint", None, env)
    if not info and not (endpoint or core.router_role_name or core.router_port):
        # RoleBasedGroup's runtime registers only when --instance-info is given; TOPO_TYPE alone (its
        # README's profile sets it for every pod) only names the router family
        # (rolebasedgroup/inference-engine-runtime app.py main, at a6acbfe4).
        return TopologySettings(enabled=False, heartbeat_interval=core.heartbeat_interval)

    worker_type = str(data.get("worker_type") or SETTINGS.value("worker_type", None, env)).lower()
    if worker_type not in WORKER_TYPES:
        raise ConfigError("worker_type", f"must be one of {', '.join(WORKER_TYPES)}, got {worker_type!r}")
    raw_port = data.get("port") or SETTINGS.value("worker_port", None, env)
    if raw_port is None:
        engine_port = parse_url(core.engine_endpoint).port
        if engine_port is None:
            raise ConfigError("WORKER_PORT", "the worker port is missing: set --instance-info data.port or WORKER_PORT")
        raw_port = engine_port
    port = _port("worker port (--instance-info data.port / WORKER_PORT)", raw_port)
    raw_bootstrap = data.get("bootstrap_port") or SETTINGS.value("bootstrap_port", None, env)
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

    if endpoint:
        router_url = host_port_url("SGL_ROUTER_ENDPOINT", endpoint)  # an IPv6 host comes back in brackets
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
        api_key=SETTINGS.value("router_api_key", None, env),
        heartbeat_interval=core.heartbeat_interval,
        request_timeout=request_timeout,
        heartbeat_jitter=jitter,
        readiness=readiness,
        extra={key: value for key, value in data.items() if key not in RESERVED_FIELDS},
    )


def from_sources(args: argparse.Namespace, env: Mapping[str, str], core: CoreSettings) -> TopologySettings:
    values = SETTINGS.read(args, env)
    return derive(
        core, env, values["request_timeout"], readiness=values["readiness"], jitter=values["heartbeat_jitter"]
    )
