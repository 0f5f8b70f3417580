"""The engines' KV-event batches: decoded msgpack -> typed events.  Pure, no IO.

Two encodings are in use today, both from msgspec structs (read from the sources):

- vLLM 0.32 (``vllm/distributed/kv_events.py``): ``EventBatch`` is ``array_like``
  -> ``[ts, events, data_parallel_rank]``; ``KVCacheEvent`` is *not* array_like,
  ``tag=True`` -> each event is a map with ``"type"`` and only the fields that are
  not defaults (``omit_defaults``).  The recorded fixture
  ``../shared/fixtures/kv-events/vllm-0.32-cpu-blockstored.msgpack`` is exactly that.
- SGLang (``python/sglang/srt/disaggregation/kv_events.py``) and older vLLM:
  events are ``array_like`` too -> ``["BlockStored", block_hashes, parent_block_hash,
  token_ids, block_size, lora_id, ...]``, ``["BlockRemoved", block_hashes, ...]``,
  ``["AllBlocksCleared"]``; the batch is ``[ts, events]`` or ``[ts, events, attn_dp_rank]``.

Unknown event types and unknown fields are skipped, never fatal.  A block hash
sent as bytes (vLLM with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``) becomes the
integer vLLM itself would have sent (``maybe_convert_block_hash``: the big-endian
value's low 64 bits), so mapping keys look the same either way.
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

from patio.kvevents.msgpack import MsgpackError, unpackb

_U64_MASK = (1 << 64) - 1

STORED = "BlockStored"
REMOVED = "BlockRemoved"
CLEARED = "AllBlocksCleared"
KNOWN_TYPES = (STORED, REMOVED, CLEARED)


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


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: Tuple[int, ...]
    type: str = REMOVED


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
    ts: float
    events: List[Event]
    dp_rank: Optional[int] = None


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
    if not isinstance(value, list) or not all(type(t) is int for t in value):
        raise TypeError("token_ids is not an array of integers")
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
            return BlockStored(_hashes(_field(fields, "block_hashes", 0)), _tokens(_field(fields, "token_ids", 2)))
        if kind == REMOVED:
            return BlockRemoved(_hashes(_field(fields, "block_hashes", 0)))
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
    return Batch(float(ts), [decode_event(e) for e in events], rank if isinstance(rank, int) else None)
