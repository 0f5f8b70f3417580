"""The models this Patio runs, their per-model locks, and the registry that keeps them.

Every change of one model (launch, restart, stop, sleep, wake) holds that model's
lock, so two of them never interleave: two activations of one name start one engine,
the supervisor never restarts an engine a deactivation is stopping.  Saves are
serialised and each writes the whole set (``patio.runtime.registry``).  Event loop only.
"""

import asyncio
import errno
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set

from patio.errors import PatioError
from patio.runtime import registry
from patio.runtime.records import ModelRecord

RunBlocking = Callable[..., Awaitable[Any]]


class RegistryNotSaved(PatioError):
    """The registry could not be written (a full disk: 507): the change it was saving is undone."""

    status = 500
    error_type = "registry_not_saved"


class ModelStore:
    def __init__(self, registry_path: str, run_blocking: RunBlocking) -> None:
        self.registry_path = registry_path
        self._run_blocking = run_blocking
        self.models: Dict[str, ModelRecord] = {}
        self._locks: Dict[str, asyncio.Lock] = {}
        self._save_lock = asyncio.Lock()
        self.reserved_ports: Set[int] = set()  # chosen for an activation still downloading or starting

    def lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def locked(self, name: str) -> bool:
        lock = self._locks.get(name)
        return lock is not None and lock.locked()

    def forget_lock(self, name: str) -> None:
        lock = self._locks.get(name)
        if lock is not None and not lock.locked() and name not in self.models:
            del self._locks[name]

    def get(self, name: str) -> Optional[ModelRecord]:
        return self.models.get(name)

    def sorted(self) -> List[ModelRecord]:
        return [self.models[name] for name in sorted(self.models)]

    def used_ports(self) -> Set[int]:
        return {r.port for r in self.models.values()} | self.reserved_ports

    async def save(self) -> None:
        """Write the registry now; ``RegistryNotSaved`` when it cannot be written."""
        async with self._save_lock:
            # Built here, on the loop that changes the records; only the bytes go to the thread.
            documents = [r.to_registry() for r in self.sorted() if not r.external]
            try:
                await self._run_blocking(registry.save, self.registry_path, documents)
            except OSError as exc:
                raise RegistryNotSaved(
                    f"cannot save the engine registry {self.registry_path}: {exc.strerror or exc}",
                    status=507 if exc.errno == errno.ENOSPC else 500,
                ) from None
