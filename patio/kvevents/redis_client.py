"""One blocking Redis connection for the bridge thread: AUTH and SELECT on connect, pipelines.

Every call is bounded by the connection's timeout, parsing included (a hostile server's
large answer is refused by the parser's limits, and a slow one by the deadline).  Error
*replies* are values (``resp.ReplyError``); a dead or lying server is a ``PeerDown``.
"""

import socket
import time
from typing import Iterator, List, Sequence

from patio.kvevents import resp
from patio.kvevents.sockets import PeerDown, connect

_READ_CHUNK = 256 * 1024


class RedisConnection:
    def __init__(
        self, host: str, port: int, db: int, username: str, password: str, timeout: float, parser_limits: dict
    ) -> None:
        self.where = f"{host}:{port}/{db}"
        self.timeout = timeout
        self.sock = connect(f"tcp://{host}:{port}", timeout, "redis")
        self.parser = resp.RespParser(**parser_limits)
        self.commands_sent = 0  # for the bench and the state page: what this connection cost Redis
        hello: List[Sequence[resp.Arg]] = []
        if password:
            hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            hello.append(("SELECT", str(db)))
        hello.append(("PING",))
        for reply in self.pipeline(hello):
            if isinstance(reply, resp.ReplyError):
                self.close()
                # The reply text is the server's (WRONGPASS, NOAUTH...), never the password.
                raise PeerDown(f"redis at {self.where} refused the connection setup: {reply.message}")

    def pipeline(self, commands: Sequence[Sequence[resp.Arg]]) -> List[object]:
        """Send all, read one reply per command; error replies are values (``resp.ReplyError``)."""
        if not commands:
            return []
        return self.send(resp.encode_pipeline(commands), len(commands))

    def send(self, data: bytes, count: int) -> List[object]:
        """``count`` encoded commands in one write; their ``count`` replies."""
        if not count:
            return []
        deadline = time.monotonic() + self.timeout
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
            self.commands_sent += count
            while self.parser.pending < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerDown(f"redis at {self.where} did not answer {count} commands within {self.timeout:g}s")
                self.sock.settimeout(left)
                chunk = self.sock.recv(_READ_CHUNK)
                if not chunk:
                    raise PeerDown(f"redis at {self.where} closed the connection")
                self.parser.receive_data(chunk)
        except socket.timeout:
            self.close()
            raise PeerDown(f"redis at {self.where} did not answer {count} commands within {self.timeout:g}s") from None
        except (OSError, resp.RespError) as exc:
            self.close()
            raise PeerDown(f"redis at {self.where}: {exc or type(exc).__name__}") from None
        except PeerDown:
            self.close()
            raise
        replies = self.parser.replies()
        if len(replies) != count:
            self.close()
            raise PeerDown(f"redis at {self.where} answered {len(replies)} replies to {count} commands")
        return replies

    def scan(self, pattern: str, count: int) -> Iterator[List[bytes]]:
        """Pages of keys matching ``pattern`` (SCAN may repeat a key; callers tolerate that)."""
        cursor = b"0"
        while True:
            page, cursor = self.scan_page(pattern, count, cursor)
            if page:
                yield page
            if cursor == b"0":
                return

    def scan_page(self, pattern: str, count: int, cursor: bytes) -> "tuple[List[bytes], bytes]":
        """One SCAN round: (keys, next cursor; ``b"0"`` when the walk is over)."""
        (reply,) = self.pipeline([("SCAN", cursor, "MATCH", pattern, "COUNT", str(count))])
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bytes)):
            raise PeerDown(f"redis at {self.where} answered SCAN with {reply!r}"[:200])
        keys = reply[1]
        if not isinstance(keys, list) or not all(isinstance(k, bytes) for k in keys):
            raise PeerDown(f"redis at {self.where} answered SCAN with a page that is not keys")
        return keys, reply[0]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
