"""Batches held while Redis cannot take them: bounded in bytes of what is held, and in batches.

What is held is the reduced form (``compact.Compact``, its ``nbytes`` measured with
``sys.getsizeof``), never the decoded events.  When the next batch would pass either
bound, everything held is dropped and counted: a history with a hole cannot be applied
on top of old state anyway, so the bridge resyncs from the engine's replay buffer
(and without one, from what arrives next).  No IO.
"""

from collections import deque
from typing import Deque, Iterator, List

from patio.kvevents.compact import Compact


class Backlog:
    def __init__(self, max_bytes: int, max_batches: int) -> None:
        self.max_bytes = max_bytes
        self.max_batches = max_batches
        self._items: Deque[Compact] = deque()
        self.nbytes = 0

    def add(self, item: Compact) -> int:
        """Hold ``item``; the number of batches dropped to stay inside the bounds (0 when none)."""
        dropped = 0
        if len(self._items) >= self.max_batches or self.nbytes + item.nbytes > self.max_bytes:
            dropped = self.clear()
        if item.nbytes > self.max_bytes:
            return dropped + 1  # one batch larger than the whole bound is not held either
        self._items.append(item)
        self.nbytes += item.nbytes
        return dropped

    def take(self) -> List[Compact]:
        out = list(self._items)
        self.clear()
        return out

    def clear(self) -> int:
        count = len(self._items)
        self._items.clear()
        self.nbytes = 0
        return count

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Compact]:
        return iter(self._items)
