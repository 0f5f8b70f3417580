"""Where the engine publishes, and talking to it: endpoint discovery, the SUB, the replay.

``PublisherSource`` knows the endpoint (configured, discovered per rank at every connect,
or Kthena's default), opens the live subscription, and turns the replay endpoint's answers
into reduced batches one at a time (``Intake``), counting each replay's result.
"""

import logging
from typing import Callable, Generator, List, Optional

from patio.kvevents import discovery
from patio.kvevents.compact import Compact
from patio.kvevents.intake import Intake
from patio.kvevents.metrics import BridgeMetrics
from patio.kvevents.publisher_client import ZmtpConnection, replay
from patio.kvevents.settings import KvEventsSettings
from patio.kvevents.sockets import PeerDown
from patio.kvevents.sync import ReplayFailed

# Sequence numbers are 8 bytes: a replay cannot start past this.
MAX_SEQ = (1 << 64) - 1
# A replay may answer this many times the engine's buffer (PATIO_KV_EVENTS_REPLAY_BUFFER)
# plus what arrives while it answers; more is a flood, cut off.
REPLAY_SLACK = 2


class PublisherSource:
    def __init__(
        self,
        settings: KvEventsSettings,
        rank: int,
        metrics: BridgeMetrics,
        note: Callable[..., None],
        stopping: Callable[[], bool],
        on_sources: Optional[Callable[[List[discovery.Source]], None]] = None,
    ) -> None:
        self.settings = settings
        self.rank = rank
        self.metrics = metrics
        self.note = note
        self.stopping = stopping
        self.on_sources = on_sources
        self.endpoint = settings.endpoint
        self.replay_endpoint = settings.replay_endpoint
        self.topic = settings.topic
        self.discovers = not settings.endpoint_configured and settings.discovery
        self.origin = "default" if self.discovers else "configured"
        self.intake = Intake(self.topic.encode("utf-8"), metrics, note)

    def has_replay(self) -> bool:
        return bool(self.replay_endpoint)

    def locate(self) -> bool:
        """Ask the engine where this rank publishes (when nothing is configured); False when it cannot say yet."""
        if not self.discovers:
            return True
        settings = self.settings
        try:
            sources = discovery.fetch(settings.engine, settings.engine_url, settings.engine_api_key, settings.timeout)
        except discovery.DiscoveryError as exc:
            self.note("discovery", f"endpoint discovery: {exc}")
            return False
        if sources is None:  # an engine without the route: Kthena's default
            self.endpoint, self.origin = settings.endpoint, "default"
            return True
        mine = [s for s in sources if s.rank == self.rank]
        if not mine:
            self.note("discovery", f"the engine names no KV-event publisher for rank {self.rank}")
            return False
        source = mine[0]
        if (source.endpoint, source.replay_endpoint) != (self.endpoint, self.replay_endpoint):
            self.note("discovery", f"publisher of rank {self.rank}: {source.endpoint}", logging.INFO)
        self.endpoint, self.replay_endpoint, self.origin = source.endpoint, source.replay_endpoint, "discovered"
        if source.topic != self.topic:
            self.topic = source.topic
            self.intake.topic = source.topic.encode("utf-8")
        if self.on_sources is not None:
            self.on_sources(sources)
        return True

    def subscribe(self) -> ZmtpConnection:
        settings = self.settings
        conn = ZmtpConnection(self.endpoint, "SUB", settings.timeout, settings.max_frame_bytes)
        try:
            conn.send(conn.proto.subscribe(self.topic.encode("utf-8")))
        except PeerDown:
            conn.close()
            raise
        return conn

    def replay(self, start: int) -> Generator[Compact, None, None]:
        """Reduced batches from the replay endpoint, one at a time (a full buffer is 10 000 batches)."""
        endpoint = self.replay_endpoint
        assert endpoint
        if start > MAX_SEQ:
            raise ReplayFailed(f"replay from {start}: past the last sequence number")
        settings = self.settings
        first: Optional[int] = None
        try:
            answers = replay(
                endpoint,
                start,
                settings.timeout,
                settings.max_frame_bytes,
                max_messages=REPLAY_SLACK * settings.replay_buffer + 1000,
            )
            for seq, payload in answers:
                if self.stopping():
                    return
                first = seq if first is None else first
                item = self.intake.payload(seq, payload, live=False)
                if item is not None:
                    yield item
        except PeerDown as exc:
            self.metrics.replays.inc("error")
            self.note("replay", f"replay from {start}: {exc}")
            raise ReplayFailed(str(exc)) from None
        # Partial: the publisher's buffer no longer reaches back to ``start``.
        self.metrics.replays.inc("complete" if first is None or first == start else "partial")
