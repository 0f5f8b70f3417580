"""The slot table without sockets: which moves a connection may make, whom a newcomer evicts
at --max-connections, and how waiting and closing are counted (patio/http/admission.py)."""

from typing import Dict, List, NamedTuple, Tuple

import pytest

from patio.http.admission import (
    BUSY,
    CLOSED,
    CLOSING,
    EVICTABLE,
    IDLE,
    MAX_ADMISSION_WAITERS,
    MAX_EVICTION_SCAN,
    NEW,
    READING,
    SILENCE_GRACE,
    TRANSITIONS,
    WAITING,
    Admission,
    Slot,
)

STATES = (WAITING, NEW, IDLE, READING, BUSY, CLOSING, CLOSED)


def test_every_state_has_a_row_and_closed_is_the_end() -> None:
    assert set(TRANSITIONS) == set(STATES)
    assert TRANSITIONS[CLOSED] == frozenset()
    for state in STATES[:-1]:
        assert CLOSED in TRANSITIONS[state], f"{state} must be able to end"
    assert set(EVICTABLE) <= set(STATES) and BUSY not in EVICTABLE and CLOSING not in EVICTABLE


def _slot_in(table: Admission, path: Tuple[str, ...], now: float = 0.0) -> Slot:
    slot = Slot()
    table.admit(slot, now)
    for state in path:
        table.move(slot, state, now)
    return slot


ILLEGAL = {
    "a waiting connection cannot be busy before it is admitted": ((), WAITING, BUSY),
    "a request being read is not idle without an answer": ((READING,), READING, NEW),
    "closing is one way": ((CLOSING,), CLOSING, IDLE),
    "closed is the end": ((CLOSED,), CLOSED, NEW),
}


@pytest.mark.parametrize("path, state, target", ILLEGAL.values(), ids=ILLEGAL.keys())
def test_a_move_outside_the_table_is_a_bug(path: Tuple[str, ...], state: str, target: str) -> None:
    table = Admission(limit=4)
    if state == WAITING:
        slot = Slot()
    else:
        slot = _slot_in(table, path)
    assert slot.state == state
    with pytest.raises(AssertionError, match=f"from {state} to {target}"):
        table.move(slot, target, 1.0)


class Crowd(NamedTuple):
    """Connections by name: (state they end in, seconds since, bytes arrived, bytes parsed)."""

    members: Dict[str, Tuple[str, float, int, int]]
    victim: str  # "" for none


NOW = 100.0
CROWDS = {
    "a silent newcomer past the grace goes first": Crowd(
        {"idle": (IDLE, 5.0, 36, 36), "new": (NEW, SILENCE_GRACE + 1, 0, 0)}, "new"
    ),
    "then the longest idle": Crowd({"idle-young": (IDLE, 1.0, 36, 36), "idle-old": (IDLE, 9.0, 36, 36)}, "idle-old"),
    "then one mid-request, all it sent parsed": Crowd(
        {"reading": (READING, 0.1, 10, 10), "busy": (BUSY, 9, 36, 36)}, "reading"
    ),
    "never a busy one": Crowd({"busy": (BUSY, 60.0, 36, 36)}, ""),
    "never one whose bytes wait to be parsed": Crowd({"spoken": (NEW, 9.0, 36, 0), "next": (IDLE, 9.0, 72, 36)}, ""),
    "never a newcomer within the grace": Crowd({"fresh": (NEW, SILENCE_GRACE / 5, 0, 0)}, ""),
}


def _crowd(table: Admission, members: Dict[str, Tuple[str, float, int, int]]) -> Dict[str, Slot]:
    slots = {}
    # Enter them oldest first, as connections do.
    for name, (state, since_ago, arrived, parsed) in sorted(members.items(), key=lambda m: -m[1][1]):
        when = NOW - since_ago
        slot = Slot()
        table.admit(slot, when)
        if state != NEW:
            table.move(slot, state, when)
        slot.arrived, slot.parsed = arrived, parsed
        slots[name] = slot
    return slots


@pytest.mark.parametrize("crowd", CROWDS.values(), ids=CROWDS.keys())
def test_whom_a_newcomer_evicts(crowd: Crowd) -> None:
    table = Admission(limit=len(crowd.members))
    slots = _crowd(table, crowd.members)
    assert not table.has_room()
    victim = table.victim(NOW)
    assert victim is (slots[crowd.victim] if crowd.victim else None)


def test_rest_makes_a_connection_the_most_recently_used_idle_one() -> None:
    table = Admission(limit=2)
    first, second = _slot_in(table, (IDLE,), 1.0), _slot_in(table, (IDLE,), 2.0)
    assert table.victim(10.0) is first
    table.rest(first, 3.0)  # it answered another request: now the younger of the two
    assert table.victim(10.0) is second and first.since == 3.0


def test_eviction_scans_a_bounded_number_of_candidates() -> None:
    table = Admission(limit=MAX_EVICTION_SCAN + 1)
    for _ in range(MAX_EVICTION_SCAN):  # a crowd of idle connections whose next request is unparsed
        slot = _slot_in(table, (IDLE,))
        slot.arrived = 1
    behind = _slot_in(table, (IDLE,))  # would do, but lies past the scan bound
    assert behind.evictable(NOW) and table.victim(NOW) is None


def test_waiting_is_bounded_and_counted_until_admitted_or_gone() -> None:
    table = Admission(limit=1)
    waiting: List[Slot] = []
    while table.may_wait():
        slot = Slot()
        table.wait(slot, 0.0)
        waiting.append(slot)
    assert len(waiting) == MAX_ADMISSION_WAITERS
    table.admit(waiting[0], 1.0)  # admitted: no longer waiting, holds the slot
    table.close(waiting[1], 1.0)  # the client went
    table.move(waiting[2], CLOSING, 1.0)  # refused with a 503
    assert len(table.waiting) == MAX_ADMISSION_WAITERS - 3
    assert table.open == {waiting[0]}


def test_closing_twice_is_harmless_and_frees_the_slot() -> None:
    table = Admission(limit=1)
    slot = _slot_in(table, (IDLE,))
    assert not table.has_room()
    table.close(slot, 1.0)
    table.close(slot, 2.0)
    assert table.has_room() and slot.state == CLOSED and table.victim(3.0) is None
