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
- AllBlocksCleared: the pod leaves every matrix key it holds.  Kthena HDELs it from
  every ``matrix:kv:block:{model}@*`` (all pods' blocks, one command each); the bridge
  walks its own mapping keys instead (SCAN, never KEYS): each names the matrix key its
  block was written under, so a clear costs this pod's blocks, not the whole model's.

The router reads only ``matrix:kv:block:{model}@{std_hash}`` (``model``: the request's,
a LoRA adapter's name for a request to an adapter); the mapping keys are the bridge's
own memory of what it wrote, and expire unless refreshed.
"""

import importlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Callable, List, Optional, Sequence, Tuple

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
        packed = _packer(len(tokens)).pack(*tokens)
    except struct.error:
        raise ValueError("a token id outside 0..2**32-1") from None
    return int.from_bytes(_sha256()(packed).digest()[:8], "big") & _MASK63


@lru_cache(maxsize=64)
def _packer(count: int) -> struct.Struct:
    """``count`` big-endian uint32 (blocks have one size per engine: a handful of formats)."""
    return struct.Struct(f">{count}I")


# CPython's built-in SHA-256 module: _sha256 on 3.8-3.11, _sha2 from 3.12 on.
_BUILTIN_SHA256_MODULES = ("_sha256", "_sha2")


@lru_cache(maxsize=1)
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


def block_std_hashes(tokens: Sequence[int], blocks: int) -> List[int]:
    """Kthena's cut (``len(tokens) // blocks`` tokens each) and ``std_hash`` of every block, in
    one pass: the tokens are packed once and each block's bytes are a slice of that."""
    if not blocks:
        return []
    if len(tokens) % blocks:
        raise BlockSplitError(f"{len(tokens)} tokens do not split into {blocks} blocks")
    if not tokens:
        return [0] * blocks
    try:
        packed = struct.pack(f">{len(tokens)}I", *tokens)
    except struct.error:
        raise ValueError("a token id outside 0..2**32-1") from None
    step = len(packed) // blocks
    sha = _sha256()
    return [
        int.from_bytes(sha(packed[i : i + step]).digest()[:8], "big") & _MASK63 for i in range(0, len(packed), step)
    ]


def bulk(value: str) -> bytes:
    """One RESP bulk string (the commands below are built as bytes: a 200k-block batch is
    400k commands, and encoding tuples of strings was a second of the bridge's time)."""
    raw = value.encode("utf-8")
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


_SET_HEAD = b"*5\r\n$3\r\nSET\r\n"
_HSET_HEAD = b"*4\r\n$4\r\nHSET\r\n"
_HDEL_HEAD = b"*3\r\n$4\r\nHDEL\r\n"
# SET key value EX ttl, then HSET matrix pod stamp, in one format (the hot path of a big batch).
_STORE_FORMAT = _SET_HEAD + b"$%d\r\n%s\r\n$%d\r\n%s\r\n%s" + _HSET_HEAD + b"$%d\r\n%s\r\n%s%s"


@dataclass(frozen=True)
class Layout:
    """Kthena's keys for one pod (and, past data-parallel rank 0, one rank's mapping keys)."""

    engine: str
    pod: str
    model: str
    mapping_ttl: int = MAPPING_TTL
    rank: int = 0

    @property
    def mapping_prefix(self) -> str:
        return MAPPING_PREFIXES[self.engine]

    @property
    def mapping_owner(self) -> str:
        # Ranks past 0 keep their own mapping keys: two ranks may hold the same engine hash,
        # and one's removal must not delete the other's memory of its std hash.
        return self.pod if self.rank == 0 else f"{self.pod}:dp{self.rank}"

    def matrix_key(self, std: int, model: Optional[str] = None) -> str:
        return f"{MATRIX_PREFIX}:{model or self.model}@{std}"

    def mapping_key(self, engine_hash: int) -> str:
        return f"{self.mapping_prefix}:{self.mapping_owner}@{engine_hash}"

    def matrix_pattern(self) -> str:
        return f"{MATRIX_PREFIX}:{glob_escape(self.model)}@*"

    def mapping_pattern(self) -> str:
        return f"{self.mapping_prefix}:{glob_escape(self.mapping_owner)}@*"

    # -- pre-encoded commands --------------------------------------------------------------------
    def store(self, engine_hash: int, std: int, model: Optional[str], stamp: bytes) -> bytes:
        """SET mapping EX ttl + HSET matrix pod stamp (2 commands); ``stamp`` is ``bulk(str(now))``."""
        if model is not None:
            return (
                _SET_HEAD
                + bulk(self.mapping_key(engine_hash))
                + bulk(mapping_value(std, model))
                + self._ttl_tail
                + self.claim(std, model, stamp)
            )
        mapping = b"%s%d" % (self._mapping_head, engine_hash)
        value = b"%d" % std
        matrix = b"%s%d" % (self._matrix_head, std)
        return _STORE_FORMAT % (
            len(mapping),
            mapping,
            len(value),
            value,
            self._ttl_tail,
            len(matrix),
            matrix,
            self._pod_bulk,
            stamp,
        )

    def claim(self, std: int, model: Optional[str], stamp: bytes) -> bytes:
        """HSET matrix pod stamp (1 command): the field and the timestamp Kthena's router reads."""
        return _HSET_HEAD + bulk(self.matrix_key(std, model)) + self._pod_bulk + stamp

    @cached_property
    def _mapping_head(self) -> bytes:
        return f"{self.mapping_prefix}:{self.mapping_owner}@".encode()

    @cached_property
    def _matrix_head(self) -> bytes:
        return f"{MATRIX_PREFIX}:{self.model}@".encode()

    def unclaim(self, std: int, model: Optional[str]) -> bytes:
        """HDEL matrix pod (1 command)."""
        return _HDEL_HEAD + bulk(self.matrix_key(std, model)) + self._pod_bulk

    @cached_property
    def _pod_bulk(self) -> bytes:
        return bulk(self.pod)

    @cached_property
    def _ttl_tail(self) -> bytes:
        return b"$2\r\nEX\r\n" + bulk(str(self.mapping_ttl))


def mapping_value(std: int, model: Optional[str]) -> str:
    """Kthena's value (the std hash); a LoRA block's also names its adapter (``std@name``),
    so a removal or a clear finds the matrix key the block was written under."""
    return str(std) if model is None else f"{std}@{model}"


def parse_mapping_value(raw: object) -> Optional[Tuple[int, Optional[str]]]:
    """(std hash, adapter or None) from a mapping key's value; None for anything else."""
    if not isinstance(raw, bytes):
        return None
    head, sep, model = raw.partition(b"@")
    if not head.isdigit() or len(head) > 20:
        return None
    return int(head), (model.decode("utf-8", "replace") if sep else None)


class HashCache:
    """Engine hash -> (std hash, adapter), bounded; the oldest entry goes first (insertion order)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # OrderedDict: evicting the oldest is O(1) (a dict's first key after many deletions is not).
        self._map: "OrderedDict[int, Tuple[int, Optional[str]]]" = OrderedDict()

    def get(self, engine_hash: int) -> Optional[Tuple[int, Optional[str]]]:
        return self._map.get(engine_hash)

    def put(self, engine_hash: int, std: int, model: Optional[str] = None) -> None:
        entries = self._map
        if self.limit <= 0:
            return
        if engine_hash not in entries and len(entries) >= self.limit:
            entries.popitem(last=False)
        entries[engine_hash] = (std, model)

    def pop(self, engine_hash: int) -> None:
        self._map.pop(engine_hash, None)

    def clear(self) -> None:
        self._map.clear()

    def __len__(self) -> int:
        return len(self._map)
