"""Stopping background tasks: cancel, then wait until each has unwound."""

import asyncio
from typing import Any, Iterable, Optional


async def cancel_and_wait(*tasks: "Optional[asyncio.Future[Any]]") -> None:
    """Cancel every task given (``None`` is skipped) and wait for each to finish.

    A task that ends by its cancellation or by any other error is stopped all the same: its
    owner is shutting it down, and what it raised was logged where it ran, if anywhere."""
    await cancel_all_and_wait(tasks)


async def cancel_all_and_wait(tasks: "Iterable[Optional[asyncio.Future[Any]]]") -> None:
    running = [task for task in tasks if task is not None]
    for task in running:  # all cancelled first: none waits for another's unwinding to begin
        task.cancel()
    for task in running:
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
