"""Keeping Redis in step with the engine's stream: order, holes, replays, resyncs, restarts.

Each batch carries a sequence number.  The rules, applied as batches arrive on the
live connection (``on_live``):

- **In order** (the next number): applied.
- **Behind what was applied but ahead of what this connection delivered**: a batch a
  replay already brought in, skipped.
- **Behind what this connection delivered**: a publisher's live stream only moves
  forward, so this is a new stream (the engine restarted behind a connection that
  stayed up, or the publisher lied).  Its cache is not the one Redis describes: the
  pod is cleared and rebuilt from the new stream (a *restart*, counted), never
  "skipped until the numbers catch up".
- **A hole** (``last+1 .. seq-1``, two numbers, never a list): filled from the engine's
  replay buffer, read from ``last+1`` up to ``seq`` and no further.  A hole longer than
  the engine's buffer, or one the replay does not cover, is a resync.
- **Resync** = clear the pod, apply the replay buffer from 0, then what arrived
  meanwhile.  A suffix of the history applied to a cleared pod can only claim *fewer*
  blocks than the pod holds, never more.
- After a publisher loss the stream **resumes** without a clear when the publisher is
  back in time and its replay proves it is the same engine (the last batch applied is
  there, unchanged: the replay is read from ``last`` and its first answer must carry the
  fingerprint of the batch applied; anything else is a restart the connection hid): only
  what was missed is written, so a flapping connection costs its gaps, not a clear and a
  rewrite each time.

No sockets here: the replay is a callable (start -> reduced batches) the bridge owns.
"""

import logging
from contextlib import closing
from typing import Callable, Generator, Iterable, Iterator, List, Optional, Sequence, Tuple

from patio.kvevents.backlog import Backlog
from patio.kvevents.compact import Compact
from patio.kvevents.metrics import BridgeMetrics
from patio.kvevents.settings import KvEventsSettings
from patio.kvevents.sockets import PeerDown
from patio.kvevents.writer import RedisDown, RedisRejected, RedisWriter

# Replayed batches written per slice (the rest of a replay is still on the socket, not in memory).
REPLAY_SLICE = 256
_TYPES = ("BlockStored", "BlockRemoved", "AllBlocksCleared", "other")


class ReplayFailed(Exception):
    """The replay endpoint could not answer (counted by the bridge); what came before applies."""


Replayer = Callable[[int], Generator[Compact, None, None]]


class StreamSync:
    def __init__(
        self,
        settings: KvEventsSettings,
        writer: RedisWriter,
        metrics: BridgeMetrics,
        replay: Replayer,
        has_replay: Callable[[], bool],
        note: Callable[..., None],
    ) -> None:
        self.replay_window = settings.replay_buffer
        self.writer = writer
        self.metrics = metrics
        self.replay = replay
        self.has_replay = has_replay
        self.note = note
        self.backlog = Backlog(settings.backlog_bytes, settings.backlog)
        self.last_seq: Optional[int] = None  # last seq taken in order (its write may be in flight)
        self.last_fp: Optional[int] = None  # that batch's fingerprint
        self.last_live: Optional[int] = None  # last seq the live connection delivered
        self.need_resync: Optional[str] = "start"
        self.resume = False  # after a publisher loss: try to continue from last_seq first
        self.duplicates = 0  # live batches skipped in a row as already applied

    # -- connection events ------------------------------------------------------------------------
    def new_connection(self) -> None:
        self.last_live = None

    def lost_publisher(self) -> None:
        """The connection dropped: the backlog holds that connection's batches; resume if we can."""
        self.backlog.clear()
        self.resume = self.resume or (self.need_resync is None and self.last_seq is not None)
        self.need_resync = self.need_resync or "publisher_lost"

    def forget(self) -> None:
        """The pod was cleared: nothing to resume from."""
        self.resume = False

    # -- the live stream -----------------------------------------------------------------------
    def hold(self, items: Iterable[Compact]) -> None:
        for item in items:
            dropped = self.backlog.add(item)
            if dropped:
                self.metrics.backlog_dropped.inc(amount=float(dropped))
                self.need_resync = "backlog_overflow"
                self.resume = False
                self.note(
                    "backlog",
                    f"backlog full ({self.backlog.max_bytes} bytes, {self.backlog.max_batches} batches):"
                    f" {dropped} batches dropped, resync follows",
                )

    def on_live(self, items: Sequence[Compact], writable: bool) -> None:
        """Batches in the order the live connection delivered them; ``writable``: Redis takes writes."""
        run: List[Compact] = []
        i = 0
        try:
            while i < len(items):
                item = items[i]
                if self.last_live is not None and item.seq <= self.last_live:
                    self._restart("backwards", f"the sequence went back from {self.last_live} to {item.seq}")
                    run = []  # the old stream's: the pod is cleared anyway
                self.last_live = item.seq
                i += 1
                if self.need_resync or not writable:
                    self.hold((item,))
                    continue
                last = self.last_seq
                if last is None or item.seq == last + 1:
                    run.append(item)
                    self._take(item)
                    continue
                if item.seq <= last:
                    # Batches a replay brought in arrive again live, for a while.  Longer than the
                    # engine's whole buffer means the replay's numbering is not the live stream's.
                    self.duplicates += 1
                    if self.duplicates > self.replay_window:
                        self._restart("replay_mismatch", f"{self.duplicates} live batches behind the replay")
                        self.hold((item,))
                        continue
                    self.skip(item)
                    continue
                self.metrics.gaps.inc()
                self.note("gap", f"lost messages {last + 1}..{item.seq - 1}")
                self.writer.flush(run)
                run = []
                if self._fill(last, item.seq, verify=False):
                    run.append(item)
                    self._take(item)
                    continue
                self.need_resync = self.need_resync or "gap"
                self.hold((item,))
            self.writer.flush(run)
            run = []
        except (PeerDown, RedisDown, RedisRejected):
            self.hold([*run, *items[i:]])  # the resync that follows skips what Redis already has
            raise
        if self.need_resync and writable:
            self.resync()

    def _take(self, item: Compact) -> None:
        self.last_seq = item.seq
        self.last_fp = item.fingerprint
        self.duplicates = 0

    def skip(self, item: Compact) -> None:
        for kind, applied, skipped in zip(_TYPES, (*item.applied, 0), item.skipped):
            if applied + skipped:
                self.metrics.skipped.inc(kind, amount=float(applied + skipped))

    def _restart(self, reason: str, message: str) -> None:
        self.metrics.restarts.inc(reason)
        self.note("restart", f"a new stream ({message}): the pod is cleared and rebuilt")
        self.backlog.clear()
        self.need_resync = "engine_restart"
        self.resume = False

    # -- filling from the replay buffer ---------------------------------------------------------------
    def _fill(self, last: int, upto: Optional[int], verify: bool) -> bool:
        """Apply ``last+1 .. upto-1`` from the replay (``upto`` None: all it has); with ``verify``,
        first check that batch ``last`` is still there as applied.  False when the replay cannot
        cover the hole (or vouch for the stream)."""
        if not self.has_replay():
            return False
        if upto is not None and upto - last - 1 > self.replay_window:
            return False  # longer than the engine keeps: a resync, without asking
        need_check = verify
        if verify and self.last_fp is None:
            return False
        expected = last + 1
        chunk: List[Compact] = []
        try:
            with closing(self.replay(last if verify else last + 1)) as answers:
                for answer in answers:
                    if need_check:
                        if answer.seq != last:
                            return False  # the buffer no longer reaches back to it: nothing vouches
                        if answer.fingerprint != self.last_fp:
                            self._restart("replay_mismatch", f"batch {last} is not the one applied")
                            return False
                        need_check = False
                        continue
                    if answer.seq < expected:
                        continue
                    if answer.seq != expected or (upto is not None and answer.seq >= upto):
                        break
                    chunk.append(answer)
                    self._take(answer)
                    expected += 1
                    if len(chunk) >= REPLAY_SLICE:
                        self.writer.flush(chunk)
                        chunk = []
        except ReplayFailed:
            self.writer.flush(chunk)
            return False
        self.writer.flush(chunk)
        return not need_check and (upto is None or expected == upto)

    # -- resync ----------------------------------------------------------------------------------------
    def resync(self) -> None:
        """Resume after a publisher loss if the replay vouches; else clear, replay from 0, then the backlog."""
        if self.resume and self.last_seq is not None and self.need_resync == "publisher_lost":
            self.resume = False
            resumed_after = self.last_seq
            if self._fill(resumed_after, None, verify=True):
                held = [item for item in self.backlog.take() if self.last_seq is None or item.seq > self.last_seq]
                self.last_seq = self._apply_stream(iter(held), self.last_seq)[0]
                self.need_resync = None
                self.note(
                    "resync", f"publisher back: the same stream, continued after batch {resumed_after}", logging.INFO
                )
                return
        self.resume = False
        reason = self.need_resync or "start"
        self.note("resync", f"resync ({reason})", logging.INFO)
        if not self.writer.pod_clean:
            self.writer.clear_pod(reason)
        self.last_seq = self.last_fp = self.writer.applied_seq = None
        last: Optional[int] = None
        if self.has_replay():
            last, complete = self._apply_stream(self.replay(0), None)
            if not complete:
                # A replay that broke off (or flooded and was cut) vouches for nothing: what it gave
                # goes again, and the stream starts from what arrives live.
                self.writer.clear_pod("gap")
                last = self.last_seq = self.last_fp = None
        # The backlog holds what arrived from this same engine meanwhile: what the replay had is a duplicate.
        held = [item for item in self.backlog.take() if last is None or item.seq > last]
        self.last_seq = self._apply_stream(iter(held), last)[0]
        self.need_resync = None

    def _apply_stream(self, items: Iterator[Compact], last: Optional[int]) -> Tuple[Optional[int], bool]:
        """Apply consecutive batches in slices; after a hole, history before it is dropped (cleared).
        Returns the last sequence applied and whether ``items`` ran to their end."""
        chunk: List[Compact] = []
        complete = True
        try:
            for item in items:
                if last is not None and item.seq != last + 1:
                    if item.seq <= last and item.seq != 0:
                        self.skip(item)
                        continue
                    # A hole, or a new engine: what was applied may miss removals; start over from here.
                    self.writer.flush(chunk)
                    chunk = []
                    self.writer.clear_pod("gap" if item.seq > last else "engine_restart")
                chunk.append(item)
                self._take(item)
                last = item.seq
                if len(chunk) >= REPLAY_SLICE:
                    self.writer.flush(chunk)
                    chunk = []
        except ReplayFailed:
            complete = False
        self.writer.flush(chunk)
        return last, complete
