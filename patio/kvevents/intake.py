"""Messages from the engine's publisher -> reduced batches (``compact.Compact``), counted.

One message at a time: a payload is decoded, reduced and its decoded objects dropped
before the next one is looked at, so what a read brings in costs one message's
decoding at most (five 1 MiB payloads of empty arrays once decoded to 967 MB together).
Every refusal is counted (``patio_kv_events_malformed_total{reason}``) and reported
through the rate-limited log.  No IO.
"""

from collections import Counter
from typing import Callable, List, Optional

from patio.kvevents import events as ev
from patio.kvevents import zmtp
from patio.kvevents.compact import Compact, GroupKinds, fingerprint, reduce
from patio.kvevents.metrics import BridgeMetrics, label


class Intake:
    def __init__(self, topic: bytes, metrics: BridgeMetrics, note: Callable[..., None]) -> None:
        self.topic = topic
        self.metrics = metrics
        self.note = note
        self.groups = GroupKinds()

    def live(self, message: zmtp.Event) -> Optional[Compact]:
        """A message from the SUB stream: ``(topic, seq, payload)``; None when it is not one of ours."""
        metrics = self.metrics
        if isinstance(message, zmtp.Dropped):
            metrics.malformed.inc("oversize")
            self.note("malformed", f"message dropped: {message.reason}")
            return None
        if not isinstance(message, zmtp.Message):
            return None
        frames = message.frames
        if len(frames) != 3:
            metrics.malformed.inc("frames")
            self.note("malformed", f"a message of {len(frames)} frames (3 expected)")
            return None
        topic, seq_raw, payload = frames
        if not topic.startswith(self.topic):
            return None  # another topic sharing the publisher: not ours
        if len(seq_raw) != 8:
            metrics.malformed.inc("seq")
            self.note("malformed", f"a sequence number of {len(seq_raw)} bytes (8 expected)")
            return None
        return self.payload(int.from_bytes(seq_raw, "big"), payload, live=True)

    def payload(self, seq: int, payload: bytes, live: bool) -> Optional[Compact]:
        metrics = self.metrics
        try:
            batch = ev.decode_batch(payload)
        except ev.EventError as exc:
            metrics.malformed.inc(exc.reason)
            self.note("malformed", f"message {seq}: {exc.message}")
            return None
        if batch.bad_ts:
            metrics.malformed.inc("ts")
            self.note("malformed_ts", f"message {seq}: a timestamp that is not a finite, positive number")
        # Replayed events count too: received = decoded from the engine, by either path.
        for kind, count in Counter(label(event.type) for event in batch.events).items():
            metrics.received.inc(kind, amount=float(count))
        problems: List[str] = []
        item = reduce(seq, batch, live, fingerprint(payload), self.groups, problems)
        if problems:
            metrics.malformed.inc("event", amount=float(len(problems)))
            more = f" (+{len(problems) - 1} more)" if problems[1:] else ""
            self.note("malformed", f"message {seq}: {problems[0]}{more}")
        return item
