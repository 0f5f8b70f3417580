"""The model-server protocol a router reads, the same for every engine.

The llm-d / Gateway API Inference Extension endpoint picker (EPP) scrapes each pod for a
queue, a running count, a KV-cache utilization, the cache geometry and LoRA state, under
names that differ per engine.  This module turns one scrape of the engine's families plus
what Patio knows (is the engine up, which adapters it serves, ``max_lora``) into:

- the **router view**, one series per family, ``patio:router_*``, ``patio:cache_config_info``
  and ``patio:lora_requests_info``, which one EPP engine config reads for every engine;
- **layer-one renames** (``patio:num_requests_waiting`` ...) for engines the rename tables of
  ``patio.metrics.rules`` do not know (llama.cpp, TGI, Triton), per scheme.

The router view is built so that what the EPP computes from it is never a lie, read against
the EPP's code (``llm-d/llm-d-router`` at ebab687,
``pkg/epp/framework/plugins/datalayer/extractor/metrics/{extractor,spec,loraspec}.go``):

- it takes the *first* series of a family (all timestamps are 0), so data-parallel ranks are
  summed (queue, running) or averaged (KV) into one series here;
- ``int()`` of NaN or ±Inf is garbage in Go and a negative queue scores best: such a value is
  never written; a field that cannot be read honestly is left out and the pod's KV
  utilization reads 1, so it is not offered capacity it may not have;
- a family left out keeps its last value in the EPP, so an engine that is down does not go
  quiet: it reads 0 queued, 0 running, KV utilization 1 (no cache to give) and no LoRA
  adapter active with ``max_lora="0"``;
- adapter lists are split on commas and trimmed by the EPP: a name with a comma or edge
  blanks is left out, and a list is cut to ``MAX_ADAPTER_LIST_CHARS`` at a whole name with
  ``max_lora`` lowered so the EPP's "room for one more" test stays true.

What the view reads of a scrape (each field's source, series and labels: the payload's
skeleton) is resolved apart from the arithmetic on its values (``patio.metrics.protocol_input``),
so that a scrape matched against a plan gets the view from the matched values with no parse.

Pure: no I/O, no clock (the caller passes ``now``), no state between calls.
"""

import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from patio.metrics.model import Family, Item, Labels, Sample
from patio.metrics.protocol_input import (
    MAX_PROBLEMS,
    Found,
    LoraSeries,
    Resolved,
    ViewInput,
    ViewPlan,
    plan,
    read,
    reads,
    source_name,
    whole,
    writable,
)
from patio.metrics.protocol_tables import KV, PROTOCOLS, QUEUED, RUNNING, EngineProtocol, Source
from patio.metrics.rules import TABLES
from patio.metrics.write import escape_label_value, format_value, header_lines

ROUTER_WAITING = "patio:router_num_requests_waiting"
ROUTER_RUNNING = "patio:router_num_requests_running"
ROUTER_KV = "patio:router_kv_cache_utilization"
CACHE_INFO = "patio:cache_config_info"
LORA_INFO = "patio:lora_requests_info"
ROUTER_FAMILIES = (ROUTER_WAITING, ROUTER_RUNNING, ROUTER_KV, CACHE_INFO, LORA_INFO)

# Longest adapter list written into one label (characters, commas included).  Prometheus servers
# that set label_value_length_limit drop a whole scrape over one long label; the EPP needs the
# names only to score affinity, and a pod serving more than ~150 names has no affinity to speak of.
MAX_ADAPTER_LIST_CHARS = 4096
# A KV utilization this far above 1 is float noise, not a wrong scale.
KV_SLACK = 1e-6

_HELP = {
    ROUTER_WAITING: "Requests waiting in the engine, summed over its data-parallel ranks; 0 while the engine is down.",
    ROUTER_RUNNING: "Requests the engine is running, summed over its data-parallel ranks; 0 while the engine is down.",
    ROUTER_KV: "KV-cache utilization 0-1 (mean over ranks); 1 while the engine is down or its load is unknown.",
    CACHE_INFO: "KV-cache geometry for routers: block_size (tokens per block) and num_gpu_blocks (all ranks).",
    LORA_INFO: "LoRA state in the model-server protocol's format; the value is the update's Unix time.",
}

# Each router family's HELP and TYPE lines, written once (the writer hands them out as they are).
_HEADERS = {name: header_lines(Family(name, "gauge", text)) for name, text in _HELP.items()}


@dataclass(frozen=True)
class ProtocolState:
    """What Patio knows beside the scrape, snapshotted on the event loop for one scrape."""

    engine_up: bool  # the engine's health answered (the watch's last state), not just its /metrics
    adapters: Tuple[str, ...] = ()  # adapters the engine confirmed serving since it last started
    max_lora: Optional[int] = None  # configured, for engines that do not say it
    now: float = 0.0  # time.time() of the scrape: the synthesized LoRA update's time


class ProtocolOutput(NamedTuple):
    renamed: List[Family]  # layer one for engines the rename tables lack ("standard" and "both" modes)
    router: List[Family]  # the router view (every mode)
    problems: Tuple[str, ...]  # why a field was left out or saturated, for the log


class _Problems:
    def __init__(self) -> None:
        self.items: List[str] = []

    def add(self, text: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(text)


def _ratios(found: Found, values: Sequence[float]) -> List[float]:
    """A ratio source's values, series by series: used / capacity (NaN without capacity)."""
    assert found.capacity is not None
    used, capacity = map(values.__getitem__, found.used), map(values.__getitem__, found.capacity)
    return [part / budget if budget > 0 else math.nan for part, budget in zip(used, capacity)]


def _values(found: Found, values: Sequence[float]) -> List[float]:
    """The source's values, series by series."""
    return list(map(values.__getitem__, found.used)) if found.capacity is None else _ratios(found, values)


def _count(found: Found, values: Sequence[float], problems: _Problems) -> Optional[float]:
    """Queued or running: the sum over ranks, or None when a value is not a count."""
    counts = list(map(values.__getitem__, found.used)) if found.capacity is None else _ratios(found, values)
    for value in counts:
        if not math.isfinite(value) or value < 0:
            problems.add(f"{source_name(found.source)} is {value!r}, not a count")
            return None
    return float(sum(counts))


def _utilization(found: Found, values: Sequence[float], problems: _Problems) -> Optional[float]:
    """The mean over ranks, or None when a value is not a fraction."""
    fractions = list(map(values.__getitem__, found.used)) if found.capacity is None else _ratios(found, values)
    for value in fractions:
        if not (math.isfinite(value) and 0 <= value <= 1 + KV_SLACK):
            problems.add(f"{source_name(found.source)} is {value!r}, not a fraction 0-1")
            return None
    return min(1.0, sum(fractions) / len(fractions))


def _cache(cache: Tuple[Tuple[Tuple[int, int], ...], ...], values: Sequence[float]) -> Optional[Tuple[int, int]]:
    """(block size, blocks) of the first cache source whose every rank says both: the smallest
    block size (vLLM's hybrid models) and all ranks' blocks."""
    for pairs in cache:
        sizes: List[int] = []
        counts: List[int] = []
        for size_at, count_at in pairs:
            size, count = whole(values[size_at], 1), whole(values[count_at], 1)
            if size is None or count is None:
                break
            sizes.append(size)
            counts.append(count)
        else:
            if pairs:
                return min(sizes), sum(counts)
    return None


def _bounded(names: List[str], budget: int) -> List[str]:
    """The names that fit ``budget`` characters joined with commas, cut at a whole name."""
    kept: List[str] = []
    used = 0
    for name in names:
        cost = len(name) + (1 if kept else 0)
        if used + cost > budget:
            break
        kept.append(name)
        used += cost
    return kept


def _family(name: str, labels: Labels, value: float, label_text: str = "") -> Family:
    """One router family of one series, its line as the writer writes it (``Sample.text``);
    ``label_text``: its labels as ``write.label_set_text`` writes them, when the caller has it."""
    text = label_text + " " + format_value(value)
    return Family(name, "gauge", _HELP[name], [Sample(name, labels, value, None, text)], header=_HEADERS[name])


def _lora_family(running: List[str], waiting: List[str], max_lora: int, value: float, problems: _Problems) -> Family:
    running_text, waiting_text = ",".join(running), ",".join(waiting)
    kept_running, kept_waiting = running, waiting
    if len(running_text) > MAX_ADAPTER_LIST_CHARS:
        kept_running = _bounded(running, MAX_ADAPTER_LIST_CHARS)
        running_text = ",".join(kept_running)
    if len(waiting_text) > MAX_ADAPTER_LIST_CHARS:
        kept_waiting = _bounded(waiting, MAX_ADAPTER_LIST_CHARS)
        waiting_text = ",".join(kept_waiting)
    cut = len(running) - len(kept_running) + len(waiting) - len(kept_waiting)
    if cut:
        problems.add(
            f"{cut} adapter name(s) cut from {LORA_INFO} (lists are bounded to {MAX_ADAPTER_LIST_CHARS} chars)"
        )
        if len(running) + len(waiting) >= max_lora:
            # The EPP offers a pod "room for one more" when listed < max_lora: with names cut, keep it false.
            max_lora = min(max_lora, len(kept_running) + len(kept_waiting))
    labels = (
        ("max_lora", str(max_lora)),
        ("running_lora_adapters", running_text),
        ("waiting_lora_adapters", waiting_text),
    )
    # label_set_text(labels), with the count written as it is (digits need no escape).
    label_text = (
        f'{{max_lora="{max_lora}",running_lora_adapters="{escape_label_value(running_text)}",'
        f'waiting_lora_adapters="{escape_label_value(waiting_text)}"}}'
    )
    return _family(LORA_INFO, labels, value, label_text)


def _latest(series: Sequence[LoraSeries], values: Sequence[float]) -> Optional[Tuple[LoraSeries, float]]:
    """The series the EPP keeps (loraspec.go: the greatest value); non-finite values are not times."""
    best: Optional[Tuple[LoraSeries, float]] = None
    for entry in series:
        value = values[entry.at]
        if math.isfinite(value) and value >= 0 and (best is None or value > best[1]):
            best = (entry, value)
    return best


def _lora(
    protocol: EngineProtocol, seen: Resolved, values: Sequence[float], state: ProtocolState, problems: _Problems
) -> Optional[Family]:
    declared = seen.lora_declared
    engine_max: Optional[int] = None
    if seen.max_lora is not None:
        for at in seen.max_lora:  # the smallest over ranks, unknown if one rank's is not a count
            whole_max = whole(values[at], 1)
            if whole_max is None:
                engine_max = None
                break
            engine_max = whole_max if engine_max is None else min(engine_max, whole_max)
    latest = _latest(seen.lora, values) if declared else None
    stated: Optional[int]
    if latest is not None:
        entry, value = latest
        for problem in entry.problems:
            problems.add(problem)
        running, waiting, stated = list(entry.running), list(entry.waiting), entry.stated
    else:
        if not (declared or engine_max is not None or state.max_lora is not None or state.adapters):
            return None  # no LoRA here: absent, which the EPP reads as "no LoRA" (loraspec.go)
        left_out: List[str] = []
        running, waiting, stated, value = writable(sorted(state.adapters), LORA_INFO, left_out), [], None, state.now
        for problem in left_out:
            problems.add(problem)
    if stated is None:
        stated = engine_max
    if stated is None:
        stated = state.max_lora
    if stated is None:
        # Unknown: the adapters held are known to fit, so their number is a true lower bound, and the
        # EPP then offers no room it cannot vouch for.  Engines that apply every adapter: exact.
        stated = len(running) + len(waiting)
    return _lora_family(running, waiting, stated, value, problems)


def _names(sources: Sequence[Source]) -> str:
    return ", ".join(source_name(s) for s in sources)


def _router_view(
    protocol: EngineProtocol, seen: Resolved, values: Sequence[float], state: ProtocolState, problems: _Problems
) -> List[Family]:
    if not state.engine_up:
        # Down: nothing waits or runs in it, it has no cache to give and serves no adapter.  Every
        # family stays present: one left out would keep its last (maybe idle) value in the EPP.
        return [
            _family(ROUTER_WAITING, (), 0.0),
            _family(ROUTER_RUNNING, (), 0.0),
            _family(ROUTER_KV, (), 1.0),
            _lora_family([], [], 0, state.now, problems),
        ]
    out: List[Family] = []
    load_known = True
    for field, name, found, sources in (
        (QUEUED, ROUTER_WAITING, seen.queued, protocol.queued),
        (RUNNING, ROUTER_RUNNING, seen.running, protocol.running),
    ):
        value = _count(found, values, problems) if found is not None else None
        if value is not None:
            out.append(_family(name, (), value))
        elif found is not None or field not in protocol.optional:
            if found is None:
                problems.add(f"no {field} family ({_names(sources)}) in the engine's metrics")
            load_known = False  # left out: the EPP keeps its last value, so the KV below says "full"
    found = seen.kv
    kv = _utilization(found, values, problems) if found is not None else None
    if kv is None and (found is not None or KV not in protocol.optional):
        if found is None:
            problems.add(f"no KV family ({_names(protocol.kv)}) in the engine's metrics")
        kv = 1.0
    if not load_known:
        kv = 1.0  # its load is unknown: offer no capacity
    if kv is not None:
        out.append(_family(ROUTER_KV, (), kv))
    cache = _cache(seen.cache, values)
    if cache is not None:
        size, blocks = cache
        labels = (("block_size", str(size)), ("num_gpu_blocks", str(blocks)))
        # label_set_text(labels): counts are digits, which need no escape.
        out.append(_family(CACHE_INFO, labels, 1.0, f'{{block_size="{size}",num_gpu_blocks="{blocks}"}}'))
    lora = _lora(protocol, seen, values, state, problems)
    if lora is not None:
        out.append(lora)
    return out


class ProtocolView:
    """One engine's protocol, compiled once for the configured rename scheme.

    ``families`` computes the view from the engine's families; the scrape path splits that in
    two: ``read`` (or, for a plan, ``plan`` then ``ViewPlan.fill``) takes what the view reads of
    a scrape, ``compute`` makes the families of it and Patio's state."""

    def __init__(self, protocol: EngineProtocol, renames: Sequence[Tuple[str, Source]] = ()) -> None:
        self.protocol = protocol
        self.renames = tuple(renames)
        self.reads: FrozenSet[str] = reads(protocol, self.renames)
        self.nothing = self.read({})  # a failed scrape: no engine family at all

    @classmethod
    def for_engine(cls, engine: str, scheme: str) -> "ProtocolView":
        protocol = PROTOCOLS[engine]
        # vLLM and SGLang are renamed by patio.metrics.rules; the other engines here.
        renames = () if engine in TABLES.get(scheme, {}) else protocol.renames.get(scheme, ())
        return cls(protocol, renames)

    def read(self, families: Mapping[str, Family]) -> ViewInput:
        """What the view reads of the engine's families (by name; empty when the scrape failed)."""
        return read(self.protocol, self.renames, families, LORA_INFO)

    def plan(
        self, families: Mapping[str, Family], slots: Mapping[str, Sequence[int]], payload: Sequence[bytes]
    ) -> Optional[ViewPlan]:
        """What the view reads of a payload a scrape plan is made of (``protocol_input.plan``)."""
        return plan(self.protocol, self.renames, families, slots, payload, LORA_INFO)

    def compute(self, seen: ViewInput, state: ProtocolState) -> ProtocolOutput:
        """The protocol families of one scrape's reading.  Never raises for any content."""
        problems = _Problems()
        resolved, values = seen
        for note in resolved.notes:
            problems.add(note)
        renamed: List[Family] = []
        for target, kind, help_text, found in resolved.renames:
            samples: List[Item] = [Sample(target, labels, v) for labels, v in zip(found.labels, _values(found, values))]
            renamed.append(Family(target, kind, help_text, samples))
        router = _router_view(self.protocol, resolved, values, state, problems)
        return ProtocolOutput(renamed, router, tuple(problems.items))

    def families(self, families: Mapping[str, Family], state: ProtocolState) -> ProtocolOutput:
        """The protocol families for one scrape (``families``: the engine's, by name; empty when
        the scrape failed).  Never raises for any content."""
        return self.compute(self.read(families), state)


def by_name(families: Iterable[Family]) -> Dict[str, Family]:
    """The engine's families keyed as ``ProtocolView.families`` reads them (the first of a name wins)."""
    out: Dict[str, Family] = {}
    for family in families:
        out.setdefault(family.name, family)
    return out
