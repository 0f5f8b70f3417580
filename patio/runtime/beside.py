"""The engine Patio runs beside (``INFERENCE_ENGINE_ENDPOINT``), listed as an external model.

It appears in ``GET /v1/runtime/models`` under its served name (``MODEL_NAME``, else the
base model's id in the engine's ``/v1/models``).  Patio did not start it and does not
stop it: activate and deactivate of that name answer 409.  Sleep and wake work on it;
around a sleep the pod stops taking work, in this order (the reverse after a wake):

    1. /ready answers 503 with the reason ``asleep`` (/health stays 200);
    2. the worker leaves the router (topology), so nothing new is routed here;
    3. the engine drains and sleeps.

LoRA reconcile does not reload adapters into a sleeping engine; after the wake it runs
at once.  Those two seams (``Seams``) are handed in at assembly by ``patio.app``.
"""

import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, Tuple
from urllib.parse import urlsplit

from patio.component import ReadyCheck
from patio.core_settings import CoreSettings
from patio.runtime.control import EngineControl
from patio.runtime.records import ModelRecord

log = logging.getLogger("patio.runtime")

# A "cannot sleep" answer of the engine is asked again after this long (it may restart).
CAPABILITY_TTL = 60.0
# How long one look at the engine (its name, whether it sleeps) may take.
ASK_TIMEOUT = 5.0
# An engine that did not tell its name is asked again after this long, and only while its
# /health answers (no engine beside Patio: a runtime-only pod lists none, at no cost).
NAME_RETRY = 30.0


# A wake waits this long for the router to list the worker again (smg lets a removed worker
# drain for --drain-settle-secs, 5 s by default, before it can be registered anew).
REJOIN_BUDGET = 15.0


async def _nothing(budget: Optional[float] = None) -> bool:
    return True


@dataclass
class Seams:
    """What the rest of Patio does around a sleep of the engine beside it."""

    # topology's leave()/rejoin(budget): True once the router let go / listed the worker again.
    leave_router_in: Callable[[Optional[float]], Awaitable[bool]] = _nothing
    rejoin_router_in: Callable[[Optional[float]], Awaitable[bool]] = _nothing
    after_wake: Callable[[], None] = lambda: None  # LoRA reconcile, now

    async def leave_router(self) -> None:
        """The engine is about to sleep: the router lets go of the worker first (bounded)."""
        if not await self.leave_router_in(None):
            log.warning("the router may still list this worker (its removal was not confirmed)")

    async def rejoin_router(self) -> None:
        """The engine woke: register the worker again at once, and wait (bounded) until listed."""
        if not await self.rejoin_router_in(REJOIN_BUDGET):
            log.warning("the router does not list this worker yet; the heartbeat keeps trying")


class Beside:
    def __init__(self, core: CoreSettings, control: EngineControl, engine_up: Callable[[], Optional[bool]]) -> None:
        parts = urlsplit(core.engine_endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.record = ModelRecord(
            model_name=core.model,
            engine=core.engine,
            port=port,
            ipc_name="",
            artifact_url="",
            model_path="",
            external=True,
            phase="active",
        )
        self.control = control
        self.engine_up = engine_up
        self.seams = Seams()
        self.going_to_sleep = False
        self._capable: Optional[Tuple[float, bool, str]] = None
        self._asked_name = -NAME_RETRY

    @property
    def name(self) -> str:
        return self.record.model_name

    def should_ask_name(self) -> bool:
        return (
            not self.record.model_name
            and self.engine_up() is True
            and time.monotonic() - self._asked_name >= NAME_RETRY
        )

    def learn_name(self, timeout: float = ASK_TIMEOUT) -> str:
        """Blocking: the served name, asked of the engine when MODEL_NAME is not set."""
        if not self.record.model_name:
            self._asked_name = time.monotonic()
            found = self.control.served_name(timeout)
            if found:
                self.record.model_name = found
        return self.record.model_name

    def sleep_capable(self, mode: str) -> Tuple[bool, str]:
        """Blocking: can the engine sleep (as it was started)?  ``mode`` is PATIO_RUNTIME_SLEEP_MODE."""
        if mode == "off":
            return False, "sleep mode is off (PATIO_RUNTIME_SLEEP_MODE=off)"
        if mode == "on":
            return True, ""
        cached = self._capable
        if cached is not None and (cached[1] or time.monotonic() - cached[0] < CAPABILITY_TTL):
            return cached[1], cached[2]
        capable, why = self.control.sleep_capable(ASK_TIMEOUT)
        self._capable = (time.monotonic(), capable, why)
        return capable, why

    @property
    def asleep(self) -> bool:
        return self.going_to_sleep or self.record.phase == "sleeping"

    def refresh(self) -> None:
        """Keep ``ready`` current: the shared health watch's answer, unless asleep."""
        self.record.ready = bool(self.engine_up()) and not self.asleep

    def ready_check(self) -> Optional[ReadyCheck]:
        if not self.asleep:
            return None
        name = self.name or "the engine"
        if self.going_to_sleep and self.record.phase != "sleeping":
            return ReadyCheck("asleep", False, f"{name} is going to sleep; this pod takes no new work")
        level = self.record.sleep_level
        return ReadyCheck(
            "asleep", False, f"{name} is asleep (level {level}); POST /v1/runtime/models/wake brings it back"
        )
