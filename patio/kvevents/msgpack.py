"""A msgpack decoder for the engines' KV-event payloads: bytes in, Python values out.

Sans-IO and bounded: a payload comes from a socket we do not control, so every
length is checked against what is left of the buffer *before* anything is
allocated, nesting is capped, what one message decodes to is budgeted (values and
estimated bytes of objects, charged before they are built), and every failure is a
``MsgpackError`` naming the offset.  Covers the whole format (spec: https://github.com/msgpack/msgpack/blob/master/spec.md):
vLLM's msgspec encoder sends fixarray/array16, fixmap, float64, uint8..uint64,
fixstr/str8, nil; SGLang's the same with arrays for events.  Ext values (none
are sent today) decode to ``Ext`` so an unknown field never fails the batch.

It must not encode (the bridge never writes msgpack) and must not import anything
heavy: it runs in the bridge thread for every batch.
"""

import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

# Nesting deeper than this is refused: vLLM's deepest value is 4 levels
# (batch -> events -> event -> extra_keys -> tuple); a depth bomb must not reach the C stack.
MAX_DEPTH = 16
# One array or map may hold at most this many items (a batch's token_ids are
# blocks x block size; 1M covers any real batch while refusing a forged 2**32 header).
MAX_CONTAINER_ITEMS = 1 << 20
# One str/bin may be at most this long (names and medium strings are a few bytes).
MAX_BYTES_ITEM = 1 << 20
# What one message may decode to, in estimated bytes of Python objects (``_COST``): the
# frame limit bounds the wire size, but one byte on the wire (an empty array) becomes a
# 56-byte list, so a 1 MiB payload of empty arrays decoded to 60 MB.  Token ids past 256 cost
# 40 bytes each: a valid batch of 200,000 blocks of 4 tokens costs 40 MB.
MAX_DECODED_BYTES = 48 * 1024 * 1024
# ... and at most this many times its own size (plus DECODED_FLOOR_BYTES): real payloads
# decode to 5-14x (uint16 token ids: 3 bytes -> a 40-byte int in a list), so a payload
# built to amplify (1-byte empty arrays, 64x) is refused at a sixteenth of its cost.
MAX_DECODED_RATIO = 16
DECODED_FLOOR_BYTES = 1024 * 1024
# Decoded values of one message (every level): a second bound, independent of the estimate.
MAX_OBJECTS = 2_000_000


class MsgpackError(ValueError):
    """A payload that is not valid msgpack, or breaks a limit; ``offset`` is where."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.message = message
        self.offset = offset


@dataclass(frozen=True)
class Ext:
    code: int
    data: bytes


@dataclass(frozen=True)
class Limits:
    max_depth: int = MAX_DEPTH
    max_container_items: int = MAX_CONTAINER_ITEMS
    max_bytes_item: int = MAX_BYTES_ITEM
    max_decoded_bytes: int = MAX_DECODED_BYTES
    max_decoded_ratio: int = MAX_DECODED_RATIO
    max_objects: int = MAX_OBJECTS


# Estimated CPython (64-bit) sizes of what the decoder builds; small ints (-5..256), None
# and booleans are shared objects and cost nothing.
_COST_LIST = 56
_COST_SLOT = 8
_COST_DICT = 64
_COST_DICT_ENTRY = 40
_COST_INT = 32
_COST_FLOAT = 24
_COST_STR = 49
_COST_BYTES = 33
_COST_EXT = 56
# Inside a container the tally is checked every this many items (a power of two).
_CHECK_EVERY = 4096
_CHECK_MASK = _CHECK_EVERY - 1


_U8 = struct.Struct(">B").unpack_from
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_I8 = struct.Struct(">b").unpack_from
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_F32 = struct.Struct(">f").unpack_from
_F64 = struct.Struct(">d").unpack_from

# Fixed-width scalars: first byte -> (payload size, reader).
_SCALARS: Dict[int, Tuple[int, Callable[[bytes, int], Tuple[Any, ...]]]] = {
    0xCA: (4, _F32),
    0xCC: (1, _U8),
    0xCB: (8, _F64),
    0xCD: (2, _U16),
    0xCE: (4, _U32),
    0xCF: (8, _U64),
    0xD0: (1, _I8),
    0xD1: (2, _I16),
    0xD2: (4, _I32),
    0xD3: (8, _I64),
}
# Length-prefixed items: first byte -> (length size, kind).
_SIZED: Dict[int, Tuple[int, str]] = {
    0xC4: (1, "bin"),
    0xC5: (2, "bin"),
    0xC6: (4, "bin"),
    0xD9: (1, "str"),
    0xDA: (2, "str"),
    0xDB: (4, "str"),
    0xDC: (2, "array"),
    0xDD: (4, "array"),
    0xDE: (2, "map"),
    0xDF: (4, "map"),
    0xC7: (1, "ext"),
    0xC8: (2, "ext"),
    0xC9: (4, "ext"),
}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_LENGTH_READERS = {1: _U8, 2: _U16, 4: _U32}


class _Decoder:
    __slots__ = ("budget", "cost", "data", "end", "limits", "objects")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.end = len(data)
        self.limits = limits
        self.cost = 0
        self.objects = 0
        self.budget = min(limits.max_decoded_bytes, limits.max_decoded_ratio * len(data) + DECODED_FLOOR_BYTES)

    def charge(self, cost: int, objects: int, offset: int) -> None:
        """Account for what is about to be built; refuse before building past a limit.

        Scalars only add to the tally (``cost``/``objects``); it is checked here, when a
        container is announced, and every ``_CHECK_EVERY`` items inside one, so what is built
        past the budget before a check is at most that many scalars."""
        self.cost += cost
        self.objects += objects
        if self.cost > self.budget:
            raise MsgpackError(f"decodes to more than {self.budget} bytes of objects", offset)
        if self.objects > self.limits.max_objects:
            raise MsgpackError(f"decodes to more than {self.limits.max_objects} values", offset)

    def need(self, offset: int, size: int) -> None:
        if offset + size > self.end:
            raise MsgpackError(f"truncated: {size} bytes needed, {self.end - offset} left", offset)

    def value(self, offset: int, depth: int) -> Tuple[Any, int]:
        data = self.data
        if offset >= self.end:
            raise MsgpackError("truncated: value expected", offset)
        first = data[offset]
        offset += 1
        if first <= 0x7F:
            return first, offset
        if first >= 0xE0:
            return first - 0x100, offset
        if 0xA0 <= first <= 0xBF:
            return self.text(offset, first & 0x1F)
        if 0x90 <= first <= 0x9F:
            return self.array(offset, first & 0x0F, depth)
        if 0x80 <= first <= 0x8F:
            return self.map(offset, first & 0x0F, depth)
        if first == 0xC0:
            return None, offset
        if first == 0xC2:
            return False, offset
        if first == 0xC3:
            return True, offset
        scalar = _SCALARS.get(first)
        if scalar is not None:
            size, reader = scalar
            self.need(offset, size)
            value = reader(data, offset)[0]
            if not -5 <= value <= 256:
                self.cost += _COST_FLOAT if first in (0xCA, 0xCB) else _COST_INT
                self.objects += 1
            return value, offset + size
        sized = _SIZED.get(first)
        if sized is not None:
            width, kind = sized
            self.need(offset, width)
            length = _LENGTH_READERS[width](data, offset)[0]
            offset += width
            if kind == "str":
                return self.text(offset, length)
            if kind == "bin":
                return self.binary(offset, length)
            if kind == "array":
                return self.array(offset, length, depth)
            if kind == "map":
                return self.map(offset, length, depth)
            return self.ext(offset, length)
        fixext = _FIXEXT.get(first)
        if fixext is not None:
            return self.ext(offset, fixext)
        raise MsgpackError(f"invalid type byte 0x{first:02x}", offset - 1)

    def binary(self, offset: int, length: int) -> Tuple[bytes, int]:
        if length > self.limits.max_bytes_item:
            raise MsgpackError(f"bin of {length} bytes exceeds the limit of {self.limits.max_bytes_item}", offset)
        self.need(offset, length)
        self.cost += _COST_BYTES + length
        self.objects += 1
        return bytes(self.data[offset : offset + length]), offset + length

    def text(self, offset: int, length: int) -> Tuple[str, int]:
        end = offset + length
        if length > self.limits.max_bytes_item:
            raise MsgpackError(f"bin of {length} bytes exceeds the limit of {self.limits.max_bytes_item}", offset)
        if end > self.end:
            self.need(offset, length)
        self.cost += _COST_STR + length
        self.objects += 1
        try:
            return self.data[offset:end].decode("utf-8"), end
        except UnicodeDecodeError:
            raise MsgpackError("str is not valid UTF-8", offset) from None

    def ext(self, offset: int, length: int) -> Tuple[Ext, int]:
        self.need(offset, 1)
        code = _I8(self.data, offset)[0]
        raw, end = self.binary(offset + 1, length)
        self.cost += _COST_EXT
        return Ext(code, raw), end

    def items(self, offset: int, count: int, depth: int, per_item: int) -> None:
        if depth >= self.limits.max_depth:
            raise MsgpackError(f"nesting deeper than {self.limits.max_depth}", offset)
        if count > self.limits.max_container_items:
            raise MsgpackError(f"{count} items exceed the limit of {self.limits.max_container_items}", offset)
        # Every item takes at least one byte: a forged count fails here, before any allocation.
        if count * per_item > self.end - offset:
            raise MsgpackError(f"truncated: {count} items announced, {self.end - offset} bytes left", offset)

    def array(self, offset: int, count: int, depth: int) -> Tuple[List[Any], int]:
        self.items(offset, count, depth, 1)
        self.charge(_COST_LIST + _COST_SLOT * count, 1, offset)
        out: List[Any] = []
        append = out.append
        data = self.data
        end = self.end
        left = count
        while left:
            run = min(left, _CHECK_EVERY)
            left -= run
            wide = 0  # uint16 items taken on the fast path (ints past 256 are objects of their own)
            for _ in range(run):
                # Inline the two cases that fill token_ids and block_hashes.
                if offset < end:
                    first = data[offset]
                    if first <= 0x7F:
                        append(first)
                        offset += 1
                        continue
                    if first == 0xCD and offset + 3 <= end:
                        append((data[offset + 1] << 8) | data[offset + 2])
                        offset += 3
                        wide += 1
                        continue
                item, offset = self.value(offset, depth + 1)
                append(item)
            self.charge(_COST_INT * wide, wide, offset)
        return out, offset

    def map(self, offset: int, count: int, depth: int) -> Tuple[Dict[Any, Any], int]:
        self.items(offset, count, depth, 2)
        self.charge(_COST_DICT + _COST_DICT_ENTRY * count, 1, offset)
        out: Dict[Any, Any] = {}
        value = self.value
        left = count
        while left:
            run = min(left, _CHECK_EVERY)
            left -= run
            for _ in range(run):
                key_at = offset
                key, offset = value(offset, depth + 1)
                if type(key) is list or type(key) is dict:
                    raise MsgpackError("map key is not a scalar", key_at)
                out[key], offset = value(offset, depth + 1)
            self.charge(0, 0, offset)
        return out, offset


def unpackb(data: bytes, limits: Limits = Limits()) -> Any:
    """The one value ``data`` holds; trailing bytes are an error (a frame is exactly one value)."""
    decoder = _Decoder(data, limits)
    value, end = decoder.value(0, 0)
    decoder.charge(0, 0, end)
    if end != len(data):
        raise MsgpackError(f"{len(data) - end} trailing bytes after the value", end)
    return value
