"""Starting a handler at once (patio/http/eager.py): a coroutine that never waits is finished
without a task; one that waits goes on as a task exactly as if it had been one from the start.
Both starters are run: the one this Python uses, and the pre-3.12 one by hand."""

import asyncio
from typing import Any, Awaitable, Callable, List, NamedTuple

import pytest

from patio.http.eager import start_by_hand, start_eagerly

STARTERS = {"this Python's": start_eagerly, "by hand (before 3.12)": start_by_hand}


class Shape(NamedTuple):
    body: Callable[[List[str]], Awaitable[Any]]  # the coroutine function, given a trace list
    waits: bool
    result: Any
    trace: List[str]


async def _returns(trace: List[str]) -> str:
    trace.append("ran")
    return "done"


async def _awaits_a_finished_coroutine(trace: List[str]) -> str:
    value = await _returns(trace)  # a coroutine that does not wait does not suspend its caller
    return value + "!"


async def _sleeps_zero(trace: List[str]) -> str:
    trace.append("before")
    await asyncio.sleep(0)
    trace.append("after")
    return "slept"


async def _waits_on_a_future(trace: List[str]) -> int:
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.set_result, 7)
    trace.append("waiting")
    value: int = await future
    trace.append("resumed")
    return value * 6


async def _waits_twice(trace: List[str]) -> int:
    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.sleep(0.001), timeout=5)  # a task of its own, and a timer
    trace.append("twice")
    return 2


SHAPES = {
    "returns at once": Shape(_returns, False, "done", ["ran"]),
    "awaits only what is finished": Shape(_awaits_a_finished_coroutine, False, "done!", ["ran"]),
    "yields once to the loop": Shape(_sleeps_zero, True, "slept", ["before", "after"]),
    "waits on a future": Shape(_waits_on_a_future, True, 42, ["waiting", "resumed"]),
    "waits twice, through wait_for": Shape(_waits_twice, True, 2, ["twice"]),
}


@pytest.mark.parametrize("starter", STARTERS.values(), ids=STARTERS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_coroutine_finishes_now_or_goes_on_as_a_task(shape: Shape, starter: Any) -> None:
    async def main() -> None:
        trace: List[str] = []
        task, result = starter(shape.body(trace), asyncio.get_running_loop())
        if shape.waits:
            assert task is not None and result is None
            assert await task == shape.result
        else:
            assert task is None and result == shape.result
        assert trace == shape.trace

    asyncio.run(main())


async def _fails_at_once(trace: List[str]) -> None:
    raise ValueError("before any wait")


async def _fails_after_waiting(trace: List[str]) -> None:
    await asyncio.sleep(0)
    raise ValueError("after a wait")


@pytest.mark.parametrize("starter", STARTERS.values(), ids=STARTERS.keys())
def test_an_error_surfaces_where_it_happens(starter: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError, match="before any wait"):
            starter(_fails_at_once([]), loop)
        task, _ = starter(_fails_after_waiting([]), loop)
        with pytest.raises(ValueError, match="after a wait"):
            await task

    asyncio.run(main())


@pytest.mark.parametrize("starter", STARTERS.values(), ids=STARTERS.keys())
def test_cancelling_the_task_reaches_the_coroutine(starter: Any) -> None:
    """drain() cancels a handler that outlives the shutdown budget: its finally blocks must run."""
    trace: List[str] = []

    async def holds_on(trace: List[str]) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            trace.append("cleaned up")

    async def main() -> None:
        task, _ = starter(holds_on(trace), asyncio.get_running_loop())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert trace == ["cleaned up"]
