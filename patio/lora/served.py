"""What the engine serves, from its ``GET /v1/models``: the base model(s) and the adapters.

vLLM and SGLang list one card per served base model (``parent`` null) and one per loaded
adapter (``parent`` the base, ``root`` the adapter's path).  ``parse_model_list`` is sans-IO;
``ServedModels`` keeps the last listing for readiness: reused for ``ready_cache_ttl``
seconds, refreshed by one shared probe (and by every listing reconciliation makes), and a
caller with a deadline gets the last known listing when the probe is slow, as the engine
health watch does (``patio.engines.health``).
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from patio import jsontext
from patio.errors import EngineError, PatioError
from patio.http.client import HttpResult


@dataclass(frozen=True)
class Seen:
    """What a caller with a deadline learns of the engine's models."""

    listing: Optional["ModelList"]  # None: not known (``note`` says why)
    note: str = ""
    # The engine cannot be asked, which says nothing against it: it refused Patio's key (401/403),
    # or it has no model list at all (404: Triton's and TGI's servers without the OpenAI routes).
    refused: bool = False
    unlisted: bool = False


@dataclass(frozen=True)
class ModelList:
    base: Dict[str, str]  # served base model id -> root (vLLM: the --model it was started with)
    adapters: Dict[str, str]  # adapter name -> root (the path it is served from)


def parse_model_list(result: HttpResult, path: str = "/v1/models") -> ModelList:
    """The engine's answer as a ``ModelList``; ``EngineError`` when it is not one."""
    if result.status != 200:
        raise EngineError(f"engine {path} answered {result.status}", engine_status=result.status)
    try:
        data = jsontext.loads(result.body)
        cards: List[Any] = data["data"]
        iter(cards)
    except (ValueError, KeyError, TypeError):
        raise EngineError(f"engine {path} answer is not a model list") from None
    base: Dict[str, str] = {}
    adapters: Dict[str, str] = {}
    for card in cards:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str):
            continue
        root = str(card.get("root") or "")
        if card.get("parent"):
            adapters[card["id"]] = root
        else:
            base[card["id"]] = root
    return ModelList(base, adapters)


class ServedModels:
    """The last known ``ModelList``, for checks that must answer within a deadline."""

    def __init__(
        self, probe: Callable[[], Awaitable[ModelList]], ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._probe = probe  # one listing of the engine (raises PatioError)
        self._ttl = ttl
        self._clock = clock
        self._known: Optional[Tuple[float, ModelList]] = None
        self._inflight: Optional["asyncio.Future[ModelList]"] = None

    def note(self, listing: ModelList) -> None:
        """A listing someone read (reconciliation's): as good as a probe's."""
        self._known = (self._clock(), listing)

    def forget(self) -> None:
        """The engine went away: what it listed says nothing about what it serves when it is back."""
        self._known = None

    async def current(self, deadline: float) -> Seen:
        """Fresh when the cache is, else from one shared probe; past ``deadline`` seconds, the last
        known listing (the note says so), or none and why."""
        known = self._known
        if known is not None and self._clock() - known[0] < self._ttl:
            return Seen(known[1])
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._run())
            self._inflight.add_done_callback(self._done)
        try:
            return Seen(await asyncio.wait_for(asyncio.shield(self._inflight), timeout=max(deadline, 0.0)))
        except asyncio.TimeoutError:
            known = self._known
            if known is None:
                return Seen(None, f"the engine's model list did not come within {deadline:g}s")
            return Seen(known[1], f" (last known; listing the engine's models took over {deadline:g}s)")
        except PatioError as exc:
            status = getattr(exc, "engine_status", None)
            return Seen(None, exc.message, refused=status in (401, 403), unlisted=status == 404)

    async def stop(self) -> None:
        probe = self._inflight
        if probe is not None:
            probe.cancel()
            try:
                await probe
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> ModelList:
        try:
            listing = await self._probe()
        except PatioError:
            self._known = None  # the engine answered, and not with its models
            raise
        self.note(listing)
        return listing

    def _done(self, future: "asyncio.Future[ModelList]") -> None:
        self._inflight = None
        if not future.cancelled():
            future.exception()  # retrieved: callers that waited saw it; one that gave up must not log it
