"""Where downloads may connect: one egress policy, checked on resolved addresses, per connection.

Every URL a download touches is partly chosen from outside: a request's ``model_uri``,
``lora_path`` or ``credentials.endpoint``, a service account's ``token_uri``, a store's
``Location`` header.  Unchecked, ``POST /v1/download_model`` with
``http://127.0.0.1:8000/v1/models`` (or ``http://2130706433:8000/``, decimal for the same
address) downloads the engine's answers into the models root, and a redirect reaches the
cloud metadata server.  So every connection of the download client (``fetch/net.py``) asks
this policy first, *after* DNS resolution, and connects only to the addresses it allowed
(no second lookup a rebinding DNS server could answer differently).  Redirect hops are new
connections, so each hop is checked the same way.

Refused whatever the form of the address (decimal, octal, hex or short IPv4 are resolved by
the C library to the same address; IPv4-mapped, NAT64 and 6to4 IPv6 are classified by the
IPv4 address inside):

- loopback (127/8, ::1) and ``localhost`` / ``*.localhost`` names (RFC 6761);
- unspecified (0.0.0.0/8, ::), which Linux connects to the local host;
- link-local (169.254/16, fe80::/10), and cloud metadata endpoints by address
  (169.254.169.254, 169.254.170.2, 169.254.170.23, fd00:ec2::254, fd00:ec2::23, 100.100.100.200)
  and by name (metadata.google.internal, metadata.goog, instance-data...);
- multicast, broadcast and reserved ranges;
- this host's own addresses (the pod IP: the engine listens there too), found by binding
  a socket to the address, which only an address of this host allows;
- private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) when ``--egress-private
  refuse`` is set (allowed by default: in-cluster MinIO, VPC endpoints of S3).

``--egress-allow`` lists what a deployment needs anyway (an in-cluster mirror on the pod's
own loopback, a proxy-less mirror in a private range when private ranges are refused): CIDR
networks or addresses, host names, and ``.suffix`` names.  An entry allows exactly what it
names, whatever its class.

A refusal is ``EgressRefused``: "refused by policy", with neither the address nor the class
in the answer (a caller must not learn how an internal name resolves); the class goes to
Patio's log for the operator.  Blocking (DNS, connect): worker threads only.
"""

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import FrozenSet, List, Optional, Sequence, Tuple, Union

from patio.artifacts.errors import ArtifactError

log = logging.getLogger("patio.artifacts")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
SockAddr = Tuple[int, Tuple[object, ...]]  # (family, sockaddr)


def _nets(*cidrs: str) -> Tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Classes of addresses, checked in this order; the first that matches names the address.
# Written out rather than taken from ``ipaddress.is_private``/``is_global``, whose answers
# changed between Python versions (3.12.4, 3.13).
METADATA = _nets(
    "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, Oracle
    "169.254.170.2/32",  # AWS ECS task metadata
    "169.254.170.23/32",  # EKS pod identity agent
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
    "fd00:ec2::23/128",  # EKS pod identity agent over IPv6
    "100.100.100.200/32",  # Alibaba Cloud
)
METADATA_NAMES = frozenset(
    ("metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal")
)
ALWAYS_REFUSED: Tuple[Tuple[str, Tuple[IPNetwork, ...]], ...] = (
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("multicast or reserved", _nets("224.0.0.0/4", "240.0.0.0/4", "ff00::/8", "100::/64", "2001:db8::/32")),
)
PRIVATE = _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10")
# IPv6 prefixes that carry an IPv4 address a connection ends up at (NAT64 well-known prefix).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")

PRIVATE_MODES = ("allow", "refuse")


class EgressRefused(ArtifactError):
    """The destination is not one downloads may connect to.  Never retried."""

    status = 403
    error_type = "egress_refused"


REFUSED_MESSAGE = (
    "refused by policy: downloads may not connect to this destination "
    "(an operator can allow it with --egress-allow / PATIO_EGRESS_ALLOW)"
)


def effective_address(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address leads to when it embeds one; else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def normal_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets: how names are compared."""
    return host.strip().strip("[]").rstrip(".").lower()


def parse_allow(entries: Sequence[str]) -> Tuple[Tuple[IPNetwork, ...], Tuple[str, ...]]:
    """``--egress-allow`` entries -> (networks, host names); ValueError names a bad entry."""
    networks: List[IPNetwork] = []
    hosts: List[str] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = normal_host(entry)
        label = name[1:] if name.startswith(".") else name
        if (
            not label
            or any(not part or len(part) > 63 for part in label.split("."))
            or not all(ch.isalnum() or ch in "-." for ch in label)
        ):
            raise ValueError(f"{entry!r} is neither a network (10.0.0.0/8, 127.0.0.1), a host name nor a .suffix")
        hosts.append(name)
    return tuple(networks), tuple(hosts)


def _is_own_address(address: IPAddress) -> bool:
    """True when ``address`` belongs to this host: only then may a socket bind to it."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class EgressPolicy:
    allow_networks: Tuple[IPNetwork, ...] = ()
    allow_hosts: Tuple[str, ...] = ()  # exact names, or ".suffix" for every name below it
    refuse_private: bool = False
    # Names Patio itself chose for one purpose (the metadata server for a GCS token): allowed
    # for that client only (``allowing``), never for what a request names.
    exempt_hosts: FrozenSet[str] = field(default_factory=frozenset)

    def allowing(self, host: str) -> "EgressPolicy":
        """This policy, plus ``host`` allowed whatever it resolves to."""
        return EgressPolicy(
            self.allow_networks, self.allow_hosts, self.refuse_private, self.exempt_hosts | {normal_host(host)}
        )

    def _host_allowed(self, name: str) -> bool:
        if name in self.exempt_hosts:
            return True
        return any(name == h or (h.startswith(".") and name.endswith(h)) for h in self.allow_hosts)

    def refusal(self, address: IPAddress) -> Optional[str]:
        """Why ``address`` is refused (its class), or None when it is allowed."""
        if any(address in net for net in self.allow_networks if net.version == address.version):
            return None
        inner = effective_address(address)
        if inner is not address and any(inner in net for net in self.allow_networks if net.version == inner.version):
            return None
        if any(inner in net for net in METADATA if net.version == inner.version):
            return "metadata"
        for name, networks in ALWAYS_REFUSED:
            if any(inner in net for net in networks if net.version == inner.version):
                return name
        if self.refuse_private and any(inner in net for net in PRIVATE if net.version == inner.version):
            return "private"
        if _is_own_address(address) or (inner is not address and _is_own_address(inner)):
            return "this host's own address"
        return None

    def resolve(self, host: str, port: int) -> List[SockAddr]:
        """The addresses of ``host`` a connection may use, in resolver order; ``EgressRefused`` if none.

        Blocking (DNS).  A resolution failure is an ``OSError`` (``socket.gaierror``), as a
        connect would raise.
        """
        name = normal_host(host)
        trusted = self._host_allowed(name)
        if not trusted and (name in METADATA_NAMES or name == "localhost" or name.endswith(".localhost")):
            self._refused(name, port, "metadata or localhost name")
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        allowed: List[SockAddr] = []
        reasons: List[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            reason = None if trusted else self.refusal(address)
            if reason is None:
                allowed.append((family, tuple(sockaddr)))
            else:
                reasons.append(f"{address} ({reason})")
        if not allowed:
            self._refused(name, port, ", ".join(reasons) or "no address")
        return allowed

    def check_proxied(self, host: str, port: int) -> None:
        """A target reached through the operator's proxy, which resolves it: judged as resolved
        here when it resolves here; a name only the proxy can resolve (clusters whose sole way
        out is the proxy) is left to the proxy, which is then the operator's egress control."""
        try:
            self.resolve(host, port)
        except socket.gaierror:
            pass

    @staticmethod
    def _refused(name: str, port: int, why: str) -> None:
        # The operator's log says why; the caller's answer does not (it would map internal names).
        log.warning("egress policy refused a download connection to %s port %d: %s", name, port, why)
        raise EgressRefused(REFUSED_MESSAGE)

    def connect(
        self, host: str, port: int, timeout: Optional[float], source_address: Optional[Tuple[str, int]] = None
    ) -> socket.socket:
        """A TCP connection to one of ``host``'s allowed addresses (``socket.create_connection``'s loop)."""
        last: Optional[OSError] = None
        for family, sockaddr in self.resolve(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        assert last is not None
        raise last


DEFAULT_POLICY = EgressPolicy()
