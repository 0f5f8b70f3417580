"""The engines' KV-event batches: decoded msgpack -> typed events.  Pure, no IO.

Two encodings are in use today, both from msgspec structs (read from the sources):

- vLLM 0.32 (``vllm/distributed/kv_events.py``): ``EventBatch`` is ``array_like``
  -> ``[ts, events, data_parallel_rank]``; ``KVCacheEvent`` is *not* array_like,
  ``tag=True`` -> each event is a map with ``"type"`` and only the fields that are
  not defaults (``omit_defaults``).  A batch recorded from a real vLLM 0.32 CPU build
  is exactly that (tests/test_kvevents_units.py decodes it).
- SGLang (``python/sglang/srt/disaggregation/kv_events.py``) and older vLLM:
  events are ``array_like`` too -> ``["BlockStored", block_hashes, parent_block_hash,
  token_ids, block_size, lora_id, ...]``, ``["BlockRemoved", block_hashes, ...]``,
  ``["AllBlocksCleared"]``; the batch is ``[ts, events]`` or ``[ts, events, attn_dp_rank]``.

Newer vLLM (``vllm/distributed/kv_events.py`` at 0181ea3) sends the batch as a map
(``EventBatch`` lost ``array_like``) and ``BlockStored`` carries ``medium``,
``lora_name``, ``extra_keys``, ``group_idx``, ``kv_cache_spec_kind`` and
``kv_cache_spec_sliding_window``; the array form keeps the same order (llm-d-kv-cache
``pkg/kvevents/engineadapter/sglang_adapter.go``: tag, block_hashes, parent,
token_ids, block_size, lora_id, medium, lora_name, extra_keys).  Those that decide
where a block goes in Kthena's layout are kept (``lora_name``, ``lora_id``,
``group_idx``, ``kind``); ``medium`` is kept for the record.  SGLang under EAGLE
speculative decoding sends token ids as overlapping pairs ``[[t0,t1],[t1,t2],...]``
(same adapter, ``sglangTokenIDs``): a block's own tokens are the pairs' heads.

Unknown event types and unknown fields are skipped, never fatal; a field of an
unexpected type makes only its event malformed.  A block hash sent as bytes (vLLM
with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``, 32-byte sha256 digests) becomes the
integer vLLM itself would have sent (``maybe_convert_block_hash``: the big-endian
value's low 64 bits), so mapping keys look the same either way.  A batch timestamp
that is not a finite, positive number is dropped (``ts`` None): the batch still
applies, its lag is not measured.
"""

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

from patio.kvevents.msgpack import MsgpackError, unpackb

_U64_MASK = (1 << 64) - 1

STORED = "BlockStored"
REMOVED = "BlockRemoved"
CLEARED = "AllBlocksCleared"
KNOWN_TYPES = (STORED, REMOVED, CLEARED)
# Array-form positions (after the tag) of BlockStored's later fields.
_STORED_FIELDS = {"lora_id": 4, "medium": 5, "lora_name": 6, "extra_keys": 7, "group_idx": 8, "kv_cache_spec_kind": 9}
_REMOVED_FIELDS = {"medium": 1, "group_idx": 2}
# Names and strings taken from an event are cut to this many characters.
MAX_NAME_CHARS = 256


class EventError(ValueError):
    """A payload or event that cannot be applied; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class BlockStored:
    block_hashes: Tuple[int, ...]
    token_ids: Sequence[int]
    type: str = STORED
    # Later fields: where the block belongs, not what it is (equality ignores them).
    lora_name: Optional[str] = field(default=None, compare=False)
    lora_id: Optional[int] = field(default=None, compare=False)
    medium: Optional[str] = field(default=None, compare=False)
    group_idx: Optional[int] = field(default=None, compare=False)
    kind: Optional[str] = field(default=None, compare=False)  # kv_cache_spec_kind


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: Tuple[int, ...]
    type: str = REMOVED
    medium: Optional[str] = field(default=None, compare=False)
    group_idx: Optional[int] = field(default=None, compare=False)


@dataclass(frozen=True)
class AllBlocksCleared:
    type: str = CLEARED


@dataclass(frozen=True)
class Unknown:
    """An event type this bridge does not apply (counted as skipped)."""

    type: str


@dataclass(frozen=True)
class Malformed:
    """An event whose fields are unusable (counted as malformed, the rest of the batch applies)."""

    type: str
    message: str


Event = Union[BlockStored, BlockRemoved, AllBlocksCleared, Unknown, Malformed]


@dataclass(frozen=True)
class Batch:
    ts: Optional[float]  # None: the engine sent no usable timestamp (NaN, infinite, <= 0)
    events: List[Event]
    dp_rank: Optional[int] = None
    bad_ts: bool = False


def _hash(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean block hash")
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return int.from_bytes(value, "big") & _U64_MASK
    raise TypeError(f"block hash of type {type(value).__name__}")


def _hashes(value: Any) -> Tuple[int, ...]:
    if not isinstance(value, list):
        raise TypeError("block_hashes is not an array")
    return tuple(_hash(v) for v in value)


def _tokens(value: Any) -> Sequence[int]:
    if not isinstance(value, list):
        raise TypeError("token_ids is not an array of integers")
    if value and isinstance(value[0], list):
        # SGLang's bigram form under EAGLE: each position is [token, next token].
        if not all(isinstance(p, list) and len(p) >= 2 and type(p[0]) is int for p in value):
            raise TypeError("token_ids is neither integers nor token pairs")
        return [p[0] for p in value]
    # Each id is checked where the block's tokens are packed (4-byte unsigned, else the event is
    # malformed): a second pass over every token here cost a tenth of a small batch's decoding.
    return value


def _optional(fields: Any, name: str, positions: Any, kind: type) -> Any:
    """A later, optional field: absent or nil -> None; of another type -> TypeError."""
    if isinstance(fields, dict):
        value = fields.get(name)
    else:
        position = positions[name]
        value = fields[position] if position < len(fields) else None
    if value is None:
        return None
    if kind is int and (type(value) is not int):
        raise TypeError(f"{name} is not an integer")
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} is not a string")
        return value[:MAX_NAME_CHARS]
    return value


def _fields(raw: Any) -> Tuple[str, Any]:
    """(type, fields) where fields is a dict (map form) or a list without the tag (array form)."""
    if isinstance(raw, dict):
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise TypeError("event map without a string 'type'")
        return kind, raw
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        return raw[0], raw[1:]
    raise TypeError("event is neither a tagged map nor a tagged array")


def _field(fields: Any, name: str, position: int) -> Any:
    if isinstance(fields, dict):
        if name not in fields:
            raise TypeError(f"missing {name}")
        return fields[name]
    if position >= len(fields):
        raise TypeError(f"missing {name}")
    return fields[position]


def decode_event(raw: Any) -> Event:
    try:
        kind, fields = _fields(raw)
    except TypeError as exc:
        return Malformed("unknown", str(exc))
    try:
        if kind == STORED:
            return BlockStored(
                _hashes(_field(fields, "block_hashes", 0)),
                _tokens(_field(fields, "token_ids", 2)),
                lora_name=_optional(fields, "lora_name", _STORED_FIELDS, str),
                lora_id=_optional(fields, "lora_id", _STORED_FIELDS, int),
                medium=_optional(fields, "medium", _STORED_FIELDS, str),
                group_idx=_optional(fields, "group_idx", _STORED_FIELDS, int),
                kind=_optional(fields, "kv_cache_spec_kind", _STORED_FIELDS, str),
            )
        if kind == REMOVED:
            return BlockRemoved(
                _hashes(_field(fields, "block_hashes", 0)),
                medium=_optional(fields, "medium", _REMOVED_FIELDS, str),
                group_idx=_optional(fields, "group_idx", _REMOVED_FIELDS, int),
            )
        if kind == CLEARED:
            return AllBlocksCleared()
    except TypeError as exc:
        return Malformed(kind, str(exc))
    return Unknown(kind if len(kind) <= 64 else kind[:64])


def decode_batch(payload: bytes) -> Batch:
    """A batch from one payload frame; ``EventError`` when the frame is not a batch at all."""
    try:
        raw = unpackb(payload)
    except MsgpackError as exc:
        raise EventError("payload", f"payload is not msgpack: {exc}") from None
    if isinstance(raw, dict):  # a map-encoded batch (msgspec without array_like)
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, events = raw[0], raw[1]
        rank = raw[2] if len(raw) > 2 else None
    else:
        raise EventError("batch", "payload is not an event batch ([ts, events, ...])")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not isinstance(events, list):
        raise EventError("batch", "event batch without a numeric ts and an events array")
    value = float(ts)
    # NaN would poison the lag histogram's sum for good; 0 would add 1.8e9 s to it.
    bad_ts = not (math.isfinite(value) and value > 0)
    stamp: Optional[float] = None if bad_ts else value
    rank = rank if type(rank) is int else None
    return Batch(stamp, [decode_event(e) for e in events], rank, bad_ts)
