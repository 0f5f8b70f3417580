"""Start a coroutine at once, on the caller's stack; make it a task only if it has to wait.

Most answers (the probes, the banner, a cached readiness) never wait on anything: running the
handler's coroutine as a task would cost a task, a loop iteration and a callback per request for
nothing.  ``start_eagerly`` runs the coroutine until it first waits.  If it finished, the result
is there; if it waits, the rest runs as an ordinary task, resumed by what it waits on.

Python 3.12 does this itself (``asyncio.Task(..., eager_start=True)``).  Before 3.12 the
coroutine's first step runs outside any task, so ``asyncio.current_task()`` in that first step
is ``None``: a handler must not rely on it before its first ``await`` that waits.
"""

import asyncio
import sys
from typing import Any, Coroutine, Generator, Optional, Tuple, TypeVar

T = TypeVar("T")

# (None, result) when the coroutine finished without waiting, (its task, None) when it waits.
Started = Tuple[Optional["asyncio.Task[T]"], Optional[T]]


class _Rest:
    """The awaitable rest of a coroutine that already yielded ``pending`` (what ``yield from``
    does, for a coroutine whose first step ran outside the task)."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._pending
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, thrown in by the task
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Coroutine[Any, Any, T], pending: Any) -> T:
    result: T = await _Rest(coro, pending)
    return result


def start_by_hand(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> Started[T]:
    """(None, result) if ``coro`` finished without waiting; else (the task that runs the rest,
    None).  Raises what ``coro`` raised before it first waited."""
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return None, stop.value
    return loop.create_task(_finish(coro, pending)), None


if sys.version_info >= (3, 12):

    def start_eagerly(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> Started[T]:
        """As ``start_by_hand``, with the first step inside its task (``current_task()`` is set)."""
        task = asyncio.Task(coro, loop=loop, eager_start=True)  # novermin: this branch is 3.12+
        if task.done():
            return None, task.result()
        return task, None

else:
    start_eagerly = start_by_hand
