"""Blocking sockets for the bridge thread: connect to an endpoint with a deadline, one failure type.

Runs only in the bridge's own threads (never on the event loop).  Every failure is a
``PeerDown`` naming the peer and the endpoint (never a password).
"""

import socket

from patio.http.client import resolver_host
from patio.kvevents.settings import parse_endpoint


class PeerDown(Exception):
    """A peer is unreachable, too slow, or broke its protocol: drop the connection."""


def connect(endpoint: str, timeout: float, peer: str) -> socket.socket:
    kind, address = parse_endpoint(endpoint)
    try:
        if kind == "ipc":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            assert isinstance(address, tuple)
            host, port = address
            sock = socket.create_connection((resolver_host(host), port), timeout=timeout)  # type: ignore[arg-type]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise PeerDown(f"{peer} unreachable at {endpoint}: {exc}") from None
    sock.settimeout(timeout)
    return sock
