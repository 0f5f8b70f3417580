"""Kthena's Redis layout for KV-aware routing, and the commands each event becomes.  No IO.

Read from Kthena's runtime (volcano-sh/kthena ``python/kthena/runtime/kv_cache_manager.py``):

- ``std_hash(tokens)``: sha256 over the tokens as 4-byte big-endian integers, the
  first 8 bytes as a big-endian integer, masked to 63 bits (``compute_standardized_hash``).
- BlockStored: the event's ``token_ids`` cut into ``len(token_ids) // len(block_hashes)``
  pieces, one per engine hash; per block ``SET {engine}:kv:block:{pod}@{engine_hash}
  {std_hash}`` with a 24 h expiry and ``HSET matrix:kv:block:{model}@{std_hash} {pod}
  {unix seconds}``.  (Kthena sends SET then EXPIRE; ``SET .. EX`` leaves the same key.)
- BlockRemoved: the std hash from memory, else from the mapping key; ``HDEL`` the pod
  from the matrix hash and ``DEL`` the mapping key.
- AllBlocksCleared: ``HDEL`` the pod from every ``matrix:kv:block:{model}@*`` and delete
  every ``{engine}:kv:block:{pod}@*`` (found with SCAN, never KEYS).

The router reads only ``matrix:kv:block:{model}@{std_hash}``; the mapping keys are
the bridge's own memory of what it wrote.
"""

import importlib
import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from patio.kvevents.events import AllBlocksCleared, BlockRemoved, BlockStored, Event

MATRIX_PREFIX = "matrix:kv:block"
MAPPING_PREFIXES = {"vllm": "vllm:kv:block", "sglang": "sglang:kv:block"}
# Kthena's expiry of a mapping key (seconds).
MAPPING_TTL = 86400
_MASK63 = 0x7FFFFFFFFFFFFFFF

Command = Tuple[str, ...]


def std_hash(tokens: Sequence[int]) -> int:
    """Kthena's ``compute_standardized_hash`` (0 for no tokens); ``ValueError`` for a token outside uint32."""
    if not tokens:
        return 0
    try:
        packed = struct.pack(f">{len(tokens)}I", *tokens)
    except struct.error:
        raise ValueError("a token id outside 0..2**32-1") from None
    return int.from_bytes(_sha256()(packed).digest()[:8], "big") & _MASK63


# CPython's built-in SHA-256 module: _sha256 on 3.8-3.11, _sha2 from 3.12 on.
_BUILTIN_SHA256_MODULES = ("_sha256", "_sha2")


def _sha256() -> Callable[[bytes], Any]:
    """CPython's built-in SHA-256, which does not load OpenSSL (``hashlib`` does: about 3 MB
    resident, and the footprint test forbids it while serving); hashlib only as a fallback."""
    for name in _BUILTIN_SHA256_MODULES:
        try:
            return importlib.import_module(name).sha256
        except ImportError:
            continue
    from hashlib import sha256  # pragma: no cover - other interpreters

    return sha256  # pragma: no cover


def glob_escape(text: str) -> str:
    """``text`` matched literally inside a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class BlockSplitError(ValueError):
    pass


def split_blocks(event: BlockStored) -> List[Tuple[int, Sequence[int]]]:
    """(engine_hash, block tokens) per block, as Kthena cuts them."""
    hashes, tokens = event.block_hashes, event.token_ids
    if not hashes:
        return []
    if len(tokens) % len(hashes):
        raise BlockSplitError(f"{len(tokens)} tokens do not split into {len(hashes)} blocks")
    size = len(tokens) // len(hashes)
    return [(h, tokens[i * size : (i + 1) * size]) for i, h in enumerate(hashes)]


@dataclass(frozen=True)
class Layout:
    engine: str
    pod: str
    model: str
    mapping_ttl: int = MAPPING_TTL

    @property
    def mapping_prefix(self) -> str:
        return MAPPING_PREFIXES[self.engine]

    def matrix_key(self, std: int) -> str:
        return f"{MATRIX_PREFIX}:{self.model}@{std}"

    def mapping_key(self, engine_hash: int) -> str:
        return f"{self.mapping_prefix}:{self.pod}@{engine_hash}"

    def matrix_pattern(self) -> str:
        return f"{MATRIX_PREFIX}:{glob_escape(self.model)}@*"

    def mapping_pattern(self) -> str:
        return f"{self.mapping_prefix}:{glob_escape(self.pod)}@*"


class HashCache:
    """Engine hash -> std hash, bounded; the oldest entry goes first (insertion order)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._map: Dict[int, int] = {}

    def get(self, engine_hash: int) -> Optional[int]:
        return self._map.get(engine_hash)

    def put(self, engine_hash: int, std: int) -> None:
        entries = self._map
        if engine_hash not in entries and len(entries) >= self.limit > 0:
            del entries[next(iter(entries))]
        if self.limit > 0:
            entries[engine_hash] = std

    def pop(self, engine_hash: int) -> None:
        self._map.pop(engine_hash, None)

    def clear(self) -> None:
        self._map.clear()

    def __len__(self) -> int:
        return len(self._map)


def unresolved_removals(events: Iterable[Event], cache: HashCache) -> List[int]:
    """Engine hashes a batch removes whose std hash is neither cached nor stored earlier in the batch."""
    stored: set = set()
    missing: List[int] = []
    for event in events:
        if isinstance(event, BlockStored):
            stored.update(event.block_hashes)
        elif isinstance(event, AllBlocksCleared):
            stored.clear()
        elif isinstance(event, BlockRemoved):
            missing.extend(h for h in event.block_hashes if h not in stored and cache.get(h) is None)
    return list(dict.fromkeys(missing))


def store_commands(layout: Layout, event: BlockStored, cache: HashCache, now: int) -> List[Command]:
    """Commands for one BlockStored; ``ValueError`` when its tokens cannot be cut into its blocks."""
    commands: List[Command] = []
    stamp = str(now)
    for engine_hash, tokens in split_blocks(event):
        if not tokens:
            continue
        std = std_hash(tokens)
        cache.put(engine_hash, std)
        commands.append(("SET", layout.mapping_key(engine_hash), str(std), "EX", str(layout.mapping_ttl)))
        commands.append(("HSET", layout.matrix_key(std), layout.pod, stamp))
    return commands


def remove_commands(layout: Layout, event: BlockRemoved, cache: HashCache, resolved: Dict[int, int]) -> List[Command]:
    commands: List[Command] = []
    for engine_hash in event.block_hashes:
        std = cache.get(engine_hash)
        if std is None:
            std = resolved.get(engine_hash)
        if std is None:
            continue  # never stored by this pod as far as Redis knows (as Kthena: nothing to delete)
        commands.append(("HDEL", layout.matrix_key(std), layout.pod))
        commands.append(("DEL", layout.mapping_key(engine_hash)))
        cache.pop(engine_hash)
    return commands
