"""The adapter records Patio keeps: one per name, the locks that serialise changes to a name,
and the bounds on records of failed loads.

Memory is bounded whatever callers send: records of failed loads are kept for
``FAILED_RECORD_TTL`` seconds, at most ``MAX_FAILED_RECORDS`` of them (oldest evicted
first); per-name locks exist only while held or awaited.  Loaded adapters are never
evicted: the engine and the held set on disk (``patio.lora.held_set``) need them.

No I/O, no engine calls: the manager (``patio.lora.manager``) changes these records,
reconciliation (``patio.lora.reconcile``) heals them, the API renders them.
"""

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Tuple

from patio.artifacts.adapters import is_secret_name
from patio.artifacts.uri import display_uri
from patio.validate import ADAPTER_NAME, is_clean

LOADING, LOADED, UNLOADING, FAILED = "loading", "loaded", "unloading", "failed"
# Made available through vLLM's resolver directory, not loaded by a call (patio.lora.desired_sync).
AVAILABLE = "available"
# Who asked for an adapter: an API call, the adapters file, or the file through vLLM's resolver dir.
ORIGIN_API, ORIGIN_FILE, ORIGIN_RESOLVER = "api", "file", "resolver"
# Failed-load records kept for the listing; a client looping over fresh names must not grow memory.
MAX_FAILED_RECORDS = 256
# Seconds a failed-load record stays listed: long enough for an operator to read last_error.
FAILED_RECORD_TTL = 3600.0
# last_error is cut to this many characters (an engine can answer with a long body).
MAX_ERROR_CHARS = 1000


def short(message: str) -> str:
    """``message`` cut to ``MAX_ERROR_CHARS`` (what ``last_error`` holds)."""
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


class NamedLocks:
    """One ``asyncio.Lock`` per adapter name, alive only while it is held or awaited.

    A dict of locks that never shrinks grew by one lock per distinct name ever used;
    here the last user out removes the entry.
    """

    def __init__(self) -> None:
        self._entries: Dict[str, List[Any]] = {}  # name -> [lock, users]

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._entries.get(name) is entry:
                del self._entries[name]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Adapter:
    name: str
    source: str  # what the caller asked for: a local path or a URI
    path: str  # what the engine loads
    remote: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # engine-specific fields kept for reloads (pinned)
    cleanup_local: bool = True
    state: str = LOADING
    last_error: Optional[str] = None
    loaded_at: Optional[float] = None
    engine_confirmed: bool = False
    # True when ``source`` came from the held set on disk, which keeps no userinfo or query string:
    # such an adapter is reloaded from its local copy only (it cannot be downloaded again).
    source_redacted: bool = False
    origin: str = ORIGIN_API
    load_seconds: Optional[float] = None  # how long the last load took (download included)
    # The engine's API key for this adapter's calls (AIBrix's additional_config["api-key"]), used when
    # Patio has no engine key of its own; a reload after an engine restart needs it.  Kept only in the
    # 0600 held-set file, never in views, logs or metrics.
    engine_key: Optional[str] = field(default=None, repr=False)
    # AIBrix's credentials_secret: the NAME of a secret mounted under --credentials-dir, never its
    # values.  A reload that must download again (the local copy is gone) reads the secret anew:
    # the kubelet rotates its files, so the keys of the first load may be stale.
    credentials_secret: Optional[str] = None

    def persisted(self) -> Dict[str, Any]:
        """What a reload needs and no more: the source without secrets."""
        shown = display_uri(self.source)
        saved = {
            "name": self.name,
            "source": shown,
            "source_redacted": self.source_redacted or shown != self.source,
            "path": self.path,
            "remote": self.remote,
            "extra": self.extra,
            "cleanup_local": self.cleanup_local,
            "loaded_at": self.loaded_at,
            "origin": self.origin,
        }
        if self.engine_key:
            saved["engine_key"] = self.engine_key
        if self.credentials_secret:
            saved["credentials_secret"] = self.credentials_secret
        return saved


def restored(item: Mapping[str, Any]) -> Optional[Adapter]:
    """An adapter from the held set on disk, or None when the entry is not one Patio could have
    written (a hand-edited or foreign file must not poison every later listing)."""
    name, path = item.get("name"), item.get("path")
    source = item.get("source") or path
    extra = item.get("extra") or {}
    loaded_at = item.get("loaded_at")
    key = item.get("engine_key")
    secret = item.get("credentials_secret")
    if not (isinstance(name, str) and ADAPTER_NAME.fullmatch(name)):
        return None
    if not (isinstance(path, str) and isinstance(source, str) and path and is_clean(path) and is_clean(source)):
        return None
    if not isinstance(extra, dict) or not all(isinstance(k, str) and is_clean(k) for k in extra):
        return None
    if not all(isinstance(v, (bool, int, float)) or (isinstance(v, str) and is_clean(v)) for v in extra.values()):
        return None
    return Adapter(
        name=name,
        source=source,
        path=path,
        remote=bool(item.get("remote")),
        extra=dict(extra),
        cleanup_local=bool(item.get("cleanup_local", True)),
        state=LOADED,
        loaded_at=float(loaded_at) if isinstance(loaded_at, (int, float)) else None,
        engine_confirmed=False,
        source_redacted=bool(item.get("source_redacted")),
        origin=str(item.get("origin")) if item.get("origin") in (ORIGIN_API, ORIGIN_FILE) else ORIGIN_API,
        engine_key=key if isinstance(key, str) and key and is_clean(key) else None,
        credentials_secret=secret if isinstance(secret, str) and is_secret_name(secret) else None,
    )


class AdapterTable(Dict[str, Adapter]):
    """The adapters Patio holds, by name, indexing those that carry an engine key, and counting
    the failed reconcile reloads of each.

    Listing the engine's adapters needs *a* key when Patio has none of its own; finding one
    by scanning every record made each load cost the size of the set (10,000 adapters).
    """

    def __init__(self) -> None:
        super().__init__()
        self._keyed: Dict[str, str] = {}
        # name -> failed reconcile reloads, exported in patio_lora_reconcile_failures_total{adapter}
        # (patio.lora.residency).  Only adapters Patio holds: bounded by --max-adapters.
        self._reload_failures: Dict[str, float] = {}

    def __setitem__(self, name: str, adapter: Adapter) -> None:
        super().__setitem__(name, adapter)
        if adapter.engine_key:
            self._keyed[name] = adapter.engine_key
        else:
            self._keyed.pop(name, None)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._keyed.pop(name, None)

    def pop(self, name: str, *default: Any) -> Any:
        self._keyed.pop(name, None)
        return super().pop(name, *default)

    def any_engine_key(self) -> Optional[str]:
        return next(iter(self._keyed.values()), None)

    def count_reload_failure(self, name: str) -> None:
        for gone in [n for n in self._reload_failures if n not in self]:
            del self._reload_failures[gone]
        self._reload_failures[name] = self._reload_failures.get(name, 0.0) + 1

    def reload_failures(self) -> Dict[str, float]:
        """Failed reconcile reloads by adapter, for the adapters still held."""
        return {name: count for name, count in list(self._reload_failures.items()) if name in self}


class FailedRecords:
    """The records of failed loads, in the order they failed, within their bounds.

    A failed record is listed in the ``AdapterTable`` like any other (so an operator reads
    its ``last_error``); this keeps the order in which they go.
    """

    def __init__(self, adapters: AdapterTable, max_adapters: int) -> None:
        self._adapters = adapters
        self._max_adapters = max_adapters  # --max-adapters: a failed record never stands in a load's way
        # name -> (when it failed, the record)
        self._order: "OrderedDict[str, Tuple[float, Adapter]]" = OrderedDict()

    def add(self, adapter: Adapter, message: str) -> List[Adapter]:
        """Mark ``adapter`` failed and listed; returns the records evicted to keep the bounds."""
        adapter.state, adapter.last_error = FAILED, short(message)
        self._adapters[adapter.name] = adapter
        self._order[adapter.name] = (time.monotonic(), adapter)
        self._order.move_to_end(adapter.name)
        return self.prune()

    def discard(self, name: str) -> None:
        """``name`` is no longer a failed record (loaded since, or unloaded)."""
        self._order.pop(name, None)

    def prune(self, room_for: int = 0) -> List[Adapter]:
        """Evict failed records past the count or time bound; with ``room_for``, also the oldest
        ones until that many more records fit under ``--max-adapters``.  Returns the evicted."""
        horizon = time.monotonic() - FAILED_RECORD_TTL
        evicted: List[Adapter] = []
        while self._order:
            name, (when, record) = next(iter(self._order.items()))
            crowded = len(self._adapters) + room_for > self._max_adapters
            if len(self._order) <= MAX_FAILED_RECORDS and when >= horizon and not crowded:
                break
            del self._order[name]
            if self._adapters.get(name) is record and record.state == FAILED:
                del self._adapters[name]
                evicted.append(record)
        return evicted
