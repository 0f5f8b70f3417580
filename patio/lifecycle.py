"""Start, serve, and shut down in a fixed, bounded order.

Shutdown on SIGTERM/SIGINT (the handler only sets an event):
  0. readiness answers 503 (``App.closing``), so no new work is routed here;
  1. components' ``before_close()`` while the listener still serves
     (topology unregisters from the router here, before the pod stops answering);
  2. the listener closes, idle connections close, in-flight requests drain
     for at most ``drain_timeout``;
  3. components' ``stop()``.
The whole sequence is bounded by ``shutdown_timeout``.  A second signal exits at once.
"""

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Callable, Optional

from patio.app import build_app, gather_bounded
from patio.component import App
from patio.config import Settings
from patio.http.dispatch import Dispatcher
from patio.http.server import HttpServer
from patio.logs import redact_url

log = logging.getLogger("patio")

# Seconds a thread may hold the GIL before another gets it (Python's default is 0.005).
GIL_SWITCH_INTERVAL = 0.001
# Exit status when a second signal cuts the graceful shutdown short.
FORCED_EXIT_STATUS = 1


class Running:
    """What a started Patio exposes to tests and to the CLI."""

    def __init__(self, app: App, server: HttpServer, stop: asyncio.Event) -> None:
        self.app = app
        self.server = server
        self.stop = stop


async def serve(
    settings: Settings,
    *,
    install_signals: bool = True,
    on_started: Optional[Callable[[Running], None]] = None,
    stop: Optional[asyncio.Event] = None,
) -> int:
    core = settings.core
    # CPU work in worker threads (parsing a large engine payload) holds the GIL; a shorter
    # switch interval than the default 5 ms keeps probes on the event loop answering promptly.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    stop = stop or asyncio.Event()
    app = build_app(settings)
    registry = app.context.registry
    dispatcher = Dispatcher(app.routes(), core.api_key, registry)
    server = HttpServer(dispatcher, core.limits, registry, run_blocking=app.context.run_blocking)
    await server.start(core.host, core.port)
    log.info(
        "patio listening on %s:%d (engine %s at %s)",
        core.host,
        server.port,
        core.engine,
        redact_url(core.engine_endpoint),
    )
    loop = asyncio.get_running_loop()
    if install_signals:
        _install_signal_handlers(loop, stop)
    for component in app.components:
        await component.start()
    if on_started is not None:
        on_started(Running(app, server, stop))
    await stop.wait()
    await shutdown(app, server)
    return 0


async def shutdown(app: App, server: HttpServer) -> None:
    core = app.context.core
    started = time.monotonic()
    budget = core.shutdown_timeout
    log.info("shutting down (budget %.1fs)", budget)
    app.closing = True
    components = list(reversed(app.components))
    # Phase 1 gets what the drain and the final stop do not need.
    await gather_bounded([c.before_close() for c in components], max(budget - core.drain_timeout - 0.5, 0.5))
    server.close_listener()
    remaining = budget - (time.monotonic() - started)
    await server.drain(max(min(core.drain_timeout, remaining - 0.5), 0.0))
    remaining = budget - (time.monotonic() - started)
    await gather_bounded([c.stop() for c in components], max(remaining, 0.2))
    app.context.pools.shutdown()
    log.info("shutdown complete in %.2fs", time.monotonic() - started)


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal %s: exiting at once", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(FORCED_EXIT_STATUS)
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
