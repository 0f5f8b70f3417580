"""Who holds a connection slot: the states of a client connection, the moves between them, and
whom to close for a newcomer at ``--max-connections``.

Sans-IO: the clock is passed in, nothing here touches a socket or the event loop.  The
connection (``patio.http.connection``) reports its moves here and acts on the answers (it
aborts the victim named, it refuses a newcomer there is no room for).

    WAITING  accepted by the kernel, waiting up to SILENCE_GRACE for a slot (not counted)
    NEW      holds a slot, has sent nothing yet
    IDLE     between requests on a keep-alive connection
    READING  part of a request has arrived
    BUSY     a request is being answered (its handler runs, or its answer is being written)
    CLOSING  an error answer that ends the connection is written; what the client still sends
             is read and dropped (the linger), then the socket closes
    CLOSED   gone, or being flushed and closed; holds no slot

At the limit, a connection in one of EVICTABLE is closed to make room, in that order and oldest
first: it has no answer owed to it.  A BUSY connection is never evicted, nor one holding bytes
that arrived but are not parsed yet (the loop may be late to parse them: the client has spoken,
and cutting it would lose its request unanswered), nor a NEW one within SILENCE_GRACE of
connecting (a client that just connected is about to send its request: a burst of new
connections must not evict it).
"""

from typing import Dict, FrozenSet, Iterator, Mapping, Optional, Set, Tuple

WAITING = "waiting"
NEW = "new"
IDLE = "idle"
READING = "reading"
BUSY = "busy"
CLOSING = "closing"
CLOSED = "closed"

# Every move a connection may make; anything else is a bug in the connection (AssertionError).
TRANSITIONS: Mapping[str, FrozenSet[str]] = {
    WAITING: frozenset((NEW, CLOSING, CLOSED)),  # admitted, refused with a 503, or gone
    NEW: frozenset((IDLE, READING, BUSY, CLOSING, CLOSED)),
    IDLE: frozenset((READING, BUSY, CLOSING, CLOSED)),
    READING: frozenset((IDLE, BUSY, CLOSING, CLOSED)),  # IDLE: answered at once
    # After an answer: the next pipelined request is complete, partial, or not there.
    BUSY: frozenset((BUSY, READING, IDLE, CLOSING, CLOSED)),
    CLOSING: frozenset((CLOSED,)),
    CLOSED: frozenset(),
}
# States whose connections owe nothing, in the order they give up their slot.
EVICTABLE: Tuple[str, ...] = (NEW, IDLE, READING)

# A connection that has said nothing yet is evictable only after this long.  A newcomer that finds
# no connection to evict waits up to this long for one to become evictable before it is refused;
# at most MAX_ADMISSION_WAITERS wait at once (the rest are refused at once).
SILENCE_GRACE = 0.25
MAX_ADMISSION_WAITERS = 64
# Candidates looked at per state for one eviction: connections with unparsed bytes are skipped,
# and a crowd of them must not make every newcomer scan every connection.
MAX_EVICTION_SCAN = 64
# Error answers lingering at once (see patio.http.connection, LINGER_*); past it they close at once.
MAX_LINGERING = 64


class Slot:
    """What admission knows of one connection."""

    __slots__ = ("arrived", "parsed", "since", "state")

    def __init__(self) -> None:
        self.state = WAITING
        self.since = 0.0  # when it entered its state (monotonic seconds)
        self.arrived = 0  # bytes received from the client
        self.parsed = 0  # bytes of those looked at by the request parser

    def evictable(self, now: float) -> bool:
        """Owes nothing: not busy, nothing unparsed, and if new, silent past SILENCE_GRACE."""
        if self.state not in EVICTABLE or self.arrived > self.parsed:
            return False
        return self.state != NEW or now - self.since >= SILENCE_GRACE


class Admission:
    """The slots of one server: who holds one, who waits for one, who lingers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Set[Slot] = set()  # admitted, not closed: what --max-connections bounds
        self.waiting: Set[Slot] = set()
        self.lingering = 0
        # Evictable connections by state, oldest first (dicts keep insertion order).
        self._evictable: Dict[str, Dict[Slot, None]] = {state: {} for state in EVICTABLE}

    def has_room(self) -> bool:
        return len(self.open) < self.limit

    def may_wait(self) -> bool:
        return len(self.waiting) < MAX_ADMISSION_WAITERS

    def wait(self, slot: Slot, now: float) -> None:
        assert slot.state == WAITING, slot.state
        slot.since = now
        self.waiting.add(slot)

    def admit(self, slot: Slot, now: float) -> None:
        """WAITING -> NEW, counted against the limit (the caller made room first)."""
        self.waiting.discard(slot)
        self.open.add(slot)
        self.move(slot, NEW, now)

    def move(self, slot: Slot, state: str, now: float) -> None:
        old = slot.state
        assert state in TRANSITIONS[old], f"connection cannot go from {old} to {state}"
        table = self._evictable
        if old in table:
            del table[old][slot]
        slot.state = state
        slot.since = now
        if state in table:
            table[state][slot] = None
        if old == WAITING:
            self.waiting.discard(slot)
        if state == CLOSED:
            self.open.discard(slot)

    def rest(self, slot: Slot, now: float) -> None:
        """Between requests: IDLE, and the most recently used of the idle (evicted last)."""
        if slot.state == IDLE:
            idle = self._evictable[IDLE]
            del idle[slot]
            idle[slot] = None
            slot.since = now
        else:
            self.move(slot, IDLE, now)

    def close(self, slot: Slot, now: float) -> None:
        """Gone, from whatever state it was in (again is harmless)."""
        if slot.state != CLOSED:
            self.move(slot, CLOSED, now)

    def victim(self, now: float) -> Optional[Slot]:
        """The connection to close for a newcomer: the oldest that owes nothing (silent new, idle,
        then mid-request), or None.  The caller closes it."""
        for state in EVICTABLE:
            for scanned, slot in enumerate(self._evictable[state]):
                if scanned >= MAX_EVICTION_SCAN:
                    break
                if slot.evictable(now):
                    return slot
                if state == NEW and now - slot.since < SILENCE_GRACE:
                    break  # oldest first: the rest are younger still
                # else its request is waiting to be parsed
        return None

    def in_state(self, state: str) -> Iterator[Slot]:
        return (slot for slot in list(self.open) if slot.state == state)
