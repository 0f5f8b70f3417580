"""A decoded batch reduced to what Redis needs: engine hash -> std hash pairs in one array.  No IO.

A batch is reduced as soon as it is decoded (the decoded Python objects are dropped
right away): a realistic vLLM step (256 blocks of 32 tokens, 36 KB on the wire) held
as decoded events took about 337 KB; reduced it is 256 pairs of 8-byte words, about
4.3 KB.  This is what the backlog holds while Redis is away, so its bound in bytes is
a bound on memory.

Words (``array('Q')``), one operation after the other:

- ``STORE, model, n, engine_hash_1, std_hash_1, ..., engine_hash_n, std_hash_n``
- ``REMOVE, n, engine_hash_1, ..., engine_hash_n``
- ``CLEAR``

``model`` indexes ``Compact.models`` (0: the pod's model; else a LoRA adapter's name,
which Kthena's router uses as the model of a request to that adapter:
``pkg/kthena-router/router/router.go`` passes the request's ``model`` to the scheduler,
and ``kvcache_aware.go`` reads ``matrix:kv:block:{that model}@{hash}``).

Which blocks count (as Kthena's router scores prefixes over whole-prompt token blocks):

- a block stored with a ``lora_name`` belongs to that adapter; one with only a
  ``lora_id`` (older vLLM, no name) belongs to no model a request can name: skipped;
- of a hybrid model's KV-cache groups only full-attention ones hold a prefix
  (``kv_cache_spec_kind``; vLLM says it on stores only and removals carry just
  ``group_idx``, so kinds are learned per group): events of other groups are skipped;
- any ``medium`` counts (a CPU-offloaded block still saves the prefill); a removal from
  any medium removes the claim, which can only under-claim, never claim a block gone.
"""

import binascii
import sys
from array import array
from typing import Dict, List, Optional, Sequence, Tuple

from patio.kvevents import events as ev
from patio.kvevents.layout import BlockSplitError, block_std_hashes

OP_STORE = 1
OP_REMOVE = 2
OP_CLEAR = 3
_U64 = (1 << 64) - 1
_I64_MIN = -(1 << 63)
# KV-cache group kinds that hold prefixes (vLLM ``KVCacheSpecKind`` values; MLA and
# attention-sink specs are full attention, vLLM's kv_cache_interface.py subclasses).
PREFIX_KINDS = frozenset({"full_attention", "mla_attention", "sink_full_attention"})
# Groups whose kind is remembered (a hybrid model has a handful).
MAX_GROUPS = 64
# Distinct LoRA names one batch may carry (more is malformed: an engine serves a few dozen).
MAX_MODELS_PER_BATCH = 64


class GroupKinds:
    """group_idx -> kv_cache_spec_kind, learned from BlockStored events (bounded)."""

    def __init__(self) -> None:
        self._kinds: Dict[int, str] = {}

    def holds_prefixes(self, group: Optional[int], kind: Optional[str]) -> bool:
        if group is None:
            return kind is None or kind in PREFIX_KINDS
        if kind is not None:
            if group in self._kinds or len(self._kinds) < MAX_GROUPS:
                self._kinds[group] = kind
            return kind in PREFIX_KINDS
        known = self._kinds.get(group)
        return known is None or known in PREFIX_KINDS

    def clear(self) -> None:
        self._kinds.clear()


class Compact:
    """One batch as held: sequence number, timestamp, words, tallies for the metrics."""

    __slots__ = ("_nbytes", "applied", "fingerprint", "live", "models", "seq", "signed", "skipped", "ts", "words")

    def __init__(
        self,
        seq: int,
        ts: Optional[float],
        live: bool,
        words: "array[int]",
        models: Tuple[Optional[str], ...],
        signed: bool,
        applied: Tuple[int, int, int],
        skipped: Tuple[int, int, int, int],
        fingerprint: int,
    ) -> None:
        self.seq = seq
        self.ts = ts
        self.live = live
        self.words = words
        self.models = models
        self.signed = signed  # engine hashes are int64 (SGLang): words >= 2**63 are negative
        self.applied = applied  # events written, by type: BlockStored, BlockRemoved, AllBlocksCleared
        self.skipped = skipped  # events not applied, by type: the same three, then "other"
        self.fingerprint = fingerprint  # crc32 of the payload: the same batch replayed has the same
        self._nbytes = -1  # measured when first asked (most batches are written, never held)

    @property
    def nbytes(self) -> int:
        """Bytes this batch holds (``sys.getsizeof`` of itself and what it owns)."""
        if self._nbytes < 0:
            self._nbytes = (
                sys.getsizeof(self)
                + sys.getsizeof(self.words)
                + sys.getsizeof(self.models)
                + sum(sys.getsizeof(m) for m in self.models if m is not None)
            )
        return self._nbytes

    @nbytes.setter
    def nbytes(self, value: int) -> None:
        self._nbytes = value

    def engine_hash(self, word: int) -> int:
        return word - (1 << 64) if self.signed and word >> 63 else word

    def __repr__(self) -> str:
        return f"Compact(seq={self.seq}, words={len(self.words)}, {self.nbytes} bytes)"


_TYPE_INDEX = {ev.STORED: 0, ev.REMOVED: 1, ev.CLEARED: 2}


def fingerprint(payload: bytes) -> int:
    return binascii.crc32(payload)


def reduce(
    seq: int,
    batch: ev.Batch,
    live: bool,
    mark: int,
    groups: GroupKinds,
    on_malformed: "Optional[List[str]]" = None,
) -> Compact:
    """``batch`` as words; the messages of malformed events go to ``on_malformed``."""
    words: "array[int]" = array("Q")
    models: List[Optional[str]] = [None]
    model_index: Dict[str, int] = {}
    applied = [0, 0, 0]
    skipped = [0, 0, 0, 0]
    signed = False
    for event in batch.events:
        if isinstance(event, ev.BlockStored):
            if not groups.holds_prefixes(event.group_idx, event.kind) or (
                event.lora_name is None and event.lora_id is not None
            ):
                skipped[0] += 1
                continue
            try:
                pairs = _store_pairs(event)
            except (BlockSplitError, ValueError) as exc:
                skipped[0] += 1
                if on_malformed is not None:
                    on_malformed.append(f"BlockStored: {exc}")
                continue
            index = 0
            if event.lora_name is not None:
                index = model_index.get(event.lora_name, -1)
                if index < 0:
                    if len(models) > MAX_MODELS_PER_BATCH:
                        skipped[0] += 1
                        if on_malformed is not None:
                            on_malformed.append(f"BlockStored: more than {MAX_MODELS_PER_BATCH} LoRA names")
                        continue
                    index = model_index[event.lora_name] = len(models)
                    models.append(event.lora_name)
            words.append(OP_STORE)
            words.append(index)
            words.append(len(pairs))
            for engine_hash, std in pairs:
                signed = signed or engine_hash < 0
                words.append(engine_hash & _U64)
                words.append(std)
            applied[0] += 1
        elif isinstance(event, ev.BlockRemoved):
            if not groups.holds_prefixes(event.group_idx, None):
                skipped[1] += 1
                continue
            try:
                hashes = [_word(h) for h in event.block_hashes]
            except ValueError as exc:
                skipped[1] += 1
                if on_malformed is not None:
                    on_malformed.append(f"BlockRemoved: {exc}")
                continue
            signed = signed or any(h < 0 for h in event.block_hashes)
            words.append(OP_REMOVE)
            words.append(len(hashes))
            words.extend(hashes)
            applied[1] += 1
        elif isinstance(event, ev.AllBlocksCleared):
            words.append(OP_CLEAR)
            applied[2] += 1
        else:
            skipped[_TYPE_INDEX.get(event.type, 3)] += 1
            if isinstance(event, ev.Malformed) and on_malformed is not None:
                on_malformed.append(f"{event.type}: {event.message}")
    return Compact(
        seq,
        batch.ts,
        live,
        words,
        tuple(models),
        signed,
        (applied[0], applied[1], applied[2]),
        (skipped[0], skipped[1], skipped[2], skipped[3]),
        mark,
    )


def _word(engine_hash: int) -> int:
    if not _I64_MIN <= engine_hash <= _U64:
        raise ValueError("a block hash outside 64 bits")
    return engine_hash & _U64


def _store_pairs(event: ev.BlockStored) -> List[Tuple[int, int]]:
    hashes = event.block_hashes
    if not event.token_ids:
        return []  # Kthena skips empty blocks (a snapshot batch carries hashes only)
    stds = block_std_hashes(event.token_ids, len(hashes))
    for engine_hash in hashes:
        _word(engine_hash)
    return list(zip(hashes, stds))


def operations(item: Compact) -> "List[Tuple[int, int, Sequence[int]]]":
    """(op, model index, words) per operation: for tests and tools; the writer walks words itself."""
    words = item.words
    out: List[Tuple[int, int, Sequence[int]]] = []
    i = 0
    while i < len(words):
        op = words[i]
        if op == OP_STORE:
            n = words[i + 2]
            out.append((op, words[i + 1], words[i + 3 : i + 3 + 2 * n]))
            i += 3 + 2 * n
        elif op == OP_REMOVE:
            n = words[i + 1]
            out.append((op, 0, words[i + 2 : i + 2 + n]))
            i += 2 + n
        else:
            out.append((op, 0, ()))
            i += 1
    return out
