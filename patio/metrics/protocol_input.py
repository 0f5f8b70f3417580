"""What the protocol view reads of one scrape: each field's source and series, resolved once.

``patio.metrics.protocol`` reads a few engine families at every scrape.  Which source a field
takes (the first one present), which series it adds up, which labels they carry and how the two
parts of a ratio pair up depend on the payload's skeleton alone (family names, TYPE lines, label
sets), never on its values.  ``read`` does that part: a ``Resolved`` in which every value is a
position in a list of floats, and that list (a ``ViewInput``); the view's arithmetic runs on the
two (``protocol.ProtocolView.compute``).

A scrape plan (``patio.metrics.plan``) resolves once, when it is made, and records for each float
the payload value it was read from (``ViewPlan``).  A payload the plan matches has the plan's
skeleton, so the same ``Resolved`` holds with the matched values put in: on the plan path the
view costs no parse and computes what the full path computes (``tests/test_metrics_protocol_plan.py``
runs both).  Sans-IO, pure.
"""

import math
import re
from typing import FrozenSet, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from patio.metrics.model import Family, Labels, decode_label_text
from patio.metrics.protocol_tables import EngineProtocol, Gauge, InfoLabels, Ratio, Source

# A canonical line (``patio.metrics.model.Item`` as the scrape path keeps it): name, labels,
# value, optional timestamp.  Values and timestamps hold no '}' or blank, so the last '} '
# closes the labels even when a label value holds either.
_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)(?: [0-9]+)?$")

# Series the view reads of one engine family.  Data-parallel ranks are a few to 64; a family with
# more series than this (label churn, a hostile engine) is not read at all -- its field then fails
# closed like an absent one -- so the view never holds an object per series of a huge payload.
MAX_SERIES = 1024

# Problems one reading reports at most (each a short sentence for one log line).
MAX_PROBLEMS = 8

# Layer-one renames of one scheme: (target family, source), as ``protocol_tables.Renames`` holds them.
Renames = Tuple[Tuple[str, Source], ...]
# A series as read: its labels and the position of its value.
Read = Tuple[Labels, int]


class Found(NamedTuple):
    """The series of the source a field takes: labels (selector labels removed) and value positions."""

    source: Source
    labels: Tuple[Labels, ...]
    used: Tuple[int, ...]  # the values (a ``Ratio``: its used part) ...
    capacity: Optional[Tuple[int, ...]] = None  # ... and a ``Ratio``'s capacity, series by series


class LoraSeries(NamedTuple):
    """One series of the engine's LoRA info family, its labels read as the EPP reads them."""

    at: int  # the position of its value (the update's Unix time)
    running: Tuple[str, ...]  # running_lora_adapters, as names the EPP reads back unchanged
    waiting: Tuple[str, ...]
    stated: Optional[int]  # its max_lora, when the label is a count
    problems: Tuple[str, ...]  # what of its labels was left out, and why


class Resolved(NamedTuple):
    """Everything the view reads of one skeleton; values are positions in ``ViewInput.values``."""

    queued: Optional[Found]  # the first source present (None: none is)
    running: Optional[Found]
    kv: Optional[Found]
    # Per cache source, in order: (block size, block count) positions, one pair per rank.
    cache: Tuple[Tuple[Tuple[int, int], ...], ...]
    lora_declared: bool  # the engine's LoRA info family is in the payload (with series or not)
    lora: Tuple[LoraSeries, ...]  # its series
    max_lora: Optional[Tuple[int, ...]]  # the first max_lora gauge present
    renames: Tuple[Tuple[str, str, str, Found], ...]  # (target, type, help, the source's series)
    notes: Tuple[str, ...] = ()  # what was not read, and why (for the view's problems)


class ViewInput(NamedTuple):
    resolved: Resolved
    values: Sequence[float]


def source_name(source: Optional[Source]) -> str:
    """How a source is named in the view's problems."""
    if isinstance(source, Ratio):
        return f"{source.used.family} / {source.capacity.family}"
    return source.family if source is not None else "?"


def reads(protocol: EngineProtocol, renames: Renames) -> FrozenSet[str]:
    """Every engine family the view may look at (the plan records the values of these alone)."""
    names = set()
    gauges: List[Gauge] = list(protocol.max_lora)
    for source in (*protocol.queued, *protocol.running, *protocol.kv, *(s for _, s in renames)):
        gauges += [source.used, source.capacity] if isinstance(source, Ratio) else [source]
    for cache in protocol.cache:
        if isinstance(cache, InfoLabels):
            names.add(cache.family)
        else:
            gauges += [cache.block_size, cache.num_blocks]
    names.update(gauge.family for gauge in gauges)
    if protocol.lora_info is not None:
        names.add(protocol.lora_info)
    return frozenset(names)


def whole(value: float, minimum: int) -> Optional[int]:
    if not math.isfinite(value) or value < minimum or not value.is_integer():
        return None
    return int(value)


def whole_text(text: str, minimum: int) -> Optional[int]:
    """A label's count (``"16"``, ``"16.0"``), or None when it is not one (vLLM writes ``"None"``)."""
    try:
        return whole(float(text), minimum)
    except ValueError:
        return None


def epp_names(csv: str) -> List[str]:
    """The names the EPP reads from a label: split on commas, trimmed, empties dropped (extractor.go addAdapters)."""
    out: List[str] = []
    seen = set()
    for part in csv.split(","):
        name = part.strip()
        if name and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def writable(names: Iterable[str], into: str, problems: List[str]) -> List[str]:
    """Names the EPP reads back unchanged from ``into``'s lists: no comma, no blank at either end.
    Each name left out is told in ``problems`` (at most ``MAX_PROBLEMS``)."""
    out: List[str] = []
    seen = set()
    for name in names:
        if not name or "," in name or name != name.strip():
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"adapter name {name!r} left out of {into}: the EPP splits on commas and trims")
            continue
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _number(text: str) -> float:
    """A label's number as ``float`` reads it; NaN when it is none (vLLM writes ``"None"``)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


class _Reader:
    """Reads series out of the engine's families, appending each value to ``values``.

    For a plan, ``slots`` gives per family (by name) and per item the payload value slot its
    line's value is, -1 where the value is not free (``plan.build``); ``payload`` holds the
    payload's cut values, against which each slotted value's text is checked."""

    def __init__(
        self,
        families: Mapping[str, Family],
        slots: Optional[Mapping[str, Sequence[int]]] = None,
        payload: Optional[Sequence[bytes]] = None,
    ) -> None:
        self.families = families
        self.values: List[float] = []
        self.origins: List[int] = []  # per value: the payload slot it comes from, -1 when constant
        self._slots = slots or {}
        self._payload = payload
        self.exact = True  # every slotted value is its line's value, as the view reads the line
        self.notes: List[str] = []

    def constant(self, value: float) -> int:
        self.values.append(value)
        self.origins.append(-1)
        return len(self.values) - 1

    def series(self, family: Family, name: str) -> Optional[List[Read]]:
        """The family's samples named ``name`` (a histogram's buckets are not): what a full pass
        reads of each item, a canonical line or a parsed sample.  None past ``MAX_SERIES``."""
        slots = self._slots.get(family.name)
        out: List[Read] = []
        for position, item in enumerate(family.samples):
            if len(out) == MAX_SERIES:
                note = f"{family.name} has more than {MAX_SERIES} series: not read"
                if note not in self.notes:
                    self.notes.append(note)
                return None
            slot = slots[position] if slots is not None else -1
            if isinstance(item, str):
                match = _LINE.match(item)
                if match is None or match.group(1) != name:
                    continue
                text = match.group(3)
                try:
                    value = float(text)
                except ValueError:
                    continue
                if slot >= 0 and (self._payload is None or self._payload[slot] != text.encode("ascii", "replace")):
                    self.exact = False
                labels = decode_label_text(match.group(2) or "")
            elif item.name == name:
                if slot >= 0:
                    self.exact = False  # a parsed sample has no free value (plan.build): never here
                labels, value = item.labels, item.value
            else:
                continue
            self.values.append(value)
            self.origins.append(slot)
            out.append((labels, len(self.values) - 1))
        return out

    def gauge(self, gauge: Gauge) -> Optional[List[Read]]:
        family = self.families.get(gauge.family)
        if family is None:
            return None
        want = gauge.where
        series = self.series(family, gauge.family)
        found = [(labels, at) for labels, at in series or () if all(p in labels for p in want)]
        return found or None

    def source(self, source: Source) -> Optional[Found]:
        """The source's series, or None when the engine does not write it."""
        if isinstance(source, Gauge):
            found = self.gauge(source)
            if found is None:
                return None
            drop = set(k for k, _ in source.where)
            labels = tuple(tuple((k, v) for k, v in series if k not in drop) for series, _ in found)
            return Found(source, labels, tuple(at for _, at in found))
        used, capacity = self.source(source.used), self.source(source.capacity)
        if used is None or capacity is None:
            return None
        budgets = dict(zip(capacity.labels, capacity.used))  # one rank's parts share its labels
        kept: List[Labels] = []
        parts: List[int] = []
        caps: List[int] = []
        for rank, at in zip(used.labels, used.used):
            budget = budgets.get(rank)
            if budget is None:
                continue
            kept.append(rank)
            parts.append(at)
            caps.append(budget)
        return Found(source, tuple(kept), tuple(parts), tuple(caps)) if kept else None

    def first(self, sources: Sequence[Source]) -> Optional[Found]:
        for source in sources:
            found = self.source(source)
            if found is not None:
                return found
        return None

    def cache(self, protocol: EngineProtocol) -> Tuple[Tuple[Tuple[int, int], ...], ...]:
        out: List[Tuple[Tuple[int, int], ...]] = []
        for source in protocol.cache:
            pairs: List[Tuple[int, int]] = []
            if isinstance(source, InfoLabels):
                family = self.families.get(source.family)
                for labels, _ in (self.series(family, source.family) if family is not None else None) or ():
                    by_name = dict(labels)
                    size = self.constant(_number(by_name.get(source.block_size, "")))
                    pairs.append((size, self.constant(_number(by_name.get(source.num_blocks, "")))))
            else:
                sizes, blocks = self.source(source.block_size), self.source(source.num_blocks)
                if sizes is not None and blocks is not None:
                    counts = dict(zip(blocks.labels, blocks.used))  # one rank's size and count share its labels
                    for labels, at in zip(sizes.labels, sizes.used):
                        count = counts.get(labels)
                        pairs.append((at, count if count is not None else self.constant(math.nan)))
            out.append(tuple(pairs))
        return tuple(out)


def _lora_series(reader: _Reader, protocol: EngineProtocol, family: Family, into: str) -> Tuple[LoraSeries, ...]:
    out: List[LoraSeries] = []
    for labels, at in reader.series(family, family.name) or ():
        by_label = dict(labels)
        problems: List[str] = []
        running = writable(epp_names(by_label.get("running_lora_adapters", "")), into, problems)
        waiting = writable(epp_names(by_label.get("waiting_lora_adapters", "")), into, problems)
        raw_max = by_label.get("max_lora", "")
        stated = whole_text(raw_max, 0)
        if stated is None and len(problems) < MAX_PROBLEMS:
            problems.append(f"max_lora={raw_max!r} of {protocol.lora_info} is not a count")
        out.append(LoraSeries(at, tuple(running), tuple(waiting), stated, tuple(problems)))
    return tuple(out)


def _resolve(reader: _Reader, protocol: EngineProtocol, renames: Renames, into: str) -> Resolved:
    families = reader.families
    renamed: List[Tuple[str, str, str, Found]] = []
    for target, source in renames:
        found = reader.source(source)
        if found is None:
            continue
        origin = families.get(source.family) if isinstance(source, Gauge) else None
        kind = origin.type if origin is not None and origin.type in ("gauge", "counter") else "gauge"
        if kind == "counter" and not target.endswith("_total"):
            kind = "gauge"
        help_text = (
            origin.help if origin is not None and origin.help else f"{source_name(source)}, under a stable name."
        )
        renamed.append((target, kind, help_text, found))
    lora_family = families.get(protocol.lora_info) if protocol.lora_info is not None else None
    max_lora: Optional[Tuple[int, ...]] = None
    for gauge in protocol.max_lora:
        found_max = reader.gauge(gauge)
        if found_max is not None:
            max_lora = tuple(at for _, at in found_max)
            break
    return Resolved(
        queued=reader.first(protocol.queued),
        running=reader.first(protocol.running),
        kv=reader.first(protocol.kv),
        cache=reader.cache(protocol),
        lora_declared=lora_family is not None,
        lora=_lora_series(reader, protocol, lora_family, into) if lora_family is not None else (),
        max_lora=max_lora,
        renames=tuple(renamed),
        notes=tuple(reader.notes),
    )


def read(protocol: EngineProtocol, renames: Renames, families: Mapping[str, Family], into: str) -> ViewInput:
    """What the view reads of a scrape parsed in full (``families``: the engine's, by name;
    ``into``: the LoRA family the view writes, named in its problems)."""
    reader = _Reader(families)
    return ViewInput(_resolve(reader, protocol, renames, into), reader.values)


class ViewPlan:
    """The view's reading of a plan's skeleton: ``fill`` puts a matched payload's values in."""

    __slots__ = ("_pick", "base", "positions", "resolved")

    def __init__(self, resolved: Resolved, values: List[float], origins: Sequence[int]) -> None:
        self.resolved = resolved
        self.base = values  # the values as the plan's payload had them (the constant ones stay)
        self.positions = tuple(i for i, origin in enumerate(origins) if origin >= 0)
        slots = [origins[i] for i in self.positions]
        self._pick: Optional[Sequence[int]] = slots or None

    def fill(self, payload: Sequence[bytes]) -> ViewInput:
        """What the view reads of a payload the plan matched (``payload``: its cut values)."""
        values = self.base[:]
        if self._pick is not None:
            for position, slot in zip(self.positions, self._pick):
                values[position] = float(payload[slot])  # a free value: canonical, float() reads it
        return ViewInput(self.resolved, values)


def plan(
    protocol: EngineProtocol,
    renames: Renames,
    families: Mapping[str, Family],
    slots: Mapping[str, Sequence[int]],
    payload: Sequence[bytes],
    into: str,
) -> Optional[ViewPlan]:
    """The view's reading of a payload a plan is made of (``slots``: per read family and item, the
    payload value slot of its value or -1; ``payload``: the cut values).  None when a slotted
    value is not the one the view reads of its line (then no plan can stand for the payload)."""
    reader = _Reader(families, slots, payload)
    resolved = _resolve(reader, protocol, renames, into)
    if not reader.exact:
        return None
    return ViewPlan(resolved, reader.values, reader.origins)
